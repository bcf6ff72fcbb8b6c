"""Keras Tuner search over clipping norm R x learning rate eta at a fixed privacy budget.

The paper (seed 001, section 4.1, Fig. 5) finds that at the *same* epsilon, DP-SGD can be
very robust or not robust at all depending on (R, eta); the good pairs lie on a diagonal
ridge (small R, large eta). This module searches that grid with Keras Tuner, logs every
trial for TensorBoard's HParams dashboard, draws the landscapes, and reports what the
search itself cost in privacy.

What stays fixed across trials: sigma, epochs, batch size, sampling, delta and the data.
So every trial has the **same** epsilon; only R, eta (and the optimizer, per search) move.

The objective (robust accuracy under PGD, natural accuracy, or both) is measured on a
validation split carved out of the private training data *before* training; the test
set is touched once, at the end, to report the exported best model.

Layout of ``<tuning_dir>/<project>/`` (``project`` defaults to ``search``)::

    search_config.json   what defines the search (a resume must match it)
    ledger.jsonl         one line per trial execution that touched the private data
    trial_*/             Keras Tuner trials (+ net.weights.h5, result.json)
    reference/           non-DP reference runs, one per eta (not private!)
    logs/                TensorBoard HParams logs, one run per trial
    results.csv / .md    the table of every trial
    heatmap.png          natural and robust accuracy over (R, eta), side by side
    pareto.png           natural vs robust accuracy, DP beside non-DP, Pareto fronts
    search_results.json  all of the above + the privacy cost of the search
    best/                exported SavedModel(s) of the best trial(s) + metadata

Example:
    >>> cfg = TuneConfig(clip_grid=(0.1, 1.0), lr_grid=(0.5, 2.0),
    ...                  tuning_dir="/tmp/t")                      # doctest: +SKIP
    >>> report = run_search(cfg)                                   # doctest: +SKIP
    >>> report["privacy"]["composition"]["epsilon"]                # doctest: +SKIP

CLI::

    python -m tfdprobust.tune --noise=7.1 --clip_grid=0.1,1,10 --lr_grid=0.1,1,10 \\
        --objective=robust --tuning_dir=tuning --data_dir=../shared/data

Distributed (Keras Tuner's own chief/worker mode; same flags in every process)::

    KERASTUNER_TUNER_ID=chief   KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 python -m tfdprobust.tune ...
    KERASTUNER_TUNER_ID=tuner0  KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 python -m tfdprobust.tune ...
    KERASTUNER_TUNER_ID=tuner1  KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8000 python -m tfdprobust.tune ...
"""

import csv
import dataclasses
import io
import itertools
import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from tfdprobust import accounting, attacks, export
from tfdprobust.errors import UsageError, require
from tfdprobust.registry import Registry

OBJECTIVES = ("robust", "natural", "both")
NATURAL = "val_natural_accuracy"
ROBUST = "val_robust_accuracy"
CONFIG_FILE = "search_config.json"
LEDGER_FILE = "ledger.jsonl"
WEIGHTS_FILE = "net.weights.h5"


# --------------------------------------------------------------------------- grids
def parse_grid(text: str, flag: str) -> Tuple[float, ...]:
    """Parses ``"0.1,1,10"`` or ``"logspace:0.01:10:4"`` into a sorted tuple of positive floats.

    Example:
        >>> parse_grid("1, 0.1,10", "--clip_grid")
        (0.1, 1.0, 10.0)
        >>> parse_grid("logspace:0.1:10:3", "--lr_grid")
        (0.1, 1.0, 10.0)
    """
    text = (text or "").strip()
    require(text, f"{flag} is empty; give comma-separated positive values, e.g. {flag}=0.1,1,10")
    try:
        if text.startswith("logspace:"):
            _, lo, hi, num = text.split(":")
            lo, hi, n = float(lo), float(hi), int(num)
            require(lo > 0 and hi > 0 and n >= 1,
                    f"{flag}={text}: logspace needs positive ends and a count >= 1, e.g. logspace:0.01:10:4")
            values = [float(f"{v:.6g}") for v in np.geomspace(lo, hi, n)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except UsageError:
        raise
    except ValueError:
        raise UsageError(f"{flag}={text!r} is not a list of numbers; use e.g. {flag}=0.1,1,10 "
                         f"or {flag}=logspace:0.01:10:4") from None
    return validate_grid(values, flag)


def validate_grid(values: Sequence[float], flag: str) -> Tuple[float, ...]:
    """Checks a grid: non-empty, finite, positive, no duplicates; returns it sorted."""
    values = tuple(float(v) for v in values)
    require(len(values) > 0, f"{flag} is empty; give comma-separated positive values, e.g. {flag}=0.1,1,10")
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    require(not bad, f"{flag} must hold only finite values > 0, got {', '.join(f'{v:g}' for v in bad)}")
    require(len(set(values)) == len(values), f"{flag} has duplicate values: {', '.join(f'{v:g}' for v in values)}")
    return tuple(sorted(values))


# --------------------------------------------------------------------------- tuners
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
    # so its epoch budget is ignored here (see TUNERS note) and max_epochs only sizes brackets.
    return kt.oracles.HyperbandOracle(objective=objective, hyperparameters=hps, max_epochs=max(3, max_trials or 3),
                                      seed=seed, tune_new_entries=False, allow_new_entries=False)


TUNERS.register("grid")(TunerSpec(_grid, budgeted=False, note="every (R, eta) pair once"))
TUNERS.register("random")(TunerSpec(_random, budgeted=True, note="--max_trials pairs drawn from the grid"))
TUNERS.register("bayesian")(TunerSpec(_bayesian, budgeted=True, note="Gaussian-process BO over the grid"))
TUNERS.register("hyperband")(TunerSpec(
    _hyperband, budgeted=True,
    note="brackets only; every trial trains the fixed --epochs so epsilon stays the same"))


# --------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """A search over (R, eta) at fixed sigma / epochs / batch size / sampling.

    Attributes:
        run: the base :class:`~tfdprobust.training.RunConfig`; its ``l2_clip`` and
            ``learning_rate`` are replaced per trial, everything else is shared.
            ``run.eval_attack`` is used once, on the test set, for the exported best model.
        clip_grid: candidate clipping norms R (positive, sorted).
        lr_grid: candidate learning rates eta (positive, sorted).
        objective: ``robust`` (PGD accuracy), ``natural`` or ``both`` (their sum).
        tuner: registry key: grid, random, bayesian, hyperband.
        max_trials: trial budget of random / bayesian / hyperband (grid: all pairs).
        tuning_dir: parent folder of the search.
        project: sub-folder name of this search.
        validation_examples: images carved out of the private training data to score trials.
        val_attack: the attack that measures validation robust accuracy.
        nondp_reference: also train non-DP references (one per eta) for the Pareto plot.
        nondp_lr_grid: the references' learning rates (``None``: ``lr_grid``); non-DP SGD
            averages unclipped gradients, so its good eta is usually smaller than DP-SGD's.
        export_best: how many best DP trials to export as SavedModels (0 = none).
        overwrite: delete an existing search in ``tuning_dir/project`` first.
        mean_trials_selection: the mean of the Poisson number of trials in the
            private-selection figure (``None``: the number of grid trials).
    """

    run: Any = None
    clip_grid: Tuple[float, ...] = (0.1, 1.0, 10.0)
    lr_grid: Tuple[float, ...] = (0.1, 1.0, 10.0)
    objective: str = "robust"
    tuner: str = "grid"
    max_trials: Optional[int] = None
    tuning_dir: str = "tuning"
    project: str = "search"
    validation_examples: int = 500
    val_attack: Optional[attacks.AttackConfig] = attacks.AttackConfig(
        name="pgd_linf", eps=0.1, steps=10, random_start=True)
    nondp_reference: bool = False
    nondp_lr_grid: Optional[Tuple[float, ...]] = None
    export_best: int = 1
    overwrite: bool = False
    mean_trials_selection: Optional[float] = None

    def __post_init__(self):
        from tfdprobust import training

        if self.run is None:
            object.__setattr__(self, "run", training.RunConfig.make(export_dir=None, verbose=0))
        object.__setattr__(self, "clip_grid", validate_grid(self.clip_grid, "--clip_grid"))
        object.__setattr__(self, "lr_grid", validate_grid(self.lr_grid, "--lr_grid"))
        if self.nondp_lr_grid is not None:
            object.__setattr__(self, "nondp_lr_grid", validate_grid(self.nondp_lr_grid, "--nondp_lr_grid"))
        require(self.objective in OBJECTIVES,
                f"--objective={self.objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
        require(self.tuner in TUNERS, f"--tuner={self.tuner!r} is unknown; choose one of {', '.join(TUNERS.names())}")
        spec = TUNERS.get(self.tuner)
        if spec.budgeted:
            require(self.max_trials is not None and self.max_trials >= 1,
                    f"--tuner={self.tuner} needs --max_trials >= 1 (the number of trials to run)")
        require(self.max_trials is None or self.max_trials >= 1, f"--max_trials must be >= 1, got {self.max_trials}")
        require(bool(self.tuning_dir), "--tuning_dir is empty; give a folder for the search")
        require(self.validation_examples >= 1, f"--validation_examples must be >= 1, got {self.validation_examples}")
        require(self.val_attack is not None or self.objective == "natural",
                f"--objective={self.objective} needs a validation attack; set --val_steps >= 1 and --eps > 0")
        require(self.export_best >= 0, f"--export_best must be >= 0, got {self.export_best}")
        require(self.run.train.dp.enabled, "the tuner searches DP trainings; --dp must be on (use "
                "--nondp_reference for non-private baselines)")
        require(self.run.target_epsilon is None,
                "--target_epsilon is not supported by the tuner: fix --noise so every trial has the same sigma")
        require(self.mean_trials_selection is None or self.mean_trials_selection > 0,
                f"--selection_mean_trials must be > 0, got {self.mean_trials_selection}")

    @property
    def project_dir(self) -> str:
        return os.path.join(self.tuning_dir, self.project)

    def identity(self) -> Dict[str, Any]:
        """What a resumed search must share with the stored one (see ``search_config.json``)."""
        run = self.run
        return {
            "format": "tfdprobust.tune/1",
            "clip_grid": list(self.clip_grid), "lr_grid": list(self.lr_grid),
            "objective": self.objective, "tuner": self.tuner, "max_trials": self.max_trials,
            "optimizer": run.train.optimizer, "noise_multiplier": run.train.dp.noise_multiplier,
            "dp_path": run.train.dp.path,
            "epochs": run.epochs, "batch_size": run.batch_size, "sampling": run.sampling, "delta": run.delta,
            "data": dataclasses.asdict(run.data), "model": dataclasses.asdict(run.model),
            "train_attack": dataclasses.asdict(run.train.attack) if run.train.attack else None,
            "adv_weight": run.train.adv_weight,
            "validation_examples": self.validation_examples,
            "val_attack": dataclasses.asdict(self.val_attack) if self.val_attack else None,
            "seed": run.seed,
        }


# Flag names of identity() keys, so an incompatible-dir error names what to change.
_IDENTITY_FLAGS = {"noise_multiplier": "--noise", "data": "--dataset/--data_dir/--max_train/--public_examples",
                   "model": "--model/--norm", "train_attack": "--eps/--steps", "val_attack": "--val_steps/--eps",
                   "validation_examples": "--validation_examples", "max_trials": "--max_trials"}


def check_tuning_dir(cfg: TuneConfig) -> None:
    """Refuses to resume into a folder that holds a different (or foreign) search.

    Raises:
        UsageError: naming ``--tuning_dir`` and the settings that differ.
    """
    path = os.path.join(cfg.project_dir, CONFIG_FILE)
    if cfg.overwrite or not os.path.exists(cfg.project_dir):
        return
    if not os.path.exists(path):
        require(not os.listdir(cfg.project_dir),
                f"--tuning_dir={cfg.tuning_dir}: {cfg.project_dir} exists but holds no {CONFIG_FILE}, so it "
                "is not a tfdprobust search; choose another --tuning_dir (or --project), or pass --overwrite")
        return
    with open(path) as f:
        stored = json.load(f)
    mine = json.loads(json.dumps(cfg.identity()))
    diff = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
    if diff:
        details = "; ".join(f"{_IDENTITY_FLAGS.get(k, '--' + k)}: stored {stored.get(k)!r}, now {mine.get(k)!r}"
                            for k in diff[:3])
        raise UsageError(f"--tuning_dir={cfg.tuning_dir} holds an incompatible search ({details}); resume it "
                         "with the same flags, use a new --tuning_dir, or pass --overwrite")


# --------------------------------------------------------------------------- data
@dataclasses.dataclass(frozen=True)
class SearchData:
    """The training part, the validation part (both private), test and public data."""

    train: Any
    validation: Any
    test: Any
    public: Any
    notes: Tuple[str, ...]
    describe: Dict[str, str]


def load_search_data(cfg: TuneConfig, log: Callable[[str], None] = print) -> SearchData:
    """Loads the experiment data and carves the validation split out of the training data."""
    from tfdprobust import data

    experiment = data.load_experiment_data(cfg.run.data, log=log)
    n = len(experiment.train)
    require(cfg.validation_examples < n - cfg.run.batch_size,
            f"--validation_examples={cfg.validation_examples} leaves fewer than --batch_size="
            f"{cfg.run.batch_size} of the {n} training images; lower it")
    # A fixed permutation, so a resumed or distributed search splits identically.
    order = np.random.default_rng(cfg.run.seed + 1).permutation(n)
    validation = experiment.train.take(order[:cfg.validation_examples],
                                       f", {cfg.validation_examples} held out for validation")
    train = experiment.train.take(order[cfg.validation_examples:],
                                  f", {n - cfg.validation_examples} used for training")
    describe = dict(experiment.describe(), train=train.source, validation=validation.source)
    return SearchData(train, validation, experiment.test, experiment.public, tuple(experiment.notes), describe)


# --------------------------------------------------------------------------- one trial
def trial_config(cfg: TuneConfig, l2_clip: float, learning_rate: float, dp: bool = True):
    """The RunConfig of one trial: the base config with R and eta replaced."""
    run = cfg.run
    dp_cfg = dataclasses.replace(run.train.dp, l2_clip=l2_clip, enabled=dp)
    train = dataclasses.replace(run.train, learning_rate=learning_rate, dp=dp_cfg)
    return dataclasses.replace(run, train=train)


def score(metrics: Dict[str, float], objective: str) -> float:
    """The scalar that ranks trials (``both``: natural + robust, as Keras Tuner sums objectives)."""
    return {"robust": lambda: metrics[ROBUST], "natural": lambda: metrics[NATURAL],
            "both": lambda: metrics[ROBUST] + metrics[NATURAL]}[objective]()


def train_and_validate(cfg: TuneConfig, run_cfg, sd: SearchData) -> Tuple[Any, Dict[str, Any]]:
    """Trains one trial on the training part; scores it on the validation part.

    Returns:
        ``(net, record)`` where ``record`` has R, eta, epsilon, accuracies, steps, time.
    """
    from tfdprobust import train_step, training

    n = len(sd.train)
    spec = training.accounting_spec(run_cfg, n) if run_cfg.train.dp.enabled else None
    start = time.time()
    # training.train draws fresh secret noise and batches for every trial.
    trained = training.train(run_cfg, sd.train, sd.public, spec, log=lambda message: None)
    trainer, steps = trained.trainer, trained.steps
    natural = train_step.accuracy(trainer.net, sd.validation.x, sd.validation.y)
    robust = (train_step.accuracy(trainer.net, sd.validation.x, sd.validation.y, cfg.val_attack)
              if cfg.val_attack is not None else float("nan"))
    dp = run_cfg.train.dp
    record = {
        "dp": dp.enabled, "optimizer": run_cfg.train.optimizer,
        "l2_clip": dp.l2_clip if dp.enabled else None, "learning_rate": run_cfg.train.learning_rate,
        "noise_multiplier": dp.noise_multiplier if dp.enabled else 0.0,
        "epsilon": accounting.epsilon(spec.replace(steps=steps)) if dp.enabled else math.inf,
        NATURAL: natural, ROBUST: robust, "steps": steps, "seconds": time.time() - start,
    }
    return trainer.net, record


# --------------------------------------------------------------------------- HParams logs
def _hparams_domain(cfg: TuneConfig):
    from tensorboard.plugins.hparams import api as hp

    return {
        "l2_clip": hp.HParam("l2_clip", hp.Discrete(list(cfg.clip_grid) + [0.0]), display_name="R (clip; 0 = no DP)"),
        "learning_rate": hp.HParam("learning_rate", hp.Discrete(sorted(set(cfg.lr_grid) | set(cfg.nondp_lr_grid or ()))),
                                   display_name="eta"),
        "optimizer": hp.HParam("optimizer", display_name="optimizer"),
        "dp": hp.HParam("dp", hp.Discrete([True, False]), display_name="DP"),
        "noise_multiplier": hp.HParam("noise_multiplier", display_name="sigma"),
    }


def write_hparams_config(cfg: TuneConfig, logdir: str) -> None:
    """The experiment-level HParams config, so the dashboard lists columns in order."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    with tf.summary.create_file_writer(logdir).as_default():
        hp.hparams_config(
            hparams=list(_hparams_domain(cfg).values()),
            metrics=[hp.Metric("epsilon", display_name="epsilon"),
                     hp.Metric(NATURAL, display_name="natural acc (val)"),
                     hp.Metric(ROBUST, display_name="robust acc (val)")])


def write_trial_hparams(logdir: str, name: str, record: Dict[str, Any]) -> None:
    """One HParams session: R, eta, optimizer, DP, sigma -> epsilon, natural, robust accuracy."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    values = {"l2_clip": record["l2_clip"] or 0.0, "learning_rate": record["learning_rate"],
              "optimizer": record["optimizer"], "dp": bool(record["dp"]),
              "noise_multiplier": record["noise_multiplier"]}
    # inf does not survive the HParams protos well; non-DP runs log epsilon = -1 (documented).
    eps = record["epsilon"] if math.isfinite(record["epsilon"]) else -1.0
    writer = tf.summary.create_file_writer(os.path.join(logdir, name))
    with writer.as_default():
        hp.hparams(values, trial_id=name)
        tf.summary.scalar("epsilon", eps, step=0)
        tf.summary.scalar(NATURAL, record[NATURAL], step=0)
        tf.summary.scalar(ROBUST, record[ROBUST], step=0)
    writer.close()


# --------------------------------------------------------------------------- Keras Tuner
def _make_tuner_class():
    import keras_tuner as kt

    class PrivateRobustTuner(kt.engine.base_tuner.BaseTuner):
        """Runs one DP + adversarial training per trial; returns validation accuracies."""

        def __init__(self, cfg: TuneConfig, sd: Optional[SearchData], log, on_trial_end_hook, **kwargs):
            self.cfg, self.sd, self.log, self.hook = cfg, sd, log, on_trial_end_hook
            super().__init__(**kwargs)

        def run_trial(self, trial, *args, **kwargs):
            cfg, hps = self.cfg, trial.hyperparameters
            r, lr = float(hps.get("l2_clip")), float(hps.get("learning_rate"))
            # The ledger line goes first: an interrupted trial has still touched the data.
            _append_ledger(cfg, {"trial_id": trial.trial_id, "tuner_id": self.tuner_id, "l2_clip": r,
                                 "learning_rate": lr, "time": time.time()})
            self.log(f"trial {trial.trial_id}: R={r:g} eta={lr:g} ({cfg.run.train.optimizer}, "
                     f"sigma={cfg.run.train.dp.noise_multiplier:g})")
            net, record = train_and_validate(cfg, trial_config(cfg, r, lr), self.sd)
            record["trial_id"] = trial.trial_id
            trial_dir = self.get_trial_dir(trial.trial_id)
            os.makedirs(trial_dir, exist_ok=True)
            net.save_weights(os.path.join(trial_dir, WEIGHTS_FILE))
            export.write_json_atomic(os.path.join(trial_dir, "result.json"), record)
            write_trial_hparams(os.path.join(cfg.project_dir, "logs"), f"trial_{trial.trial_id}", record)
            self.log(f"trial {trial.trial_id}: natural {record[NATURAL]:.4f}  robust {record[ROBUST]:.4f}  "
                     f"epsilon {record['epsilon']:.4g}  ({record['seconds']:.0f} s)")
            return {NATURAL: record[NATURAL], ROBUST: record[ROBUST]}

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


def make_tuner(cfg: TuneConfig, sd: Optional[SearchData], log=print, on_trial_end=None):
    """The Keras Tuner for ``cfg`` (reloads an existing search unless ``cfg.overwrite``)."""
    import keras_tuner as kt

    hps = kt.HyperParameters()
    hps.Choice("l2_clip", list(cfg.clip_grid), ordered=True)
    hps.Choice("learning_rate", list(cfg.lr_grid), ordered=True)
    oracle = TUNERS.get(cfg.tuner).make_oracle(_objective(cfg.objective), hps, cfg.max_trials, cfg.run.seed)
    tuner_class = _make_tuner_class()
    return tuner_class(cfg, sd, log, on_trial_end, oracle=oracle, directory=cfg.tuning_dir,
                       project_name=cfg.project, overwrite=cfg.overwrite)


def _append_ledger(cfg: TuneConfig, entry: Dict[str, Any]) -> None:
    # One short line per O_APPEND write: safe across local worker processes.
    with open(os.path.join(cfg.project_dir, LEDGER_FILE), "a") as f:
        f.write(json.dumps(entry) + "\n")


def read_ledger(project_dir: str) -> List[Dict[str, Any]]:
    path = os.path.join(project_dir, LEDGER_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------- privacy of the search
def search_privacy(cfg: TuneConfig, num_train: int, executions: int) -> Dict[str, Any]:
    """The privacy cost of the search on the private data.

    * ``per_trial``: epsilon of one trial (the same for all: sigma, steps, q are fixed).
    * ``composition``: ``executions`` trainings on the same data, composed by RDP
      (:func:`tfdprobust.accounting.compose`). This covers *everything* the search
      releases: every trial's model and validation scores, the table and the plots.
    * ``private_selection``: Papernot & Steinke (ICLR 2022, "Hyperparameter tuning with
      Renyi differential privacy"), through ``dp_accounting.RepeatAndSelectDpEvent``
      with a Poisson number of trials of mean ``mu``. It is a **planning figure**: it
      would be the cost of releasing only the best trial *if* the number of trials were
      drawn as K ~ Poisson(mu), each trial's (R, eta) drawn independently at random, and
      nothing but the winner (its model and score) were released. A grid search with a
      fixed K that publishes every trial does not meet these assumptions, so the
      composition figure is the guarantee of this run.
    """
    import dp_accounting

    from tfdprobust import training

    spec = training.accounting_spec(cfg.run, num_train)
    per_trial = accounting.epsilon(spec)
    k = max(executions, 1)
    composed = accounting.epsilon_of_event(accounting.compose(spec, k), spec.delta)
    mu = cfg.mean_trials_selection or float(len(cfg.clip_grid) * len(cfg.lr_grid))
    selection_event = dp_accounting.dp_event.RepeatAndSelectDpEvent(accounting.dp_event(spec), mu, math.inf)
    selected = accounting.epsilon_of_event(selection_event, spec.delta)
    return {
        "delta": spec.delta, "num_train_examples": num_train, "steps_per_trial": spec.total_steps,
        "noise_multiplier": spec.noise_multiplier, "sampling": spec.sampling,
        "per_trial": {"epsilon": per_trial, "guarantee": accounting.guarantee_statement(spec)},
        "composition": {
            "trials": k, "epsilon": composed,
            "statement": (f"({composed:.4g}, {spec.delta:g})-DP for the whole search: RDP composition of "
                          f"{k} trial executions on the same private data (every execution that started "
                          "counts, including interrupted or failed ones). Covers every released trial "
                          "result, the table, the plots and all models."),
        },
        "private_selection": {
            "method": "Papernot & Steinke 2022, Poisson number of trials (dp_accounting.RepeatAndSelectDpEvent)",
            "mean_trials": mu, "epsilon": selected,
            "applies_to_this_run": False,
            "assumptions": ("number of trials K ~ Poisson(mean_trials) drawn secretly; each trial's (R, eta) "
                            "drawn independently from a fixed distribution; only the best trial (model and "
                            "score) is released, none of the others, no table or plots. This grid search has "
                            "a fixed K and publishes every trial, so it does NOT meet them: the figure is "
                            "what a search run that way would cost, for planning only."),
        },
    }


# --------------------------------------------------------------------------- results, table, plots
COLUMNS = ("trial_id", "dp", "optimizer", "l2_clip", "learning_rate", "noise_multiplier", "epsilon",
           NATURAL, ROBUST, "score", "steps", "seconds")


def collect_trials(cfg: TuneConfig) -> List[Dict[str, Any]]:
    """Results of completed DP trials (from trial folders) and non-DP references."""
    rows = []
    if os.path.isdir(cfg.project_dir):
        for name in sorted(os.listdir(cfg.project_dir)):
            path = os.path.join(cfg.project_dir, name, "result.json")
            if name.startswith("trial_") and os.path.exists(path):
                with open(path) as f:
                    rows.append(json.load(f))
    ref_dir = os.path.join(cfg.project_dir, "reference")
    if os.path.isdir(ref_dir):
        for name in sorted(os.listdir(ref_dir)):
            if name.endswith(".json"):
                with open(os.path.join(ref_dir, name)) as f:
                    rows.append(json.load(f))
    for row in rows:
        row["score"] = score(row, cfg.objective)
    return rows


def write_table(rows: List[Dict[str, Any]], csv_path: str, md_path: str) -> None:
    """Every trial as CSV and as a markdown table (atomic writes)."""
    def fmt(v):
        if isinstance(v, float):
            return "inf" if math.isinf(v) else f"{v:.4g}"
        return "-" if v is None else str(v)

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row.get(c) for c in COLUMNS])
    _write_text_atomic(csv_path, buf.getvalue())
    head = ["trial", "DP", "optimizer", "R", "eta", "sigma", "epsilon", "natural (val)", "robust (val)",
            "score", "steps", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in COLUMNS) + " |")
    _write_text_atomic(md_path, "\n".join(lines) + "\n")


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _save_figure(fig, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def plot_heatmaps(rows: List[Dict[str, Any]], cfg: TuneConfig, path: str, title: str = "") -> str:
    """Natural and robust validation accuracy over the (R, eta) grid, side by side (Fig. 5).

    Rows are R (small at the top), columns eta (small at the left); untried cells are grey.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dp_rows = [r for r in rows if r["dp"]]
    clips, lrs = list(cfg.clip_grid), list(cfg.lr_grid)
    panels = [(NATURAL, "natural accuracy (validation)"), (ROBUST, "robust accuracy (validation, PGD)")]
    fig, axes = plt.subplots(1, 2, figsize=(4.2 + 1.1 * len(lrs) * 2, 1.0 + 0.9 * len(clips)), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        grid = np.full((len(clips), len(lrs)), np.nan)
        for r in dp_rows:
            grid[clips.index(r["l2_clip"]), lrs.index(r["learning_rate"])] = r[key]
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for i in range(len(clips)):
            for j in range(len(lrs)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{100 * grid[i, j]:.1f}%", ha="center", va="center", fontsize=9,
                            color="white" if grid[i, j] < 0.6 else "black")
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(clips)), [f"{v:g}" for v in clips])
        ax.set_xlabel("learning rate $\\eta$")
        ax.set_ylabel("clipping norm $R$")
        ax.set_title(label, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point beats in both coordinates (max, max), by x.

    Example:
        >>> pareto_front([(0.9, 0.1), (0.8, 0.5), (0.7, 0.4), (0.5, 0.6)])
        [3, 1, 0]
    """
    front = [i for i, (x, y) in enumerate(points)
             if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(rows: List[Dict[str, Any]], path: str, title: str = "") -> str:
    """Natural vs robust validation accuracy, DP trials beside non-DP ones, with fronts (Fig. 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    groups = [(True, "DP trials", "tab:blue", "x"), (False, "non-DP reference", "tab:green", "o")]
    for dp, label, color, marker in groups:
        sub = [r for r in rows if bool(r["dp"]) == dp]
        if not sub:
            continue
        pts = [(r[NATURAL], r[ROBUST]) for r in sub]
        ax.scatter(*zip(*pts), c=color, marker=marker, s=60, label=label, zorder=3)
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color=color, lw=1.2, ls="--",
                label=f"{label}: Pareto front", zorder=2)
        # Only front points get labels: on a 3x3 grid the dominated ones pile up unreadably.
        for r, (x, y) in [(sub[i], pts[i]) for i in front]:
            text = f"R={r['l2_clip']:g}, $\\eta$={r['learning_rate']:g}" if dp else f"$\\eta$={r['learning_rate']:g}"
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    every = [(r[NATURAL], r[ROBUST]) for r in rows]
    if every:
        best = pareto_front(every)
        ax.scatter([every[i][0] for i in best], [every[i][1] for i in best], s=160, facecolors="none",
                   edgecolors="black", label="front of all trials", zorder=4)
    ax.set_xlabel("natural accuracy (validation)")
    ax.set_ylabel("robust accuracy (validation, PGD)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- non-DP references
def run_references(cfg: TuneConfig, sd: SearchData, log=print) -> None:
    """Non-DP trainings, one per eta (R does not apply), resumable: finished ones are skipped.

    They train on the same private data, so their numbers are **not** private.
    """
    ref_dir = os.path.join(cfg.project_dir, "reference")
    os.makedirs(ref_dir, exist_ok=True)
    for lr in cfg.nondp_lr_grid or cfg.lr_grid:
        path = os.path.join(ref_dir, f"nondp_lr{lr:g}.json")
        if os.path.exists(path):
            continue
        log(f"non-DP reference: eta={lr:g}")
        _, record = train_and_validate(cfg, trial_config(cfg, cfg.run.train.dp.l2_clip, lr, dp=False), sd)
        record["trial_id"] = f"nondp_lr{lr:g}"
        write_trial_hparams(os.path.join(cfg.project_dir, "logs"), record["trial_id"], record)
        export.write_json_atomic(path, record)
        log(f"non-DP reference eta={lr:g}: natural {record[NATURAL]:.4f}  robust {record[ROBUST]:.4f}")


# --------------------------------------------------------------------------- export
def export_best(cfg: TuneConfig, tuner, sd: SearchData, privacy: Dict[str, Any], log=print) -> List[str]:
    """Exports the best ``cfg.export_best`` DP trials with the training CLI's metadata + search privacy."""
    from tfdprobust import models, training

    paths = []
    for rank, trial in enumerate(tuner.oracle.get_best_trials(cfg.export_best), start=1):
        trial_dir = tuner.get_trial_dir(trial.trial_id)
        with open(os.path.join(trial_dir, "result.json")) as f:
            record = json.load(f)
        run_cfg = trial_config(cfg, record["l2_clip"], record["learning_rate"])
        model_cfg = dataclasses.replace(run_cfg.model, input_shape=tuple(sd.train.x.shape[1:]))
        net = models.build_model(model_cfg, seed=run_cfg.seed)
        net.load_weights(os.path.join(trial_dir, WEIGHTS_FILE))
        log(f"evaluating best #{rank} (trial {trial.trial_id}) once on {len(sd.test)} test images")
        metrics = training.evaluate_net(net, sd.test, run_cfg.eval_attack, verbose=0, log=log)
        spec = training.accounting_spec(run_cfg, len(sd.train)).replace(steps=record["steps"])
        result = _metadata(run_cfg, sd, record, spec, metrics, privacy, rank, trial.trial_id)
        out = os.path.join(cfg.project_dir, "best", f"rank{rank}-trial{trial.trial_id}")
        path = export.export_model(net, out, result)
        export.write_json_atomic(path + ".json", dict(result, export_path=path, results_path=path + ".json"))
        paths.append(path)
    return paths


def _metadata(run_cfg, sd, record, spec, metrics, privacy, rank, trial_id) -> Dict[str, Any]:
    """The same keys as :func:`tfdprobust.training.run` writes, plus the search block."""
    from tfdprobust import training

    dp = run_cfg.train.dp
    return {
        "dataset": run_cfg.data.dataset, "model": dataclasses.asdict(run_cfg.model),
        "data": sd.describe, "data_notes": list(sd.notes),
        "num_train_examples": len(sd.train), "num_test_examples": len(sd.test),
        "epochs": run_cfg.epochs, "steps": record["steps"], "batch_size": run_cfg.batch_size,
        "sampling": run_cfg.sampling, "dp": True, "dp_path": dp.path,
        "noise_multiplier": dp.noise_multiplier, "l2_clip": dp.l2_clip, "delta": run_cfg.delta,
        "target_epsilon": None, "epsilon": accounting.epsilon(spec), "epsilon_per_epoch": [],
        "guarantee": accounting.guarantee_statement(spec) + "; this is ONE trial: the search as a "
                     "whole costs search.privacy.composition.epsilon",
        "optimizer": run_cfg.train.optimizer, "learning_rate": run_cfg.train.learning_rate,
        "train_attack": dataclasses.asdict(run_cfg.train.attack) if run_cfg.train.robust else None,
        "adv_weight": run_cfg.train.adv_weight if run_cfg.train.robust else 0.0,
        "eval_attack": dataclasses.asdict(run_cfg.eval_attack) if run_cfg.eval_attack else None,
        "history": {}, "train_seconds": record["seconds"], "seed": run_cfg.seed,
        "versions": training.package_versions(), **metrics,
        "search": {"rank": rank, "trial_id": trial_id, "num_validation_examples": len(sd.validation),
                   NATURAL: record[NATURAL], ROBUST: record[ROBUST], "privacy": privacy},
    }


# --------------------------------------------------------------------------- the whole search
def run_search(cfg: TuneConfig, log: Callable[[str], None] = print, on_trial_end=None) -> Optional[Dict[str, Any]]:
    """Runs (or resumes) the search, then writes the table, plots, privacy cost and exports.

    In Keras Tuner's distributed mode only the chief reports; workers return ``None``.

    Args:
        on_trial_end: called with each finished Keras Tuner trial (tests use it to
            interrupt a search).

    Returns:
        The report dictionary (also written to ``search_results.json``).
    """
    from keras_tuner.src.distribute import utils as dist_utils

    check_tuning_dir(cfg)
    distributed = dist_utils.has_chief_oracle()
    chief = dist_utils.is_chief_oracle()
    if cfg.overwrite and not (distributed and not chief) and os.path.exists(cfg.project_dir):
        import shutil

        shutil.rmtree(cfg.project_dir)
    os.makedirs(cfg.project_dir, exist_ok=True)
    if not os.path.exists(os.path.join(cfg.project_dir, CONFIG_FILE)):
        export.write_json_atomic(os.path.join(cfg.project_dir, CONFIG_FILE), cfg.identity())
        write_hparams_config(cfg, os.path.join(cfg.project_dir, "logs"))

    sd = load_search_data(cfg, log=log)
    n = len(sd.train)
    privacy_now = search_privacy(cfg, n, 1)
    log(f"search: {cfg.tuner} over R in {list(cfg.clip_grid)} x eta in {list(cfg.lr_grid)} "
        f"({cfg.run.train.optimizer}), objective={cfg.objective} on {len(sd.validation)} validation images "
        f"carved from the training data")
    log(f"fixed for every trial: sigma={cfg.run.train.dp.noise_multiplier:g}, {cfg.run.epochs} epoch(s), "
        f"batch {cfg.run.batch_size}, {cfg.run.sampling} sampling, N={n} -> every trial has epsilon = "
        f"{privacy_now['per_trial']['epsilon']:.4g} at delta={cfg.run.delta:g}")

    tuner = make_tuner(cfg, sd, log, on_trial_end)
    tuner.search()
    if distributed and not chief:
        log(f"worker {tuner.tuner_id}: no more trials; the chief writes the report")
        return None
    if cfg.nondp_reference:
        run_references(cfg, sd, log)
    return report(cfg, tuner, sd, log)


def report(cfg: TuneConfig, tuner, sd: SearchData, log=print) -> Dict[str, Any]:
    """Table, heatmaps, Pareto plot, privacy of the search, exports; returns the report."""
    rows = collect_trials(cfg)
    dp_rows = [r for r in rows if r["dp"]]
    require(dp_rows, f"--tuning_dir={cfg.tuning_dir}: no trial finished; see the errors above")
    executions = sum(1 for _ in read_ledger(cfg.project_dir))
    privacy = search_privacy(cfg, len(sd.train), executions)
    pd = cfg.project_dir
    write_table(rows, os.path.join(pd, "results.csv"), os.path.join(pd, "results.md"))
    eps = privacy["per_trial"]["epsilon"]
    title = (f"{cfg.run.data.dataset}, {cfg.run.train.optimizer}, sigma={cfg.run.train.dp.noise_multiplier:g}, "
             f"epsilon={eps:.3g} per trial")
    heatmap = plot_heatmaps(rows, cfg, os.path.join(pd, "heatmap.png"), title)
    pareto = plot_pareto(rows, os.path.join(pd, "pareto.png"), title)
    exported = export_best(cfg, tuner, sd, privacy, log) if cfg.export_best else []
    best = max(dp_rows, key=lambda r: r["score"])
    out = {"config": cfg.identity(), "trials": rows, "privacy": privacy, "best_trial": best,
           "heatmap": heatmap, "pareto": pareto, "table_csv": os.path.join(pd, "results.csv"),
           "table_md": os.path.join(pd, "results.md"), "tensorboard_logdir": os.path.join(pd, "logs"),
           "exported": exported, "nondp_reference_is_private": False}
    export.write_json_atomic(os.path.join(pd, "search_results.json"), out)
    log(summary(out))
    return out


def summary(out: Dict[str, Any]) -> str:
    """The printed summary: best trial, privacy of the search, where the files are."""
    p, best = out["privacy"], out["best_trial"]
    comp, sel = p["composition"], p["private_selection"]
    lines = [
        f"trials finished     : {sum(1 for r in out['trials'] if r['dp'])} DP"
        + (f" + {sum(1 for r in out['trials'] if not r['dp'])} non-DP reference" if any(
            not r["dp"] for r in out["trials"]) else ""),
        f"best DP trial       : {best['trial_id']}  R={best['l2_clip']:g} eta={best['learning_rate']:g}  "
        f"natural {best[NATURAL]:.4f}  robust {best[ROBUST]:.4f} (validation)",
        f"epsilon per trial   : {p['per_trial']['epsilon']:.4g} at delta={p['delta']:g} (identical for "
        f"every trial: sigma={p['noise_multiplier']:g}, {p['steps_per_trial']} steps, {p['sampling']} sampling, "
        f"N={p['num_train_examples']})",
        f"search, composition : epsilon = {comp['epsilon']:.4g} for {comp['trials']} trial executions "
        "(covers everything released: all trials, table, plots)",
        f"private selection   : epsilon = {sel['epsilon']:.4g} (Papernot & Steinke 2022, K ~ Poisson("
        f"{sel['mean_trials']:g})) -- planning figure only, NOT this run's guarantee: it needs a random "
        "number of randomly drawn trials and releasing only the winner",
    ]
    if any(not r["dp"] for r in out["trials"]):
        lines.append("non-DP reference    : trained on the same private data; their numbers are NOT private")
    lines += [f"table               : {out['table_csv']}, {out['table_md']}",
              f"heatmaps            : {out['heatmap']}", f"Pareto plot         : {out['pareto']}",
              f"TensorBoard HParams : tensorboard --logdir {out['tensorboard_logdir']} --host 127.0.0.1"]
    for path in out["exported"]:
        lines.append(f"SavedModel          : {path} (+ .json)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def _define_flags():
    from absl import flags

    f = flags
    f.DEFINE_string("dataset", "mnist", "Private dataset.")
    f.DEFINE_string("data_dir", None, "Folder with raw MNIST IDX / KMNIST npz files (e.g. ../shared/data).")
    f.DEFINE_string("tfds_dir", None, "TensorFlow Datasets data dir.")
    f.DEFINE_string("public_dataset", "kmnist", "Dataset of the public normalization batch.")
    f.DEFINE_integer("public_examples", 128, "Size of the public normalization batch.")
    f.DEFINE_integer("max_train", 0, "Use at most this many training images (0 = all), before the validation split.")
    f.DEFINE_integer("max_test", 1000, "Test images for the final evaluation of the exported model(s) (0 = all).")
    f.DEFINE_integer("validation_examples", 500, "Training images held out to score trials (never trained on).")
    f.DEFINE_string("model", "cnn", "Network: cnn or lenet.")
    f.DEFINE_string("norm", "public_bn", "none, public_bn or group.")
    f.DEFINE_string("activation", "relu", "relu or tanh.")
    f.DEFINE_string("clip_grid", "logspace:0.1:10:3", "Clipping norms R: comma list or logspace:lo:hi:n.")
    f.DEFINE_string("lr_grid", "logspace:0.1:10:3", "Learning rates eta: comma list or logspace:lo:hi:n.")
    f.DEFINE_string("objective", "robust", "robust (PGD accuracy), natural, or both (sum).")
    f.DEFINE_string("optimizer", "sgd", "sgd, momentum (heavy ball), adam, rmsprop or adagrad.")
    f.DEFINE_string("tuner", "grid", "grid, random, bayesian or hyperband.")
    f.DEFINE_integer("max_trials", None, "Trial budget for random/bayesian/hyperband.")
    f.DEFINE_string("tuning_dir", "tuning", "Parent folder of the search (resumed if it exists).")
    f.DEFINE_string("project", "search", "Search name (sub-folder of --tuning_dir).")
    f.DEFINE_boolean("overwrite", False, "Delete an existing search of that name first.")
    f.DEFINE_integer("epochs", 1, "Epochs per trial (fixed: decides epsilon).")
    f.DEFINE_integer("batch_size", 250, "Expected batch size (fixed).")
    f.DEFINE_float("noise", 7.1, "Noise multiplier sigma (fixed).")
    f.DEFINE_float("delta", 1e-5, "Target delta.")
    f.DEFINE_string("sampling", "poisson", "poisson or shuffle.")
    f.DEFINE_string("dp_path", "vectorized", "vectorized or tf_privacy.")
    f.DEFINE_float("eps", 0.1, "l_inf radius of training and validation PGD.")
    f.DEFINE_integer("steps", 5, "PGD iterations during training.")
    f.DEFINE_float("adv_weight", 1.0, "Per-example loss = (1-w) clean + w adversarial.")
    f.DEFINE_integer("val_steps", 10, "PGD iterations for the validation robust accuracy.")
    f.DEFINE_integer("eval_steps", 20, "PGD iterations for the exported model's test robust accuracy.")
    f.DEFINE_boolean("nondp_reference", True, "Also train non-DP references (one per eta) for the Pareto plot.")
    f.DEFINE_string("nondp_lr_grid", None, "Learning rates of the non-DP references (default: --lr_grid).")
    f.DEFINE_integer("export_best", 1, "Export this many best DP trials as SavedModels (0 = none).")
    f.DEFINE_float("selection_mean_trials", None, "Mean of K for the private-selection figure (default: grid size).")
    f.DEFINE_integer("seed", 0, "Seed of data split, initialization, sampling and noise (same for all trials).")
    f.DEFINE_integer("verbose", 0, "Keras verbosity per trial.")


def config_from_flags() -> TuneConfig:
    """A validated :class:`TuneConfig` from the absl flags."""
    from absl import flags

    from tfdprobust import training
    from tfdprobust.data import DataConfig
    from tfdprobust.models import ModelConfig
    from tfdprobust.train_step import DPConfig, TrainConfig

    F = flags.FLAGS
    clip_grid = parse_grid(F.clip_grid, "--clip_grid")
    lr_grid = parse_grid(F.lr_grid, "--lr_grid")
    require(F.objective in OBJECTIVES, f"--objective={F.objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
    require(F.val_steps >= 1, f"--val_steps must be >= 1, got {F.val_steps}")
    attack = attacks.AttackConfig(name="pgd_linf", eps=F.eps, steps=F.steps, random_start=True) if F.steps > 0 else None
    train = TrainConfig(optimizer=F.optimizer, learning_rate=lr_grid[0], attack=attack, adv_weight=F.adv_weight,
                        dp=DPConfig(l2_clip=clip_grid[0], noise_multiplier=F.noise, path=F.dp_path))
    run = training.RunConfig.make(
        train=train, batch_size=F.batch_size,
        data=DataConfig(dataset=F.dataset, public_dataset=F.public_dataset,
                        public_examples=F.public_examples if F.norm == "public_bn" else 0, data_dir=F.data_dir,
                        tfds_dir=F.tfds_dir, max_train=F.max_train, max_test=F.max_test, seed=F.seed),
        model=ModelConfig(name=F.model, norm=F.norm, activation=F.activation),
        epochs=F.epochs, sampling=F.sampling, delta=F.delta,
        eval_attack=attacks.AttackConfig(name="pgd_linf", eps=F.eps, steps=F.eval_steps, random_start=True),
        export_dir=None, seed=F.seed, verbose=F.verbose)
    return TuneConfig(run=run, clip_grid=clip_grid, lr_grid=lr_grid, objective=F.objective, tuner=F.tuner,
                      max_trials=F.max_trials, tuning_dir=F.tuning_dir, project=F.project,
                      validation_examples=F.validation_examples,
                      val_attack=attacks.AttackConfig(name="pgd_linf", eps=F.eps, steps=F.val_steps, random_start=True),
                      nondp_reference=F.nondp_reference,
                      nondp_lr_grid=parse_grid(F.nondp_lr_grid, "--nondp_lr_grid") if F.nondp_lr_grid else None,
                      export_best=F.export_best, overwrite=F.overwrite,
                      mean_trials_selection=F.selection_mean_trials)


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.ERROR)
    try:
        cfg = config_from_flags()
        start = time.time()
        out = run_search(cfg)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if out is not None:
        print(f"wall time           : {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
