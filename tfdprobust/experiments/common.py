"""Shared plumbing of the paper-reproduction entry points (``experiments/<name>/``).

Only composition of library calls: where the data comes from, a fresh output folder,
one DP run with a held-out loss trajectory, mean/spread summaries, and writing
``results.json``. The entry points that use it are
:mod:`~tfdprobust.experiments.defaults_sweep`, :mod:`~tfdprobust.experiments.public_norm`
and :mod:`~tfdprobust.experiments.robustness_threats`.
"""

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # apt-get install dataset-fashion-mnist
SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))


def command_line() -> str:
    """The command that is running, as a user would type it (``python -m tfdprobust...``)."""
    path = sys.argv[0] if sys.argv else ""
    if path.endswith(".py") and "tfdprobust" in path:
        module = path[path.rindex("tfdprobust"):-3].replace(os.sep, ".")
        return " ".join(["python -m", module, *sys.argv[1:]])
    return " ".join(sys.argv)


def fresh_out(out: str, overwrite: bool) -> str:
    """Creates ``out``; refuses to write into an existing non-empty folder unless ``overwrite``.

    Raises:
        FileExistsError: ``out`` holds files and ``overwrite`` is False.
    """
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(f"{out} already holds results; pass --overwrite to regenerate them "
                              "(or --out to write elsewhere)")
    os.makedirs(out, exist_ok=True)
    return out


def run_entry_point(out: str, overwrite: bool, report_only: bool, compute: Callable[[str], Dict[str, Any]],
                    report: Callable[[str, Dict[str, Any]], None], reuse_ok: bool = False) -> int:
    """The shared ``main`` of the reproduction entry points.

    Either recomputes (``compute(out)`` into a fresh ``out``, refusing to write into an
    existing non-empty folder unless ``overwrite`` or ``reuse_ok``) or, with
    ``report_only``, reloads ``out/results.json``; then ``report(out, results)`` draws
    tables and figures (and may add summary keys), and ``results.json`` is (re)written
    atomically.
    """
    from tfdprobust.errors import require

    if report_only:
        path = os.path.join(out, "results.json")
        require(os.path.exists(path), f"--report_only: {path} does not exist; run without --report_only first")
        with open(path) as f:
            results = json.load(f)
    else:
        try:
            fresh_out(out, overwrite or reuse_ok)
        except FileExistsError as err:
            require(False, str(err))
        results = compute(out)
        write_json(os.path.join(out, "results.json"), results)
    report(out, results)
    write_json(os.path.join(out, "results.json"), results)
    return 0


def combined_data_dir(sources: Dict[str, Optional[str]]) -> str:
    """A temporary folder ``<name>/ -> path`` of symlinks, so one ``--data_dir`` serves the
    private dataset and a disjoint public one.

    :func:`tfdprobust.data.load_raw` looks in ``data_dir/<name>/`` first. Pointing
    ``--data_dir`` at the Fashion-MNIST folder itself would make its files (named like
    MNIST's) answer for ``mnist`` too, so the entry points always combine.

    Args:
        sources: dataset name (``fashion_mnist``, ``mnist``, ``kmnist``) -> folder with its
            raw files (files directly in it, or in a ``<name>/`` subfolder). ``None`` skips.
    """
    root = tempfile.mkdtemp(prefix="tfdprobust-data-")
    for name, path in sources.items():
        if path is None:
            continue
        path = os.path.abspath(path)
        sub = os.path.join(path, name)
        os.symlink(sub if os.path.isdir(sub) else path, os.path.join(root, name))
    return root


def public_source_dir(public_dataset: str, public_data_dir: Optional[str]) -> Optional[str]:
    """Folder with the public dataset's files (``--public_data_dir`` or ../shared/data)."""
    if public_data_dir:
        return public_data_dir
    return SHARED_DATA if os.path.isdir(SHARED_DATA) else None


@dataclasses.dataclass
class Trajectory:
    """Held-out loss and accuracy every ``every`` steps (test images: no privacy cost)."""

    steps: List[int] = dataclasses.field(default_factory=list)
    loss: List[float] = dataclasses.field(default_factory=list)
    accuracy: List[float] = dataclasses.field(default_factory=list)
    robust_accuracy: List[float] = dataclasses.field(default_factory=list)


def trajectory_callback(x: np.ndarray, y: np.ndarray, every: int, record: Trajectory, robust_attack=None):
    """A Keras callback filling ``record`` from the held-out ``(x, y)`` every ``every`` batches.

    It recomputes the public-normalization statistics first (what inference uses), so
    the held-out numbers are those of the model as it would be exported at that step.
    With ``robust_attack`` (an :class:`~tfdprobust.attacks.AttackConfig`) it also records
    the accuracy under that attack (for natural-vs-robust trajectories, seed 001 Fig. 6).
    """
    import tensorflow as tf

    from tfdprobust import attacks

    class _Cb(tf.keras.callbacks.Callback):
        def _measure(self):
            model = self.model
            if hasattr(model, "refresh_public_statistics"):
                model.refresh_public_statistics()
            logits = model.net(x, training=False)
            loss = tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            record.steps.append(int(model.optimizer.iterations.numpy()))
            record.loss.append(float(tf.reduce_mean(loss)))
            record.accuracy.append(float(np.mean(np.argmax(logits.numpy(), -1) == y)))
            if robust_attack is not None:
                correct = attacks.correct_under_attack(lambda z: model.net(z, training=False), x, y, robust_attack,
                                                       compiled=True)
                record.robust_accuracy.append(float(np.mean(correct)))

        def on_train_begin(self, logs=None):
            self._measure()

        def on_train_batch_end(self, batch, logs=None):
            if int(self.model.optimizer.iterations.numpy()) % every == 0:
                self._measure()

        def on_train_end(self, logs=None):
            if not record.steps or record.steps[-1] != int(self.model.optimizer.iterations.numpy()):
                self._measure()

    return _Cb()


def dp_run(cfg, experiment, trajectory_every: int = 0, trajectory_examples: int = 1000,
           log: Callable[[str], None] = print, robust_attack=None) -> Dict[str, Any]:
    """Trains ``cfg`` on already-loaded data, evaluates clean and ``cfg.eval_attack``
    accuracy on the test split, and accounts epsilon. Library calls only.

    Returns:
        A flat dict: settings, accuracies, epsilon, wall time, the held-out trajectory, and
        ``diverged`` (the held-out loss did not fall: non-finite, or at the end not below its start).
    """
    from tfdprobust import accounting, run_config, training

    n = len(experiment.train)
    cfg = run_config.resolve_noise(cfg, n)
    dp = cfg.train.dp
    spec = run_config.accounting_spec(cfg, n) if dp.enabled else None
    record = Trajectory()
    callbacks = []
    if trajectory_every:
        xt, yt = experiment.test.x[:trajectory_examples], experiment.test.y[:trajectory_examples]
        callbacks.append(trajectory_callback(xt, yt, trajectory_every, record, robust_attack))
    start = time.time()
    trained = training.train(cfg, experiment.train, experiment.public, spec, log, callbacks=callbacks)
    metrics = training.evaluate_net(trained.trainer.net, experiment.test, cfg.eval_attack, 0, log)
    final_loss = record.loss[-1] if record.loss else float("nan")
    diverged = bool(record.loss) and not (math.isfinite(final_loss) and final_loss < record.loss[0])
    out = {
        "dataset": cfg.data.dataset, "model": cfg.model.name, "norm": cfg.model.norm,
        "public": experiment.public.source if experiment.public is not None else None,
        "train_examples": n, "test_examples": len(experiment.test),
        "optimizer": cfg.train.optimizer, "learning_rate": cfg.train.learning_rate,
        "batch_size": cfg.batch_size, "l2_clip": dp.l2_clip if dp.enabled else None,
        "noise_multiplier": dp.noise_multiplier if dp.enabled else 0.0, "dp": dp.enabled,
        "attack": cfg.train.attack.name if cfg.train.robust else "none",
        "adv_weight": cfg.train.adv_weight if cfg.train.robust else 0.0,
        "epochs": cfg.epochs, "steps": trained.steps, "seed": cfg.seed,
        "epsilon": accounting.epsilon(spec.replace(steps=trained.steps)) if dp.enabled else None,
        "delta": cfg.delta if dp.enabled else None,
        "eval_attack": (f"{cfg.eval_attack.name} eps={cfg.eval_attack.eps:g} x{cfg.eval_attack.steps}"
                        if cfg.eval_attack is not None else None),
        "train_seconds": round(trained.seconds, 1), "wall_seconds": round(time.time() - start, 1),
        "trajectory": dataclasses.asdict(record), "diverged": diverged,
        **metrics,
    }
    out["_trainer"] = trained.trainer
    return out


def pareto_front(points: Sequence[Sequence[float]]) -> List[int]:
    """Indices of the points no other point beats in both coordinates (e.g. natural and
    robust accuracy): the Pareto front of seed 001's Fig. 6."""
    front = []
    for i, (a, b) in enumerate(points):
        if not any((c >= a and d >= b) and (c > a or d > b) for c, d in points):
            front.append(i)
    return front


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def write_json(path: str, obj: Any) -> None:
    def clean(o):
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items() if not k.startswith("_")}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        if isinstance(o, (np.floating, np.integer)):
            return o.item()
        if isinstance(o, float) and not math.isfinite(o):
            return None
        return o
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(clean(obj), f, indent=1)
    os.replace(tmp, path)


def floats(values: Sequence[str]) -> List[float]:
    return [float(v) for v in values]


def ints(values: Sequence[str]) -> List[int]:
    return [int(v) for v in values]


def cleanup_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def check_out(fv) -> None:
    """``--out`` (with ``--overwrite``/``--resume``/``--report_only`` where the entry point
    has them) before any work: a new or empty folder, one to regenerate, or one holding
    the ``results.json`` to report on. Nothing is created.

    Raises:
        UsageError: naming ``--out`` and the fix.
    """
    from tfdprobust import flagcheck
    from tfdprobust.errors import require

    out = fv.out
    flag = lambda name: name in fv and fv[name].value  # noqa: E731
    if flag("report_only"):
        require(os.path.isfile(os.path.join(out, "results.json")),
                f"--report_only: {out} holds no results.json; run without --report_only first, or point "
                "--out at a folder with results")
        return
    require(not (os.path.isdir(out) and os.listdir(out)) or flag("overwrite") or flag("resume"),
            f"--out={out} already holds results; pass --overwrite to regenerate them (or choose another --out)")
    flagcheck.writable_dir(out, "--out")


def check_data_flags(fv) -> None:
    """The data flags the experiment entry points share (names, folders); NumPy only."""
    from tfdprobust import data, flagcheck

    if "dataset" in fv:
        flagcheck.choice(fv, "dataset", data.TFDS_DATASETS)
    if "public_dataset" in fv:
        flagcheck.choice(fv, "public_dataset", data.PUBLIC_DATASETS)
    for name in ("data_dir", "public_data_dir", "mnist_data_dir"):
        if name in fv:
            flagcheck.existing_dir(fv[name].value, f"--{name}", "a folder with the raw data files")
