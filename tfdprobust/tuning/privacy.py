"""The privacy of a search: the per-data-set ledger, the validation mechanism, the guarantee.

* **Ledger.** Every execution that touches the private data appends one line *before*
  it starts to the data set's ledger in the user-level store (:mod:`tfdprobust.ledger`,
  ``--ledger_dir``), shared with every other search, in any folder, and with the training
  CLI; a copy goes to ``<tuning_dir>/.ledgers/<fingerprint>.jsonl``. The fingerprint is a
  hash of the private data set itself (order-independent, over the whole private pool
  before ``--max_train`` or any split), so every search on that data, under any
  ``--project`` or ``--tuning_dir``, interrupted or not, lands in the same ledger. ``--overwrite`` deletes a
  search's folder, never the ledger; only ``--new_ledger`` starts a fresh one (the old
  file is renamed, kept, and the output says so).
* **Validation.** ``noisy_count`` releases, per trial, the number of correct
  validation images plus N(0, s^2) noise (natural, and robust if there is an attack).
  Each count has sensitivity 1 under add-or-remove-one and replace-one, so each release is
  a ``GaussianDpEvent(s)``. Only noised counts are ever written, shown or used for
  selection. ``public`` validates on a public set: no release about private data.
* **Guarantee.** ``ComposedDpEvent`` of every DP training in the ledger and every
  validation release, as if every example could be in every trial's training *and*
  validation sets (simple and conservative), accounted by ``dp_accounting`` under the
  samplers' neighbouring relation (Poisson: add-or-remove-one; shuffle: replace-one;
  a ledger mixing them is refused).
"""

import dataclasses
import math
import os
import time
from typing import Any, Dict, List, Optional

import numpy as np

from tfdprobust import accounting, randomness, sampling
from tfdprobust import ledger as ledger_lib
from tfdprobust.errors import require
from tfdprobust.ledger import (DP_TRAINING, NONDP, VALIDATION, entry_event, fingerprint,  # noqa: F401 - re-exported
                               relation_of, validation_entry)

LEDGER_DIR = ".ledgers"


# --------------------------------------------------------------------------- ledger
@dataclasses.dataclass
class Ledger:
    """The search's view of the data set's ledger: every line goes to the user-level store
    (:class:`tfdprobust.ledger.DataLedger`, shared by every run and search on the data set,
    which :meth:`entries` reads) and to a copy in ``<tuning_dir>/.ledgers/`` (what this
    folder published, for :func:`folder_guarantee`).

    Attributes:
        store: the user-level store (``--ledger_dir``; ``None``: :func:`tfdprobust.ledger.default_dir`).
    """

    tuning_dir: str
    data_fingerprint: str
    store: Optional[str] = None

    @property
    def data_ledger(self) -> ledger_lib.DataLedger:
        return ledger_lib.DataLedger(ledger_lib.resolve_dir(self.store), self.data_fingerprint)

    @property
    def folder_copy(self) -> ledger_lib.DataLedger:
        return ledger_lib.DataLedger(os.path.join(self.tuning_dir, LEDGER_DIR), self.data_fingerprint)

    @property
    def path(self) -> str:
        return self.data_ledger.path

    def entries(self) -> List[Dict[str, Any]]:
        """Every line about this data set, from every folder and the training CLI."""
        return self.data_ledger.entries()

    def folder_entries(self) -> List[Dict[str, Any]]:
        return self.folder_copy.entries()

    def append(self, entry: Dict[str, Any]) -> None:
        """One line per ``O_APPEND`` write, flushed to disk before the execution starts."""
        line = dict(entry, time=time.time(), source="tuner", tuning_dir=os.path.abspath(self.tuning_dir))
        self.data_ledger.append(line)
        self.folder_copy.append(line)

    def retire(self) -> Optional[str]:
        """Renames the current ledger aside (``--new_ledger``), in the store and the folder;
        returns the store's new path."""
        self.folder_copy.retire()
        return self.data_ledger.retire()


def training_entry(run_cfg, num_examples: int, steps: int, **ids) -> Dict[str, Any]:
    """The ledger line of one DP training (written before it starts)."""
    return ledger_lib.training_entry(run_cfg.sampling, num_examples, run_cfg.batch_size, steps,
                                     run_cfg.train.dp.noise_multiplier,
                                     insecure=bool(run_cfg.insecure_reproducible_noise), delta=run_cfg.delta, **ids)


# --------------------------------------------------------------------------- validation mechanism
def noisy_count(correct: int, noise: float, insecure_seed: Optional[int] = None) -> float:
    """``correct + N(0, noise^2)`` from a secret generator (replayable only if insecure)."""
    seed = randomness.secret_int(128) if insecure_seed is None else insecure_seed
    return float(correct + np.random.default_rng(seed).normal(0.0, noise))


def release_accuracy(noisy: float, n: int) -> float:
    """The published accuracy: the noisy count over n, clipped to [0, 1] (post-processing)."""
    return float(min(1.0, max(0.0, noisy / n)))


# --------------------------------------------------------------------------- composition
def search_guarantee(entries: List[Dict[str, Any]], delta: float, accountant: str,
                     planned: Optional[List[Dict[str, Any]]] = None, extra_events=()) -> Dict[str, Any]:
    """Epsilon of everything in the ledger (plus ``planned`` lines), one statement.

    ``extra_events`` are further releases about the same data outside the ledger (e.g.
    models retrained with hyperparameters a search chose); they enter the composition.

    Returns a dict with ``epsilon`` (``None`` if some execution used insecure noise or
    nothing is recorded), counts per kind, the adjacency and the statement.
    """
    import dp_accounting

    everything = list(entries) + list(planned or [])
    dp = [e for e in everything if e["kind"] in (DP_TRAINING, VALIDATION)]
    trainings = [e for e in dp if e["kind"] == DP_TRAINING]
    vals = [e for e in dp if e["kind"] == VALIDATION]
    relation = relation_of(everything)
    adjacency = sampling.ADJACENCY_NAMES[relation]
    insecure = any(e.get("insecure") for e in trainings)
    out = {"delta": delta, "accountant": accountant, "adjacency": adjacency,
           "dp_trainings": len(trainings), "validation_releases": sum(e["releases"] for e in vals),
           "validation_noise": sorted({e["noise"] for e in vals}),
           "nondp_references": sum(1 for e in everything if e["kind"] == NONDP),
           "searches": sorted({e.get("search", "?") for e in trainings}), "insecure": insecure}
    if insecure:
        out.update(epsilon=None, statement=randomness.INSECURE_WARNING + " (at least one execution in the "
                   "ledger of this data set used --insecure_reproducible_noise)")
        return out
    if not dp and not extra_events:
        out.update(epsilon=0.0, statement="nothing released about the private data yet")
        return out
    event = dp_accounting.ComposedDpEvent([entry_event(e) for e in dp] + list(extra_events))
    eps = accounting.epsilon_of_event(event, delta, accountant, relation)
    require(math.isfinite(eps), f"--noise/--val_noise: the planned search has epsilon = {eps}; raise the noise")
    out.update(epsilon=eps, statement=(
        f"({eps:.4g}, {delta:g})-DP ({adjacency} adjacency, {accountant.upper()} accountant) for everything "
        f"released about this private data set: the composition of {len(trainings)} DP training executions "
        f"(every one that started, including interrupted ones and earlier searches on the same data) and "
        f"{out['validation_releases']} noisy validation counts"))
    return out


def planned_lines(cfg, num_train: int, steps: int, trials: int) -> List[Dict[str, Any]]:
    """Ledger lines the remaining ``trials`` of this search will add (for the plan)."""
    out = []
    for _ in range(trials):
        out.append(training_entry(cfg.run, num_train, steps, search="planned"))
        if cfg.validation == "noisy_count":
            out.append(validation_entry(cfg.val_releases, cfg.val_noise, search="planned"))
    return out


def private_selection(cfg, per_trial_event, delta: float, mu: float) -> Dict[str, Any]:
    """Papernot & Steinke (ICLR 2022): a PLANNING figure, not this run's guarantee."""
    import dp_accounting

    event = dp_accounting.dp_event.RepeatAndSelectDpEvent(per_trial_event, mu, math.inf)
    return {
        "method": "Papernot & Steinke 2022, Poisson number of trials (dp_accounting.RepeatAndSelectDpEvent)",
        "mean_trials": mu, "epsilon": accounting.epsilon_of_event(event, delta, cfg.run.accountant),
        "applies_to_this_run": False,
        "assumptions": ("PLANNING FIGURE ONLY. Would hold if the number of trials K ~ Poisson(mean_trials) were "
                        "drawn secretly, each trial's (R, eta) drawn independently, and only the winner released "
                        "(no table, plots or other trials). This search publishes every trial, so it does not apply."),
    }


def folder_guarantee(tuning_dir: str, extra_events, delta: float, accountant: str = "rdp",
                     extra: str = "") -> Dict[str, Any]:
    """Epsilon of everything a folder of searches publishes, plus further releases.

    Composes every line of every current ledger in ``tuning_dir`` (each search's DP
    trainings and noisy validation counts; several data sets' ledgers are composed too,
    which can only overstate epsilon) with ``extra_events`` (e.g. models retrained with the
    hyperparameters the searches chose, described by ``extra``), through
    :func:`search_guarantee`.

    Returns:
        ``{}`` when nothing private was released, else ``epsilon`` (``None`` if some
        execution used insecure noise), ``delta``, the counts and one ``statement``.
    """
    ledger_dir = os.path.join(tuning_dir, LEDGER_DIR)
    names = sorted(os.listdir(ledger_dir)) if os.path.isdir(ledger_dir) else []
    entries = [e for n in names if n.endswith(".jsonl") and ".retired-" not in n
               for e in Ledger(tuning_dir, n[:-len(".jsonl")]).folder_entries()]
    g = search_guarantee(entries, delta, accountant, extra_events=extra_events)
    if not g["dp_trainings"] and not g["validation_releases"] and not extra_events:
        return {}
    out = {"epsilon": g["epsilon"], "delta": delta, "search_trainings": g["dp_trainings"],
           "validation_releases": g["validation_releases"], "extra_releases": len(extra_events)}
    if g["epsilon"] is None:
        return dict(out, statement=g["statement"])
    composed = " ".join(filter(None, [f"{g['validation_releases']} noisy validation counts", extra, "composed"]))
    return dict(out, statement=(
        f"({g['epsilon']:.4g}, {delta:g})-DP ({g['adjacency']} adjacency, {accountant.upper()}) for everything "
        f"this folder publishes: {g['dp_trainings']} search trainings, {composed}; non-DP references are "
        "outside it"))
