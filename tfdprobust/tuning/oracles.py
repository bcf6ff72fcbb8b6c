"""Keras Tuner oracles (a registry) and the tuner that runs one private trial per Keras Tuner trial."""

import dataclasses
import itertools
import os
from typing import Any, Callable

from tfdprobust.registry import Registry
from tfdprobust.tuning import reports
from tfdprobust.tuning.config import NATURAL, ROBUST, WEIGHTS_FILE, TuneConfig


@dataclasses.dataclass(frozen=True)
class TunerSpec:
    """How to build a Keras Tuner oracle; ``budgeted`` ones need ``--max_trials``."""

    make_oracle: Callable[..., Any]
    budgeted: bool
    note: str = ""


TUNERS: Registry = Registry("tuner")


def _grid(objective, hps, max_trials, seed):
    import keras_tuner as kt

    # Keras Tuner 1.4's GridSearchOracle keeps its position in the grid only in memory
    # (not in oracle.json), so a reloaded search stops after the finished trials. This
    # oracle is stateless instead: the next trial is the first pair no trial has taken,
    # which survives restarts and serves distributed workers alike.
    class ResumableGridOracle(kt.Oracle):
        def populate_space(self, trial_id):
            taken = {tuple(sorted(t.hyperparameters.values.items())) for t in self.trials.values()}
            space = self.get_space()
            names = [h.name for h in space.space]
            for combo in itertools.product(*(h.values for h in space.space)):
                values = dict(zip(names, combo))
                if tuple(sorted(values.items())) not in taken:
                    return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": values}
            status = "IDLE" if self.ongoing_trials else "STOPPED"
            return {"status": getattr(kt.engine.trial.TrialStatus, status), "values": None}

    return ResumableGridOracle(objective=objective, hyperparameters=hps, max_trials=max_trials, seed=seed,
                               tune_new_entries=False, allow_new_entries=False)


def _random(objective, hps, max_trials, seed):
    import keras_tuner as kt

    return kt.oracles.RandomSearchOracle(objective=objective, hyperparameters=hps, max_trials=max_trials,
                                         seed=seed, tune_new_entries=False, allow_new_entries=False)


def _bayesian(objective, hps, max_trials, seed):
    import keras_tuner as kt

    return kt.oracles.BayesianOptimizationOracle(objective=objective, hyperparameters=hps,
                                                 max_trials=max_trials, seed=seed,
                                                 tune_new_entries=False, allow_new_entries=False)


def _hyperband(objective, hps, max_trials, seed):
    import keras_tuner as kt

    # Hyperband normally grows epochs per bracket; that would change epsilon per trial,
    # so its epoch budget is ignored here and max_epochs only sizes brackets.
    return kt.oracles.HyperbandOracle(objective=objective, hyperparameters=hps, max_epochs=max(3, max_trials or 3),
                                      seed=seed, tune_new_entries=False, allow_new_entries=False)


TUNERS.register("grid")(TunerSpec(_grid, budgeted=False, note="every (R, eta) pair once"))
TUNERS.register("random")(TunerSpec(_random, budgeted=True, note="--max_trials pairs drawn from the grid"))
TUNERS.register("bayesian")(TunerSpec(_bayesian, budgeted=True, note="Gaussian-process BO over the grid"))
TUNERS.register("hyperband")(TunerSpec(
    _hyperband, budgeted=True,
    note="brackets only; every trial trains the fixed --epochs so epsilon stays the same"))


def _make_tuner_class():
    import keras_tuner as kt

    from tfdprobust.tuning import trial as trial_lib

    class PrivateRobustTuner(kt.engine.base_tuner.BaseTuner):
        """Runs one DP + adversarial training per trial; returns released validation figures."""

        def __init__(self, cfg: TuneConfig, sd, ledger, log, on_trial_end_hook, **kwargs):
            self.cfg, self.sd, self.ledger, self.log, self.hook = cfg, sd, ledger, log, on_trial_end_hook
            super().__init__(**kwargs)

        def run_trial(self, trial, *args, **kwargs):
            cfg, hps = self.cfg, trial.hyperparameters
            r, lr = float(hps.get("l2_clip")), float(hps.get("learning_rate"))
            self.log(f"trial {trial.trial_id}: R={r:g} eta={lr:g} ({cfg.run.train.optimizer}, "
                     f"sigma={cfg.run.train.dp.noise_multiplier:g})")
            ids = {"search": os.path.abspath(cfg.project_dir), "trial_id": trial.trial_id,
                   "tuner_id": self.tuner_id, "l2_clip": r, "learning_rate": lr}
            net, record, seconds = trial_lib.run_one(cfg, trial_lib.trial_config(cfg, r, lr), self.sd, self.ledger, ids,
                                            self.log)
            record["trial_id"] = trial.trial_id
            trial_dir = self.get_trial_dir(trial.trial_id)
            os.makedirs(trial_dir, exist_ok=True)
            net.save_weights(os.path.join(trial_dir, WEIGHTS_FILE))
            reports.write_json_strict(os.path.join(trial_dir, "result.json"), record)
            trial_lib.write_timing(trial_dir, seconds)
            reports.write_trial_hparams(os.path.join(cfg.project_dir, "logs"), f"trial_{trial.trial_id}", record)
            rob = record[ROBUST]
            self.log(f"trial {trial.trial_id}: natural {record[NATURAL]:.4f}  robust "
                     f"{'-' if rob is None else f'{rob:.4f}'}  ({record['validation']})  "
                     f"epsilon of this training {record['epsilon']:.4g}  ({seconds:.0f} s wall time, not covered by epsilon)")
            out = {NATURAL: record[NATURAL]}
            if rob is not None:
                out[ROBUST] = rob
            if getattr(self.oracle.objective, "objectives", None):  # a keras_tuner MultiObjective
                # Keras Tuner 1.4 checks a returned dict for the objective's *name*, which for
                # several objectives is "multi_objective"; give it the value the oracle itself
                # computes (it minimizes, so the negated sum of the maximized metrics).
                out[self.oracle.objective.name] = self.oracle.objective.get_value(out)
            return out

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            if self.hook is not None:
                self.hook(trial)

    return PrivateRobustTuner


def _objective(objective: str):
    import keras_tuner as kt

    objs = {"robust": [kt.Objective(ROBUST, "max")], "natural": [kt.Objective(NATURAL, "max")],
            "both": [kt.Objective(ROBUST, "max"), kt.Objective(NATURAL, "max")]}[objective]
    return objs[0] if len(objs) == 1 else objs


def make_tuner(cfg: TuneConfig, sd, ledger, log=print, on_trial_end=None):
    """The Keras Tuner for ``cfg``; always reloads (``--overwrite`` is done by the caller,
    which deletes the folder *before* writing ``search_config.json``)."""
    import keras_tuner as kt

    hps = kt.HyperParameters()
    hps.Choice("l2_clip", list(cfg.clip_grid), ordered=True)
    hps.Choice("learning_rate", list(cfg.lr_grid), ordered=True)
    oracle = TUNERS.get(cfg.tuner).make_oracle(_objective(cfg.objective), hps, cfg.max_trials, cfg.run.seed)
    return _make_tuner_class()(cfg, sd, ledger, log, on_trial_end, oracle=oracle, directory=cfg.tuning_dir,
                               project_name=cfg.project, overwrite=False)
