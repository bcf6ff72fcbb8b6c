"""What defines a search: grids, the tuner, the validation mechanism, the folders.

Everything here is checked before any data is loaded or any file is written; a bad
value raises :class:`~tfdprobust.errors.UsageError` naming the flag and the fix.
"""

import dataclasses
import json
import os
from typing import Any, Dict, Optional, Tuple

from tfdprobust import attacks
from tfdprobust.errors import UsageError, require
from tfdprobust.tuning.grids import (DEFAULT_VAL_NOISE, OBJECTIVES, TUNER_NAMES, VALIDATIONS, check_destination,  # noqa: F401
                                     check_search_folder, parse_grid, require_finite, validate_grid)

NATURAL = "val_natural_accuracy"
ROBUST = "val_robust_accuracy"
CONFIG_FILE = "search_config.json"
RESULTS_FILE = "search_results.json"
WEIGHTS_FILE = "net.weights.h5"



@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """A search over (R, eta) at fixed sigma / epochs / batch size / sampling.

    Attributes:
        run: the base :class:`~tfdprobust.run_config.RunConfig`; its ``l2_clip`` and
            ``learning_rate`` are replaced per trial, everything else is shared (including
            ``accountant``, ``insecure_reproducible_noise`` and ``data.public_from_private``).
        clip_grid, lr_grid: candidate clipping norms R and learning rates eta.
        objective: ``robust``, ``natural`` or ``both`` (their sum).
        tuner: grid, random, bayesian or hyperband.
        max_trials: trial budget of random / bayesian / hyperband (grid: all pairs).
        tuning_dir: parent folder of the search; it also holds the per-data-set ledgers
            (``<tuning_dir>/.ledgers/``), which ``overwrite`` never deletes.
        project: sub-folder name of this search.
        validation: ``noisy_count`` (default) or ``public``, see :data:`VALIDATIONS`.
        val_noise: std of the Gaussian noise on each validation count (``noisy_count``).
        validation_examples: size of the validation set.
        val_attack: the attack that measures validation robust accuracy.
        nondp_reference: also train non-DP references (outside the guarantee, own table).
        nondp_lr_grid: the references' learning rates (``None``: ``lr_grid``).
        export_best: how many best DP trials to export (0 = none).
        overwrite: delete this search's folder first (the data set's ledger stays).
        new_ledger: start a new ledger for this private data set (the old one is kept
            on disk, renamed, and no longer composed); loud in the output.
        mean_trials_selection: mean of K in the private-selection planning figure.
    """

    run: Any = None
    clip_grid: Tuple[float, ...] = (0.25, 1.0, 4.0)  # centred on the training defaults (C=1, lr 4)
    lr_grid: Tuple[float, ...] = (1.0, 4.0, 16.0)
    objective: str = "robust"
    tuner: str = "grid"
    max_trials: Optional[int] = None
    tuning_dir: str = "tuning"
    project: str = "search"
    validation: str = "noisy_count"
    val_noise: float = DEFAULT_VAL_NOISE
    validation_examples: int = 500
    val_attack: Optional[attacks.AttackConfig] = attacks.AttackConfig(
        name="pgd_linf", eps=0.1, steps=10, random_start=True)
    nondp_reference: bool = False
    nondp_lr_grid: Optional[Tuple[float, ...]] = None
    export_best: int = 1
    overwrite: bool = False
    new_ledger: bool = False
    mean_trials_selection: Optional[float] = None

    def __post_init__(self):
        from tfdprobust import run_config

        if self.run is None:
            object.__setattr__(self, "run", run_config.RunConfig.make(export_dir=None, verbose=0))
        object.__setattr__(self, "clip_grid", validate_grid(self.clip_grid, "--clip_grid"))
        object.__setattr__(self, "lr_grid", validate_grid(self.lr_grid, "--lr_grid"))
        if self.nondp_lr_grid is not None:
            object.__setattr__(self, "nondp_lr_grid", validate_grid(self.nondp_lr_grid, "--nondp_lr_grid"))
            require(self.nondp_reference, "--nondp_lr_grid is set but --nondp_reference is off; pass "
                    "--nondp_reference or drop --nondp_lr_grid")
        require(self.objective in OBJECTIVES,
                f"--objective={self.objective!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
        require(self.tuner in TUNER_NAMES, f"--tuner={self.tuner!r} is unknown; choose one of {', '.join(TUNER_NAMES)}")
        if self.tuner != "grid":
            require(self.max_trials is not None and self.max_trials >= 1,
                    f"--tuner={self.tuner} needs --max_trials >= 1 (the number of trials to run)")
        require(self.max_trials is None or self.max_trials >= 1, f"--max_trials must be >= 1, got {self.max_trials}")
        require(bool(self.tuning_dir), "--tuning_dir is empty; give a folder for the search")
        require(bool(self.project) and os.sep not in self.project and not self.project.startswith("."),
                f"--project={self.project!r} must be a plain folder name (no '/', not starting with '.')")
        require(self.validation in VALIDATIONS,
                f"--validation={self.validation!r} is unknown; choose noisy_count (DP-noised counts, the "
                "default) or public (a validation set from a public source)")
        require_finite(self.val_noise, "--val_noise", 0.0)
        require(self.validation_examples >= 1, f"--validation_examples must be >= 1, got {self.validation_examples}")
        require(self.val_attack is not None or self.objective == "natural",
                f"--objective={self.objective} needs a validation attack; set --val_steps >= 1 and --eps > 0")
        require(self.export_best >= 0, f"--export_best must be >= 0, got {self.export_best}")
        run = self.run
        require(run.train.dp.enabled, "the tuner searches DP trainings; --dp must be on (use "
                "--nondp_reference for non-private baselines)")
        require_finite(run.train.dp.noise_multiplier, "--noise", 0.0)
        require(run.target_epsilon is None,
                "--target_epsilon is not supported by the tuner: fix --noise so every trial has the same sigma")
        require_finite(self.mean_trials_selection, "--selection_mean_trials", 0.0)

    @property
    def project_dir(self) -> str:
        return os.path.join(self.tuning_dir, self.project)

    @property
    def val_releases(self) -> int:
        """Validation counts released per trial: natural, plus robust if there is an attack."""
        return 1 + (self.val_attack is not None)

    def identity(self) -> Dict[str, Any]:
        """What a resumed search must share with the stored one (see ``search_config.json``)."""
        run = self.run
        return {
            "format": "tfdprobust.tune/2",
            "clip_grid": list(self.clip_grid), "lr_grid": list(self.lr_grid),
            "objective": self.objective, "tuner": self.tuner, "max_trials": self.max_trials,
            "optimizer": run.train.optimizer, "noise_multiplier": run.train.dp.noise_multiplier,
            "dp_path": run.train.dp.path, "accountant": run.accountant,
            "insecure_reproducible_noise": run.insecure_reproducible_noise,
            "epochs": run.epochs, "batch_size": run.batch_size, "sampling": run.sampling, "delta": run.delta,
            "data": dataclasses.asdict(run.data), "model": dataclasses.asdict(run.model),
            "train_attack": dataclasses.asdict(run.train.attack) if run.train.attack else None,
            "adv_weight": run.train.adv_weight,
            "validation": self.validation,
            "val_noise": self.val_noise if self.validation == "noisy_count" else None,
            "validation_examples": self.validation_examples,
            "val_attack": dataclasses.asdict(self.val_attack) if self.val_attack else None,
            "seed": run.seed,
        }


# Flag names of identity() keys, so an incompatible-dir error names what to change.
_IDENTITY_FLAGS = {"noise_multiplier": "--noise", "data": "--dataset/--data_dir/--max_train/--public_examples",
                   "model": "--model/--norm", "train_attack": "--eps/--steps", "val_attack": "--val_steps/--eps",
                   "validation_examples": "--validation_examples", "max_trials": "--max_trials"}


def has_trials(project_dir: str) -> bool:
    return os.path.isdir(project_dir) and any(n.startswith("trial_") for n in os.listdir(project_dir))


def check_tuning_dir(cfg: TuneConfig) -> None:
    """Refuses to resume into a folder that holds a different (or foreign) search.

    A stored search that never started a trial may be replaced by a corrected command.

    Raises:
        UsageError: naming ``--tuning_dir`` and the settings that differ.
    """
    path = os.path.join(cfg.project_dir, CONFIG_FILE)
    check_search_folder(cfg.tuning_dir, cfg.project, cfg.overwrite, cfg.new_ledger, CONFIG_FILE)
    if cfg.overwrite or not os.path.exists(path):
        return
    try:
        with open(path) as f:
            stored = json.load(f)
    except (OSError, ValueError) as err:
        raise UsageError(f"--tuning_dir={cfg.tuning_dir}: {path} is unreadable or corrupt ({type(err).__name__}); "
                         "pass --overwrite to start this search again, or choose another --project") from None
    mine = json.loads(json.dumps(cfg.identity()))
    diff = sorted(k for k in set(stored) | set(mine) if stored.get(k) != mine.get(k))
    if diff and has_trials(cfg.project_dir):
        details = "; ".join(f"{_IDENTITY_FLAGS.get(k, '--' + k)}: stored {stored.get(k)!r}, now {mine.get(k)!r}"
                            for k in diff[:3])
        raise UsageError(f"--tuning_dir={cfg.tuning_dir} holds an incompatible search ({details}); resume it "
                         "with the same flags, use a new --tuning_dir or --project, or pass --overwrite")
