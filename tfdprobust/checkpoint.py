"""Training that survives a crash: atomic checkpoints, a write-ahead step journal, ``--resume``.

A run with ``--checkpoint_every=K`` keeps one folder, ``<checkpoint_dir>/<run_name>.checkpoint``
(``--checkpoint_dir`` defaults to ``--export_dir``), holding:

``run.json``
    the run's settings, data size and sigma, written before the first step: what a resumed
    run must match.
``step-<steps>/``
    the newest complete checkpoint: ``state.npz`` (the network's weights, the optimizer's
    variables with its step count and slots, and the clip bound, which adaptive clipping
    moves) and ``manifest.json`` (the step count, the epsilons so far, the variable names
    and shapes). Written into a temporary folder, flushed, then renamed into
    place, so a kill at any moment leaves either the old or the new checkpoint, never half
    of one. One is written every ``K`` epochs and after the last epoch (a crash during the
    evaluation then costs no training). A run killed before its first checkpoint resumes
    from its initialization (which ``--seed`` fixes), its lost steps composed all the same.
``journal.json``
    the write-ahead step journal (:mod:`tfdprobust.journal`): the count of steps started,
    rewritten before each step's batch enters the train step (Keras' ``on_train_batch_begin``,
    before the step draws its noise). Steps that ran after the last checkpoint are lost to
    the model but *not* to the adversary: their noise was drawn and their intermediate models
    may have been observed. ``--resume`` therefore composes them into epsilon
    (:attr:`tfdprobust.accounting.AccountingSpec.interrupted_steps`), and the guarantee says so.

The secret generators (DP noise, batch sampling) are never saved: a resumed run draws fresh
ones from OS entropy (:mod:`tfdprobust.randomness`), and the test suite checks that no
generator state is in a checkpoint. Replaying the old streams would reuse noise.

This module needs NumPy only; TensorFlow is imported by the functions that touch a model.

Example:
    >>> import tempfile
    >>> check_request(os.path.join(tempfile.mkdtemp(), "run.checkpoint"), resume=True,
    ...               run_name="run")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    tfdprobust.errors.UsageError: --resume: there is no checkpoint of run 'run' in ...
"""

import dataclasses
import json
import math
import os
import re
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfdprobust.errors import UsageError, require
from tfdprobust.journal import JOURNAL, Journal, fsync_dir, write_file

FORMAT = 1
SUFFIX = ".checkpoint"
STATE = "state.npz"
MANIFEST = "manifest.json"
RUN = "run.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_MARK = ".tmp-"
#: RunConfig fields a resumed run may change: they decide neither the training nor what is published.
RESUMABLE_CHANGES = ("resume", "verbose", "checkpoint_every", "checkpoint_dir", "tensorboard_dir", "export_dir",
                     "run_name")


def folder_of(parent: str, run_name: str) -> str:
    """The checkpoint folder of run ``run_name`` under ``parent``."""
    return os.path.join(parent, run_name + SUFFIX)


def latest(folder: str) -> Optional[str]:
    """The newest complete checkpoint (``step-<n>`` folder) in ``folder``, or ``None``."""
    if not os.path.isdir(folder):
        return None
    steps = [(int(m.group(1)), name) for name in os.listdir(folder) for m in [_STEP_DIR.match(name)] if m]
    return os.path.join(folder, max(steps)[1]) if steps else None


def check_request(folder: str, resume: bool, run_name: str) -> None:
    """Before any work (no TensorFlow): ``--resume`` needs a checkpoint in ``folder``; a fresh
    run must not start over the checkpoint of an interrupted one (its journal is the only
    record of the steps that run took).

    Raises:
        UsageError: naming the flag and the fix.
    """
    owner = _live_owner(folder)
    require(owner is None, f"{folder} belongs to run {run_name!r}, which is still training (pid {owner}); choose "
            "another --run_name, or wait for that run to finish")
    if resume:
        require(os.path.isfile(os.path.join(folder, RUN)),
                f"--resume: there is no checkpoint of run {run_name!r} in {folder}; check --run_name and "
                "--checkpoint_dir (or --export_dir), or start the run without --resume")
    else:
        require(not os.path.exists(folder),
                f"{folder} holds the checkpoint of an interrupted run {run_name!r}; continue it with the same "
                "flags plus --resume, or choose another --run_name (or delete that folder)")


def _live_owner(folder: str) -> Optional[int]:
    """The pid of another live process that keeps ``folder``'s journal, or ``None``."""
    try:
        with open(os.path.join(folder, JOURNAL)) as f:
            pid = int(json.load(f)["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:  # alive, another user's
        return pid
    return pid


# ----------------------------------------------------------------------------- settings
def fingerprint(cfg) -> Dict[str, Any]:
    """The settings a resumed run must share with the interrupted one, as plain JSON values."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def differences(old: Any, new: Any, path: str = "") -> List[str]:
    """Dotted paths where two :func:`fingerprint` trees differ, e.g. ``['epochs: 3 -> 5']``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += differences(old.get(key), new.get(key), f"{path}{key}.")
        return out
    return [] if old == new else [f"{path.rstrip('.')}: {old!r} -> {new!r}"]


def read_run(folder: str) -> Dict[str, Any]:
    """The ``run.json`` of checkpoint folder ``folder`` (settings, data size, sigma)."""
    path = os.path.join(folder, RUN)
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as err:
        raise UsageError(f"--resume: {path} is missing or unreadable ({err}); start a new run with another "
                         "--run_name") from None
    require(record.get("format") == FORMAT, f"--resume: {path} has format {record.get('format')}, this version "
            f"reads {FORMAT}; start a new run with another --run_name")
    return record


def check_same_settings(record: Dict[str, Any], cfg) -> None:
    """Refuses to resume with settings other than those of the interrupted run."""
    changed = differences(record["settings"], fingerprint(cfg))
    require(not changed, f"--resume: the flags differ from those of the interrupted run ({'; '.join(changed[:3])}"
            f"{'; ...' if len(changed) > 3 else ''}); resume with the same flags, or start a new run with "
            "another --run_name")


# ----------------------------------------------------------------------------- state
@dataclasses.dataclass(frozen=True)
class State:
    """What a checkpoint restores: weights, optimizer variables (step count and slots), the
    clip bound, and the manifest (steps, epochs done, epsilons so far, names and shapes)."""

    net: Tuple[np.ndarray, ...]
    optimizer: Tuple[np.ndarray, ...]
    clip_bound: np.ndarray
    manifest: Dict[str, Any]

    @property
    def steps(self) -> int:
        return int(self.manifest["steps"])


def _optimizer_variables(trainer) -> list:
    """The optimizer's variables (step counter first, then the slots), created if not yet."""
    import tensorflow as tf

    optimizer = trainer.optimizer
    if hasattr(optimizer, "_create_all_weights"):  # Keras-2 (legacy): slots exist only after the first step
        with trainer.distribute_strategy.scope(), tf.name_scope(optimizer._name):
            optimizer._create_all_weights(trainer.net.trainable_variables)
    return list(optimizer.variables())


def capture(trainer, manifest: Dict[str, Any]) -> State:
    """The state of a :class:`~tfdprobust.train_step.PrivateRobustModel` (never its generators)."""
    optimizer = _optimizer_variables(trainer)
    steps = int(trainer.optimizer.iterations.numpy())
    manifest = dict(manifest, format=FORMAT, steps=steps,
                    net_variables=[[v.name, list(v.shape)] for v in trainer.net.weights],
                    optimizer_variables=[[v.name, list(v.shape)] for v in optimizer])
    return State(tuple(v.numpy() for v in trainer.net.weights), tuple(v.numpy() for v in optimizer),
                 np.asarray(trainer.clip_bound.numpy()), manifest)


def restore(trainer, state: State) -> None:
    """Loads ``state`` into ``trainer`` (same network and optimizer as the saved run).

    Raises:
        UsageError: the checkpoint's variables do not match the network's or optimizer's.
    """
    optimizer = _optimizer_variables(trainer)
    for kind, variables, values in (("net", trainer.net.weights, state.net), ("optimizer", optimizer, state.optimizer)):
        saved = [tuple(entry) for entry in state.manifest[f"{kind}_variables"]]
        here = [(v.name, list(v.shape)) for v in variables]
        require(len(saved) == len(here) and all(s[1] == h[1] for s, h in zip(saved, here)),
                f"--resume: the checkpoint's {kind} variables do not match this run's ({len(saved)} saved, "
                f"{len(here)} here); resume with the same flags, or start a new run with another --run_name")
        for variable, value in zip(variables, values):
            variable.assign(value)
    trainer.clip_bound.assign(float(state.clip_bound))
    require(int(trainer.optimizer.iterations.numpy()) == state.steps,
            f"--resume: the checkpoint's optimizer counts {int(trainer.optimizer.iterations.numpy())} steps, its "
            f"manifest {state.steps}; start a new run with another --run_name")


def write(folder: str, state: State) -> str:
    """Writes ``state`` atomically as ``folder/step-<steps>`` and removes older checkpoints.

    Returns:
        The checkpoint's path.
    """
    os.makedirs(folder, exist_ok=True)
    final = os.path.join(folder, f"step-{state.steps:09d}")
    tmp = tempfile.mkdtemp(dir=folder, prefix=f".step-{state.steps}{_TMP_MARK}{os.getpid()}-")
    try:
        arrays = {f"net/{i:04d}": v for i, v in enumerate(state.net)}
        arrays.update({f"optimizer/{i:04d}": v for i, v in enumerate(state.optimizer)})
        arrays["clip_bound"] = state.clip_bound
        with open(os.path.join(tmp, STATE), "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        write_file(os.path.join(tmp, MANIFEST), json.dumps(_strict(state.manifest), indent=1).encode(), True)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp made it 0700; give it the user's usual permissions
        if os.path.exists(final):  # only if a step count repeats; never the case in one run
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if path != final and (_STEP_DIR.match(name) or (name.startswith(".step-") and _TMP_MARK in name)):
            shutil.rmtree(path, ignore_errors=True)  # older checkpoints and temporaries of dead attempts
    return final


def read(path: str) -> State:
    """The :class:`State` of checkpoint folder ``path`` (a ``step-<n>`` folder)."""
    with open(os.path.join(path, MANIFEST)) as f:
        manifest = json.load(f)
    require(manifest.get("format") == FORMAT, f"--resume: {path} has checkpoint format {manifest.get('format')}, "
            f"this version reads {FORMAT}; start a new run with another --run_name")
    with np.load(os.path.join(path, STATE), allow_pickle=False) as arrays:
        net = tuple(arrays[f"net/{i:04d}"] for i in range(len(manifest["net_variables"])))
        optimizer = tuple(arrays[f"optimizer/{i:04d}"] for i in range(len(manifest["optimizer_variables"])))
        clip_bound = arrays["clip_bound"]
    return State(net, optimizer, clip_bound, manifest)


def _strict(value):
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- during training
@dataclasses.dataclass(frozen=True)
class Plan:
    """Where and how often a run checkpoints, and whether it resumes.

    Attributes:
        folder: the run's checkpoint folder (:func:`folder_of`).
        every: checkpoint every this many epochs (and after the last one); >= 1.
        resume: continue from the newest checkpoint in ``folder``.
    """

    folder: str
    every: int
    resume: bool = False

    def __post_init__(self):
        require(isinstance(self.every, int) and self.every >= 1,
                f"--checkpoint_every must be an integer >= 1 to checkpoint, got {self.every}")


def callback(plan: Plan, journal: Journal, steps_per_epoch: int, epochs: int, manifest: Dict[str, Any],
             epsilons: Sequence[float] = ()):
    """The Keras callback that counts steps in ``journal`` before they run and writes a
    checkpoint every ``plan.every`` epochs and after the last epoch.

    ``manifest`` is stored with every checkpoint (it gains ``steps``, the epsilons after each
    epoch so far, starting from ``epsilons``, and ``interrupted``). Put the callback after
    :class:`~tfdprobust.train_step.DivergenceGuard` so a diverged model is never saved, and
    after :class:`~tfdprobust.train_step.PrivacyCallback` so the epoch's epsilon is in the logs.
    """
    import tensorflow as tf

    class Checkpointer(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epsilons = list(epsilons)
            self.written: List[str] = []

        def on_train_batch_begin(self, batch, logs=None):
            journal.step_started()  # before the train step (and its noise draw) runs

        def on_epoch_end(self, epoch, logs=None):
            steps = int(self.model.optimizer.iterations.numpy())
            if logs is not None and "epsilon" in logs:
                self.epsilons.append(float(logs["epsilon"]))
            done = steps // steps_per_epoch
            if done % plan.every == 0 or done >= epochs:
                state = capture(self.model, dict(manifest, epochs_done=done, epsilon_per_epoch=self.epsilons,
                                                 interrupted=list(journal.interrupted)))
                self.written.append(write(plan.folder, state))

    return Checkpointer()


def remove(folder: str) -> None:
    """Deletes a finished run's checkpoint folder (its journal is no longer needed: the
    export's metadata records every step)."""
    shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- a run's checkpointing
@dataclasses.dataclass(frozen=True)
class Checkpointing:
    """What :func:`tfdprobust.training.train` needs to checkpoint a run (and resume it): the
    plan, the step journal, the checkpoint it resumes from (``None`` for a fresh run or one
    killed before its first checkpoint) and the run's ``run.json`` record."""

    plan: Plan
    journal: Journal
    state: Optional[State]
    run: Dict[str, Any]


def plan_for(cfg, name: str) -> Optional[Plan]:
    """The :class:`Plan` of run ``name`` with :class:`~tfdprobust.run_config.RunConfig` ``cfg``
    (``None`` without checkpoints), checked before any work: ``--resume`` needs a checkpoint
    made with the same settings; a fresh run may not start over an interrupted run's checkpoint.

    Raises:
        UsageError: naming the flag and the fix.
    """
    if not cfg.checkpoint_every:
        return None
    parent = cfg.checkpoint_dir if cfg.checkpoint_dir is not None else cfg.export_dir
    plan = Plan(folder_of(parent, name), cfg.checkpoint_every, cfg.resume)
    check_request(plan.folder, plan.resume, name)
    if plan.resume:
        check_same_settings(read_run(plan.folder), cfg)
    return plan


def start(plan: Plan, given, cfg, num_examples: int, name: str, log=print) -> Checkpointing:
    """Starts the step journal (a fresh run) or recovers it and the newest checkpoint
    (``--resume``); called under the run's claim, before any step.

    Args:
        given: the run's config as given (the one whose settings a checkpoint records).
        cfg: the config with sigma resolved for ``num_examples`` private examples.

    Raises:
        UsageError: the settings, the data size or sigma differ from the checkpoint's, or
            the journal cannot be read.
    """
    sigma = cfg.train.dp.noise_multiplier
    record = {"format": FORMAT, "run_name": name, "settings": fingerprint(given), "num_examples": num_examples,
              "noise_multiplier": sigma}
    check_request(plan.folder, plan.resume, name)  # again, under the claim
    if not plan.resume:
        os.makedirs(plan.folder, exist_ok=True)
        write_file(os.path.join(plan.folder, RUN), json.dumps(record, indent=1).encode(), durable=True)
        journal = Journal.begin(plan.folder)
        log(f"checkpoints: every {plan.every} epoch(s) in {_shown(plan.folder)}; if this run is killed, continue "
            f"it with the same flags plus --resume --run_name={name}")
        return Checkpointing(plan, journal, None, record)
    saved = read_run(plan.folder)
    check_same_settings(saved, given)
    require((saved["num_examples"], saved["noise_multiplier"]) == (num_examples, sigma),
            f"--resume: the interrupted run trained on {saved['num_examples']} examples with sigma="
            f"{saved['noise_multiplier']:.6g}, this one has {num_examples} with sigma={sigma:.6g}; resume on the "
            "same data, or start a new run with another --run_name")
    newest = latest(plan.folder)
    state = read(newest) if newest is not None else None  # None: killed before its first checkpoint
    steps = state.steps if state is not None else 0
    before = len(Journal.read_interrupted(plan.folder))
    if state is None and not os.path.exists(os.path.join(plan.folder, JOURNAL)):
        journal = Journal.begin(plan.folder)  # killed between run.json and the journal: no step ran
    else:
        journal = Journal.recover(plan.folder, steps)
    lost = journal.interrupted[before:]
    bound = " (at most: the machine restarted since)" if journal.recovered_from_reboot else ""
    log(f"resuming {name} from "
        + (f"its checkpoint at step {steps} (epoch {state.manifest['epochs_done']}); " if state is not None
           else "its initialization (it was killed before its first checkpoint); ")
        + (f"the killed attempt ran {sum(lost)} step(s) after it{bound}; " if lost else "")
        + (f"epsilon composes all {sum(journal.interrupted)} lost step(s) too; " if journal.interrupted else "")
        + "fresh noise and sampling generators from OS entropy")
    return Checkpointing(plan, journal, state, saved)


def keras_callbacks(checkpointing: Optional[Checkpointing], epochs: int, steps_per_epoch: int):
    """``(callbacks, epochs left to train, step resumed from or None)`` for a run of ``epochs``."""
    if checkpointing is None:
        return [], epochs, None
    state = checkpointing.state
    done = state.steps // steps_per_epoch if state is not None else 0
    require(state is None or state.steps == done * steps_per_epoch,
            f"--resume: the checkpoint holds {state.steps if state else 0} steps, not a whole number of epochs of "
            f"{steps_per_epoch} steps; resume with the same flags, or start a new run with another --run_name")
    earlier = state.manifest.get("epsilon_per_epoch", []) if state is not None else []
    keras_callback = callback(checkpointing.plan, checkpointing.journal, steps_per_epoch, epochs,
                              {"run_name": checkpointing.run["run_name"]}, earlier)
    return [keras_callback], epochs - done, state.steps if state is not None else None


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (portable logs)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
