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

# Lazy attributes (PEP 562): ``python -m tfdprobust.tune`` checks its flags before
# TensorFlow is imported, so bad input is refused within a second.
_EXPORTS = {
    "config": ("CONFIG_FILE", "NATURAL", "OBJECTIVES", "ROBUST", "VALIDATIONS", "TuneConfig", "check_tuning_dir"),
    "grids": ("parse_grid", "validate_grid"),
    "privacy": ("Ledger", "fingerprint", "search_guarantee"),
    "reports": ("collect_trials", "pareto_front"),
    "lock": ("SearchLock",),
    "search": ("run_search",),
    "trial": ("load_search_data", "robust_correct", "trial_config"),
}
__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name):
    import importlib

    for module, names in _EXPORTS.items():
        if name in names:
            return getattr(importlib.import_module(f"tfdprobust.tuning.{module}"), name)
    raise AttributeError(f"module 'tfdprobust.tuning' has no attribute {name!r}")
