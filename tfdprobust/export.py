"""Atomic export of the inference network as a SavedModel, with a metadata JSON.

Only the inference network is saved (no DP optimizer, no training wrapper). Its
``serving_default`` signature takes ``images`` (float32, NHWC, in [0, 1]) and returns
``logits``. ``metadata.json`` sits inside the export folder, next to ``saved_model.pb``.

Writes go to a temporary sibling folder that is renamed into place at the end, so an
interrupted export never leaves a half-written model behind.

Example:
    >>> import tempfile, os
    >>> from tfdprobust.models import ModelConfig, build_model
    >>> out = os.path.join(tempfile.mkdtemp(), "run")
    >>> path = export_model(build_model(ModelConfig(norm="none")), out, {"epsilon": 1.0})
    >>> sorted(os.listdir(path))[:2], load_metadata(path)["epsilon"]
    (['assets', 'fingerprint.pb'], 1.0)
"""

import json
import math
import os
import shutil
import tempfile
from typing import Any, Dict

import tensorflow as tf

from tfdprobust import flagcheck
from tfdprobust.errors import require

METADATA_FILE = "metadata.json"
_TMP_MARK = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_umask(path: str, directory: bool) -> None:
    """tempfile creates 0600/0700 entries; give them the user's usual permissions."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def strict(value):
    """``value`` with every non-finite float replaced by ``None`` (strict JSON has no NaN/inf).

    Example:
        >>> strict({"eps": float("inf"), "acc": [0.5, float("nan")]})
        {'eps': None, 'acc': [0.5, None]}
    """
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [strict(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json_atomic(path: str, payload: Dict[str, Any]) -> None:
    """Writes strict JSON to ``path`` through a temporary file and a rename.

    Non-finite numbers become ``null`` (strict parsers reject bare ``Infinity``/``NaN``).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(strict(payload), f, indent=2, sort_keys=True, default=_jsonable, allow_nan=False)
            f.write("\n")
        _apply_umask(tmp, directory=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(parent: str) -> None:
    """Removes ``.<name>.tmp-<pid>-*`` folders left by an export whose process is gone
    (e.g. killed with SIGKILL mid-export). Live exports of other processes are kept."""
    if not os.path.isdir(parent):
        return
    for entry in os.listdir(parent):
        if not entry.startswith(".") or _TMP_MARK not in entry:
            continue
        pid_part = entry.split(_TMP_MARK, 1)[1].split("-", 1)[0]
        if pid_part.isdigit() and not _pid_alive(int(pid_part)):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def check_destination(out_dir: str, flag: str = "--export_dir", overwrite: bool = False) -> None:
    """Fails fast (before any training) if ``out_dir`` cannot be created or is taken.

    Raises:
        UsageError: naming ``flag`` and the fix.
    """
    flagcheck.new_path(out_dir, flag, overwrite, also="--run_name")


def export_model(net: tf.keras.Model, out_dir: str, metadata: Dict[str, Any],
                 overwrite: bool = False) -> str:
    """Saves ``net`` (images in [0, 1] -> logits) and ``metadata`` to ``out_dir`` atomically.

    Args:
        net: the inference network (built, with an input shape).
        out_dir: destination folder; must not exist unless ``overwrite``.
        metadata: JSON-serialisable run description (epsilon, delta, sigma, C, ...).
        overwrite: replace an existing export.

    Returns:
        ``out_dir``.

    Raises:
        UsageError: if a weight is not finite (a diverged model is never exported), or
            the destination is taken.

    Reload with ``tf.saved_model.load(out_dir).signatures["serving_default"](images=x)``
    or ``tf.keras.models.load_model(out_dir)``.
    """
    out_dir = os.path.abspath(out_dir)
    bad = [v.name for v in net.weights if not bool(tf.reduce_all(tf.math.is_finite(v)))]
    require(not bad, f"refusing to export a model with non-finite weights ({', '.join(bad[:3])}); "
                     "training diverged: lower --learning_rate or --l2_clip")
    check_destination(out_dir, overwrite=overwrite)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    clean_stale_temporaries(parent)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}{_TMP_MARK}{os.getpid()}-")
    try:
        spec = tf.TensorSpec((None,) + tuple(net.input_shape[1:]), tf.float32, name="images")

        @tf.function(input_signature=[spec])
        def serve(images):
            return {"logits": net(images, training=False)}

        net.save(tmp, save_format="tf", include_optimizer=False,
                 signatures={"serving_default": serve})
        write_json_atomic(os.path.join(tmp, METADATA_FILE), metadata)
        _apply_umask(tmp, directory=True)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def load_metadata(model_dir: str) -> Dict[str, Any]:
    """The metadata JSON of an export, or ``{}`` if it has none."""
    path = os.path.join(model_dir, METADATA_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)
