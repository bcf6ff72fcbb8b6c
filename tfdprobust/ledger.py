"""One privacy budget per private data set: a user-level ledger of every release about it.

Every DP training on a data set (training CLI, Python API :func:`tfdprobust.runs.run`,
each tuner trial, and each trial's noisy validation counts) appends one JSON line, *before*
it starts, to ``<ledger_dir>/<fingerprint>.jsonl``. The fingerprint is a hash of the whole
private data set (:func:`fingerprint`: order-independent, before ``--max_train`` or any
split), so every run and every search on that data, in any folder, lands in the same
ledger. ``python -m tfdprobust.budget`` composes it; ``--budget=EPS`` refuses up front a
run whose composition with the ledger would exceed EPS.

The store is ``--ledger_dir``, else ``$TFDPROBUST_LEDGER_DIR``, else
``$XDG_DATA_HOME/tfdprobust``, else ``~/.local/share/tfdprobust``. It also holds, per data
set, the secret key of the data roles (:mod:`tfdprobust.roles`), which must never be
published: the store is the user's, not a run's output.

A line records the parameters of the release (sampling, N, expected batch B, steps, noise
multiplier, the extra Gaussian releases of adaptive clipping, or the noise and count of
validation releases), the neighbouring relation, delta, and who made it (source, run name,
command, time). :func:`entry_event` rebuilds its ``DpEvent``; the composition is
``ComposedDpEvent`` of all of them, accounted by ``dp_accounting`` (RDP or PLD).

Concurrency: one line per ``O_APPEND`` write under an exclusive ``fcntl.flock``, then
``fsync``: concurrent runs never interleave or lose a line.
"""

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shlex
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from tfdprobust import accounting, sampling
from tfdprobust.errors import UsageError, require

ENV = "TFDPROBUST_LEDGER_DIR"
DP_TRAINING, VALIDATION, NONDP = "dp_training", "validation", "nondp_reference"
ACCOUNTANTS = ("rdp", "pld")


LEDGER_DIR_HELP = ("User-level store of the per-data-set privacy ledgers and data-roles keys (default: "
                   "$TFDPROBUST_LEDGER_DIR, else $XDG_DATA_HOME/tfdprobust, else ~/.local/share/tfdprobust). Every "
                   "run and search on a data set is recorded there; python -m tfdprobust.budget composes them.")
BUDGET_HELP = ("Privacy budget of the data set: refuse, before training, a run whose composition with everything "
               "already released about this data set (its ledger) would exceed this epsilon.")


def define_flags(f) -> None:
    """Defines ``--ledger_dir`` and ``--budget`` on an absl flags module (one name per concept)."""
    f.DEFINE_string("ledger_dir", None, LEDGER_DIR_HELP)
    f.DEFINE_float("budget", None, BUDGET_HELP)


def default_dir() -> str:
    """The user-level store: ``$TFDPROBUST_LEDGER_DIR``, ``$XDG_DATA_HOME/tfdprobust`` or
    ``~/.local/share/tfdprobust``."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "tfdprobust")


def resolve_dir(ledger_dir: Optional[str]) -> str:
    """``ledger_dir`` when given, else :func:`default_dir`."""
    return ledger_dir or default_dir()


# --------------------------------------------------------------------------- fingerprint
def example_digests(x: np.ndarray, y: np.ndarray) -> List[bytes]:
    """sha256 of each example's bytes (image + label): the identity of one example."""
    x = np.ascontiguousarray(x)
    return [hashlib.sha256(row.tobytes() + int(label).to_bytes(8, "little", signed=True)).digest()
            for row, label in zip(x.reshape(len(x), -1), np.asarray(y))]


def fingerprint(*arrays_xy) -> str:
    """An order-independent sha256 of the private examples (image bytes + label).

    Args:
        arrays_xy: ``(x, y)`` pairs whose union is the private data set.

    Example:
        >>> x = np.arange(12, dtype=np.float32).reshape(3, 4); y = np.array([0, 1, 2])
        >>> fingerprint((x, y)) == fingerprint((x[::-1], y[::-1]))
        True
    """
    digests = sorted(d for x, y in arrays_xy for d in example_digests(x, y))
    h = hashlib.sha256()
    for d in digests:
        h.update(d)
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- lines
def training_entry(sampling_kind: str, num_examples: int, batch_size: int, steps: int, noise_multiplier: float,
                   extra_noise_multipliers: Sequence[float] = (), insecure: bool = False, **ids) -> Dict[str, Any]:
    """The ledger line of one DP training (written before it starts)."""
    return dict(ids, kind=DP_TRAINING, sampling=sampling_kind, num_examples=int(num_examples),
                batch_size=int(batch_size), steps=int(steps), noise_multiplier=float(noise_multiplier),
                extra_noise_multipliers=[float(s) for s in extra_noise_multipliers], insecure=bool(insecure))


def spec_entry(spec: accounting.AccountingSpec, insecure: bool = False, **ids) -> Dict[str, Any]:
    """The line of the training an :class:`~tfdprobust.accounting.AccountingSpec` describes."""
    return training_entry(spec.sampling, spec.num_examples, spec.batch_size, spec.total_steps,
                          spec.noise_multiplier, tuple(spec.extra_noise_multipliers), insecure,
                          delta=spec.delta, **ids)


def validation_entry(releases: int, noise: float, **ids) -> Dict[str, Any]:
    """The ledger line of one trial's noisy validation counts (written before release)."""
    return dict(ids, kind=VALIDATION, releases=int(releases), noise=float(noise))


def who(source: str, name: str = "") -> Dict[str, Any]:
    """Who made a release: its source (training, tuner, api...), run name and command line."""
    return {"source": source, "run": name, "command": " ".join(shlex.quote(a) for a in sys.argv)}


def entry_event(entry: Dict[str, Any]):
    """The ``DpEvent`` of one ledger line (``None`` for non-DP references)."""
    import dp_accounting

    if entry["kind"] == DP_TRAINING:
        sampler = sampling.make_sampler(entry["sampling"], entry["num_examples"], entry["batch_size"])
        return sampler.dp_event(entry["noise_multiplier"], entry["steps"],
                                tuple(entry.get("extra_noise_multipliers") or ()))
    if entry["kind"] == VALIDATION:
        return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(entry["noise"]), entry["releases"])
    return None


def relation_of(entries: List[Dict[str, Any]]):
    """The one neighbouring relation of the ledger's trainings; mixing is refused."""
    kinds = {e["sampling"] for e in entries if e["kind"] == DP_TRAINING}
    relations = {sampling.make_sampler(s, 10, 1).neighboring_relation for s in kinds}
    if len(relations) > 1:
        raise UsageError(f"--sampling: the ledger of this private data set holds trainings with "
                         f"{' and '.join(sorted(kinds))} sampling, whose guarantees use different neighbouring "
                         "relations and cannot be composed into one; keep the --sampling of the earlier runs")
    return relations.pop() if relations else sampling.NeighboringRelation.ADD_OR_REMOVE_ONE


def composed_epsilon(entries: List[Dict[str, Any]], delta: float, accountant: str = "rdp") -> Optional[float]:
    """Epsilon at ``delta`` of every DP line composed (``ComposedDpEvent``); ``0.0`` when
    there is none; ``None`` when a line used insecure (replayable) noise."""
    import dp_accounting

    dp = [e for e in entries if e["kind"] in (DP_TRAINING, VALIDATION)]
    if any(e.get("insecure") for e in dp):
        return None
    if not dp:
        return 0.0
    event = dp_accounting.ComposedDpEvent([entry_event(e) for e in dp])
    return accounting.epsilon_of_event(event, delta, accountant, relation_of(dp))


# --------------------------------------------------------------------------- the ledger
@dataclasses.dataclass(frozen=True)
class DataLedger:
    """The append-only record of every release about one private data set."""

    directory: str
    data_fingerprint: str

    @property
    def path(self) -> str:
        return os.path.join(self.directory, f"{self.data_fingerprint}.jsonl")

    def entries(self) -> List[Dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def append(self, entry: Dict[str, Any]) -> None:
        """One line per ``O_APPEND`` write under an exclusive lock, on disk before the release starts."""
        os.makedirs(self.directory, exist_ok=True)
        line = json.dumps(dict(entry, time=entry.get("time", time.time()), fingerprint=self.data_fingerprint),
                          allow_nan=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock

    def retire(self) -> Optional[str]:
        """Renames the current ledger aside (``--new_ledger``); returns its new path."""
        if not os.path.exists(self.path):
            return None
        new = self.path.replace(".jsonl", f".retired-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        os.replace(self.path, new)
        return new


def check_budget(entries: List[Dict[str, Any]], planned: List[Dict[str, Any]], budget: Optional[float],
                 delta: float, accountant: str, ledger_path: str) -> Optional[float]:
    """Refuses (``UsageError``, before any training) a release that would take the data
    set's composed epsilon above ``budget``; returns the composed epsilon (or ``None``).

    ``budget=None`` checks nothing (and composes nothing).
    """
    if budget is None:
        return None
    require(budget > 0, f"--budget must be > 0, got {budget}")
    eps = composed_epsilon(list(entries) + list(planned), delta, accountant)
    require(eps is not None, f"--budget={budget:g}: the ledger of this data set ({ledger_path}) holds a run with "
            "--insecure_reproducible_noise, which has no guarantee; no budget can hold")
    require(eps <= budget and math.isfinite(eps),
            f"--budget={budget:g}: this run would take everything released about this data set to epsilon="
            f"{eps:.4g} at delta={delta:g} ({accountant.upper()}; {len(entries)} earlier ledger lines in "
            f"{ledger_path}); lower the epochs or raise --noise, or raise --budget")
    return eps


def record_training(spec: accounting.AccountingSpec, data_fingerprint: str, ledger_dir: Optional[str],
                    budget: Optional[float], source: str, name: str = "", insecure: bool = False) -> DataLedger:
    """Checks ``--budget`` against the data set's ledger, then appends this training: the one
    call a training entry point makes before it starts (training CLI, Python API).

    Raises:
        UsageError: the composition would exceed ``budget`` (nothing is written).
    """
    ledger = DataLedger(resolve_dir(ledger_dir), data_fingerprint)
    line = spec_entry(spec, insecure, **who(source, name))
    check_budget(ledger.entries(), [line], budget, spec.delta, spec.accountant, ledger.path)
    ledger.append(line)
    return ledger
