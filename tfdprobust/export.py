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

import errno
import fcntl
import json
import math
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import tensorflow as tf

from tfdprobust import flagcheck
from tfdprobust.errors import UsageError, require

METADATA_FILE = "metadata.json"
_TMP_MARK = ".tmp-"
CLAIM_SUFFIX = ".claim"


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
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f"{_TMP_MARK}{os.getpid()}-", suffix=".json")
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


def clean_stale_temporaries(parent: str) -> List[str]:
    """Removes the temporaries a killed process left in ``parent``: export folders
    ``.<name>.tmp-<pid>-*``, JSON files ``.tmp-<pid>-*.json`` (e.g. SIGKILL mid-export) and
    the ``.<name>.claim`` files of dead runs. Those of live processes are kept.

    Returns:
        The names removed.
    """
    removed = []
    if not os.path.isdir(parent):
        return removed
    for entry in os.listdir(parent):
        if entry.startswith(".") and entry.endswith(CLAIM_SUFFIX) and _stale_claim(os.path.join(parent, entry)):
            removed.append(entry)
        if not entry.startswith(".") or _TMP_MARK not in entry:
            continue
        pid_part = entry.split(_TMP_MARK, 1)[1].split("-", 1)[0]
        if pid_part.isdigit() and not _pid_alive(int(pid_part)):
            path = os.path.join(parent, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except FileNotFoundError:  # another process cleaned it first
                    pass
            removed.append(entry)
    return removed


def _stale_claim(path: str) -> bool:
    """Removes the claim file ``path`` if no live run holds it; says whether it did."""
    name = os.path.basename(path)[1:-len(CLAIM_SUFFIX)]  # .<name>.claim
    claim = Claim(os.path.join(os.path.dirname(path), name))
    try:
        claim.acquire()
    except UsageError:
        return False  # a live run's (or this process's own) claim
    claim.release()
    return True


class Claim:
    """A run's exclusive claim on its destination ``out_dir``, from its start to its export.

    An ``flock`` on ``<parent>/.<name>.claim`` (holding the owner's pid): two runs started
    at once with the same ``--run_name`` cannot both train towards one folder and silently
    overwrite each other. The kernel drops the lock when the process dies, even by SIGKILL,
    so a claim left by a dead run is stale by construction and the next run takes it over.

    Example:
        >>> import tempfile
        >>> out = os.path.join(tempfile.mkdtemp(), "run")
        >>> claim = Claim(out).acquire()
        >>> try:
        ...     Claim(out).acquire()
        ... except UsageError as err:
        ...     print("refused:", "is claimed by another run" in str(err))
        refused: True
        >>> claim.release()
        >>> Claim(out).acquire().release()             # free again
    """

    def __init__(self, out_dir: str, flag: str = "--run_name"):
        self.out_dir = out_dir
        self.flag = flag
        self.path = os.path.join(os.path.dirname(os.path.abspath(out_dir)),
                                 f".{os.path.basename(out_dir)}{CLAIM_SUFFIX}")
        self.fd: Optional[int] = None
        self._created: List[str] = []

    def acquire(self) -> "Claim":
        """Takes the claim (creating the parent folder if needed).

        Raises:
            UsageError: another live run holds it; names the folder and the fix.
        """
        parent = os.path.dirname(self.path)
        missing = parent
        while not os.path.exists(missing):
            self._created.append(missing)
            missing = os.path.dirname(missing)
        os.makedirs(parent, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise UsageError(f"{self.out_dir} is claimed by another run (pid {holder}) that is training "
                                 f"towards it; choose another {self.flag}, or wait for that run to finish") from None
            # A finishing owner unlinks the file it locked: if we locked that unlinked file, retry.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        """Drops the claim, removes its file, and removes the folders :meth:`acquire`
        created if they stayed empty (a run that failed leaves nothing behind)."""
        if self.fd is None:
            return
        try:
            os.remove(self.path)  # while still locked, so no other run holds this file
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        for folder in self._created:
            try:
                os.rmdir(folder)
            except OSError:  # not empty: the run (or another) wrote there
                break
        self._created = []


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


def claim_destinations(export_dir: Optional[str], name: str, others: Sequence[str] = ()) -> List[Claim]:
    """Claims the export ``<export_dir>/<name>`` of a run (and its folders ``others`` that lie
    elsewhere, e.g. a checkpoint folder), so a second run with the same ``--run_name`` stops
    at once instead of overwriting this one's export; then removes the temporaries killed
    runs left in ``export_dir``. Release the claims when the run has exported.

    Raises:
        UsageError: another live run holds the name, or an export of that name appeared
            since the first check.
    """
    claims: List[Claim] = []
    try:
        if export_dir is not None:
            out = os.path.join(export_dir, name)
            claims.append(Claim(out).acquire())
            check_destination(out)  # again, under the claim: a run may have finished meanwhile
            check_destination(out + ".json")
            clean_stale_temporaries(export_dir)
        for folder in others:
            if export_dir is None or os.path.abspath(os.path.dirname(folder)) != os.path.abspath(export_dir):
                claims.append(Claim(folder).acquire())
    except BaseException:
        for claim in claims:
            claim.release()
        raise
    return claims
