"""Keras Tuner search over clipping norm R x learning rate eta, with a true privacy guarantee.

The paper (seed 001, section 4.1, Fig. 5) finds that at the same epsilon, DP-SGD can be
very robust or not at all depending on (R, eta). This package searches that grid and
prints ONE guarantee that covers everything it publishes:

* :mod:`.config`  -- :class:`TuneConfig`, grids, checks (all before any write).
* :mod:`.privacy` -- the per-data-set ledger, the noisy-count validation mechanism and the
  composition of every execution (dp_accounting).
* :mod:`.trial`   -- data of a search and one trial (fresh secret noise via
  :func:`tfdprobust.training.train`); :func:`~.trial.robust_correct` is the one
  robust-accuracy hook.
* :mod:`.oracles` -- Keras Tuner oracles and the tuner.
* :mod:`.reports` -- strict JSON, HParams, tables, plots, exports, the summary.
* :mod:`.search`  -- :func:`run_search`: validate, lock, run, report.
* :mod:`.cli`     -- flags; ``python -m tfdprobust.tune`` is the entry point.

Layout of ``<tuning_dir>/``::

    .ledgers/<fingerprint>.jsonl  every execution on one private data set (survives --overwrite)
    .locks/<project>.lock         held by the running tuner (flock; released on death)
    <project>/search_config.json  what defines the search (a resume must match it)
    <project>/trial_*/            Keras Tuner trials (+ net.weights.h5, result.json)
    <project>/results.csv / .md   DP trials only, under the search's guarantee
    <project>/references.csv / .md  non-DP references, NOT covered (only with --nondp_reference)
    <project>/heatmap.png, pareto.png, logs/ (HParams), search_results.json, best/
"""

from tfdprobust.tuning.config import (CONFIG_FILE, NATURAL, OBJECTIVES, ROBUST, VALIDATIONS, TuneConfig,
                                      check_tuning_dir, parse_grid, validate_grid)
from tfdprobust.tuning.privacy import Ledger, fingerprint, search_guarantee
from tfdprobust.tuning.reports import collect_trials, pareto_front
from tfdprobust.tuning.search import SearchLock, run_search
from tfdprobust.tuning.trial import load_search_data, robust_correct, trial_config

__all__ = ["CONFIG_FILE", "NATURAL", "OBJECTIVES", "ROBUST", "VALIDATIONS", "TuneConfig", "check_tuning_dir",
           "parse_grid", "validate_grid", "Ledger", "fingerprint", "search_guarantee", "collect_trials",
           "pareto_front", "SearchLock", "run_search", "load_search_data", "robust_correct", "trial_config"]
