"""The settings of one private and robust training run, and what follows from them alone.

:class:`RunConfig` holds a whole run's settings (data, network, train step, epochs,
sampling, accounting, evaluation, export) and validates them before any work starts.
The functions here derive what the settings decide without touching data: the
accounting spec (:func:`accounting_spec`), the noise calibrated to a target epsilon
(:func:`resolve_noise`), the default run name and the guarantee statement.
:func:`tfdprobust.runs.run` executes a :class:`RunConfig`.
"""

import dataclasses
import datetime
import math
import secrets
from typing import Any, Optional

from tfdprobust import accounting, attacks, distribute, randomness
from tfdprobust.data import DataConfig
from tfdprobust.errors import require
from tfdprobust.models import ModelConfig
from tfdprobust.train_step import TrainConfig


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """A whole training run.

    Attributes:
        data: which data (private, test, public).
        model: which network.
        train: optimizer, DP and attack settings of the train step.
        epochs: passes over the private data.
        batch_size: (expected) batch size.
        sampling: ``poisson`` or ``shuffle`` batches (decides the privacy guarantee).
        delta: target delta.
        accountant: ``rdp`` (default) or ``pld``; both from dp_accounting.
        target_epsilon: if set, sigma is calibrated to reach it (overrides the noise).
        eval_attack: norm (``pgd_linf``/``pgd_l2``), radius and APGD steps of the reported
            robust accuracy; restarts set the APGD restarts.
        eval_preset: the attack ensemble of :func:`tfdprobust.ensemble.robust_accuracy`
            (``quick``: APGD-CE + APGD-T; ``standard``: + FAB-T, Square).
        eval_examples: test images attacked for the robust accuracy (0 = all); clean
            accuracy always uses the whole test split.
        export_dir: parent folder of the export (``None``: do not export).
        run_name: export folder name (``None``: derived from the settings and time).
        seed: seed of initialization, data splits and the attack's random starts. It never
            touches the DP noise or the batch sampling, which come from OS entropy.
        insecure_reproducible_noise: replay noise and sampling from ``seed`` too. The run
            then has NO DP guarantee, and its output and metadata say so.
        verbose: Keras verbosity (1 = progress bars).
        tensorboard_dir: parent folder of the per-step TensorBoard logs of the clipping
            diagnostics (``<tensorboard_dir>/<run name>``); ``None``: no TensorBoard logs.
        strategy: a :data:`tfdprobust.distribute.STRATEGIES` name: ``none`` (one device),
            ``mirrored`` (local devices) or ``multi_worker`` (processes given by ``TF_CONFIG``).
            ``batch_size`` stays the *global* expected batch, the one epsilon accounts for.
        checkpoint_every: write a checkpoint (:mod:`tfdprobust.checkpoint`) every this many
            epochs and after the last one; 0 (the library default) writes none. The CLI
            defaults to 1.
        checkpoint_dir: parent folder of the run's checkpoint folder
            ``<checkpoint_dir>/<run name>.checkpoint`` (``None``: ``export_dir``).
        resume: continue the killed run ``run_name`` from its newest checkpoint; epsilon then
            also composes the steps it ran after that checkpoint.
        ledger_dir: the user-level store of the per-data-set privacy ledgers and data-roles
            keys (:mod:`tfdprobust.ledger`; ``None``: ``$XDG_DATA_HOME/tfdprobust``).
        budget: refuse, before training, a run that would take the composition of
            everything released about its data set (the ledger) above this epsilon.
        pretrain: public pre-training, weights from a file and frozen layers before DP
            training (:mod:`tfdprobust.pretrain`; ``None``: none). Outside the DP
            accounting (it touches no private data); the guarantee names it.
        precompute_features: apply the network's fixed leading feature layers (the
            scattering of ``scatternet_*``) to the data once, train the head on the features,
            and evaluate and export the full network (:mod:`tfdprobust.precompute`). Needs
            ``train.attack`` to be ``None``: adversarial training attacks the pixels.
        recipe: the name of the :mod:`tfdprobust.recipes` recipe the run follows (recorded).
        recipe_overrides: ``(flag, value)`` pairs given explicitly over the recipe's values.
    """

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    epochs: int = 1
    batch_size: int = 1000
    sampling: str = "poisson"
    delta: float = 1e-5
    accountant: str = "rdp"
    target_epsilon: Optional[float] = None
    eval_attack: Optional[attacks.AttackConfig] = attacks.AttackConfig(
        name="pgd_linf", eps=0.1, steps=100, random_start=True)
    eval_preset: str = "quick"
    eval_examples: int = 1000
    export_dir: Optional[str] = "saved_models"
    run_name: Optional[str] = None
    seed: int = 0
    insecure_reproducible_noise: bool = False
    verbose: int = 1
    tensorboard_dir: Optional[str] = None
    strategy: str = "none"
    checkpoint_every: int = 0
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    ledger_dir: Optional[str] = None
    budget: Optional[float] = None
    pretrain: Optional[Any] = None
    precompute_features: bool = False
    recipe: Optional[str] = None
    recipe_overrides: tuple = ()

    def __post_init__(self):
        require(isinstance(self.epochs, int) and self.epochs >= 1, f"--epochs must be an integer >= 1, got {self.epochs}")
        require(self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}")
        require(self.sampling in accounting.SAMPLINGS,
                f"--sampling must be one of {', '.join(accounting.SAMPLINGS)}, got {self.sampling!r}")
        require(0 < self.delta < 1, f"--delta must be in (0, 1), got {self.delta}")
        require(self.target_epsilon is None or self.target_epsilon > 0,
                f"--target_epsilon must be > 0, got {self.target_epsilon}")
        require(self.accountant in accounting.ACCOUNTANTS,
                f"--accountant must be one of {', '.join(accounting.ACCOUNTANTS.names())}, got {self.accountant!r}")
        require(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        require(self.budget is None or (math.isfinite(self.budget) and self.budget > 0),
                f"--budget must be a finite epsilon > 0, got {self.budget}")
        require(self.eval_examples >= 0, f"--eval_examples must be >= 0, got {self.eval_examples}")
        from tfdprobust import ensemble

        ensemble.get_preset(self.eval_preset)  # unknown names list the choices
        require(self.train.expected_batch_size == self.batch_size,
                "train.expected_batch_size must equal batch_size (use RunConfig.make)")
        dp = self.train.dp
        # tensorflow-privacy's optimizers divide the noisy sum by the realised batch size, a
        # count over private data under Poisson sampling (and an empty batch crashes them).
        require(not (dp.enabled and dp.path == "tf_privacy" and self.sampling == "poisson"),
                "--dp_path=tf_privacy divides by the realised Poisson batch size, which leaks it; use "
                "--dp_path=vectorized (divides by the expected size) or --sampling=shuffle")
        require(self.strategy in distribute.STRATEGIES, f"--strategy must be one of "
                f"{', '.join(distribute.STRATEGIES.names())}, got {self.strategy!r}")
        if self.strategy != "none":
            require(not (dp.enabled and dp.path == "tf_privacy"),
                    f"--strategy={self.strategy} needs --dp_path=vectorized (it all-reduces the clipped sums)")
            require(self.sampling == "poisson", f"--strategy={self.strategy} needs --sampling=poisson (each replica "
                    "Poisson-samples its own shard of the data); drop --sampling=shuffle")
            require(not dp.adaptive, f"--strategy={self.strategy} does not support --clipping=adaptive yet (its "
                    "count release is not all-reduced); use --clipping=flat, per_layer or automatic")
        self._check_checkpointing()
        if self.pretrain is not None:
            from tfdprobust import pretrain

            pretrain.check_not_private(self.pretrain, self.data.dataset)
        if self.precompute_features:
            from tfdprobust import precompute

            require(self.train.attack is None, f"--precompute_features conflicts with --attack="
                    f"{self.train.attack.name if self.train.attack else 'none'}: adversarial training needs "
                    "gradients with respect to the pixels; add --noprecompute_features (or --attack=none)")
            require(self.strategy == "none", f"--precompute_features does not support --strategy={self.strategy} "
                    "yet; use --strategy=none")
            precompute.check(self.model)
        require(not (self.precompute_features and self.pretrain is not None and self.pretrain.active),
                "--precompute_features conflicts with --public_pretrain/--pretrained_weights: the pre-trained "
                "backbone takes pixels; drop one of them")
        require((dp.insecure_noise_seed is not None) == (self.insecure_reproducible_noise and dp.enabled),
                "train.dp.insecure_noise_seed must be set exactly when insecure_reproducible_noise is "
                "(use RunConfig.make)")

    def _check_checkpointing(self) -> None:
        require(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0,
                f"--checkpoint_every must be an integer >= 0 (epochs; 0 = off), got {self.checkpoint_every}")
        require(not self.checkpoint_every or self.strategy == "none",
                f"--checkpoint_every does not support --strategy={self.strategy} yet; use --checkpoint_every=0")
        require(not self.checkpoint_every or self.export_dir is not None or self.checkpoint_dir is not None,
                "--checkpoint_every needs --checkpoint_dir (or --export_dir) to write the checkpoints to")
        require(not self.resume or self.checkpoint_every >= 1,
                "--resume needs --checkpoint_every >= 1 (the resumed run must keep counting its steps)")
        require(not self.resume or self.run_name is not None,
                "--resume needs --run_name=<the name of the interrupted run> (its log printed it)")

    @property
    def insecure_seed(self) -> Optional[int]:
        """The seed that replays noise and sampling, or ``None`` (secret, the default)."""
        return self.seed if self.insecure_reproducible_noise else None

    @classmethod
    def make(cls, train: TrainConfig = TrainConfig(), batch_size: int = 1000, **kwargs) -> "RunConfig":
        """Builds a config whose train step normalizes by ``batch_size`` and whose noise
        seed follows ``insecure_reproducible_noise``."""
        insecure = kwargs.get("insecure_reproducible_noise", False) and train.dp.enabled
        dp = dataclasses.replace(train.dp, insecure_noise_seed=kwargs.get("seed", 0) if insecure else None)
        return cls(train=dataclasses.replace(train, expected_batch_size=batch_size, dp=dp),
                   batch_size=batch_size, **kwargs)


def accounting_spec(cfg: RunConfig, num_examples: int) -> accounting.AccountingSpec:
    """The accounting spec of what :func:`run` does with ``num_examples`` private examples."""
    return accounting.AccountingSpec(
        num_examples=num_examples, batch_size=cfg.batch_size, epochs=cfg.epochs,
        noise_multiplier=cfg.train.dp.noise_multiplier, delta=cfg.delta, sampling=cfg.sampling,
        accountant=cfg.accountant, extra_noise_multipliers=cfg.train.extra_noise_multipliers)


def resolve_noise(cfg: RunConfig, num_examples: int) -> RunConfig:
    """Validates the privacy settings against the data size; calibrates sigma if asked."""
    spec = accounting_spec(cfg, num_examples)  # validates delta < 1/N and batch <= N
    if cfg.target_epsilon is None or not cfg.train.dp.enabled:
        return cfg
    sigma = accounting.calibrate_noise(cfg.target_epsilon, spec)
    dp = dataclasses.replace(cfg.train.dp, noise_multiplier=sigma)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, dp=dp))


def default_run_name(cfg: RunConfig) -> str:
    """``dataset-model-norm-<privacy>-<attack>-<time>-<random>``: the privacy part names the
    target ε when σ is calibrated to one (σ is known only after calibration), else σ."""
    if not cfg.train.dp.enabled:
        privacy = "nodp"
    elif cfg.target_epsilon is not None:
        privacy = f"dp-eps{cfg.target_epsilon:g}"
    else:
        privacy = f"dp-sigma{cfg.train.dp.noise_multiplier:g}"
    parts = [cfg.data.dataset, cfg.model.name, cfg.model.norm, privacy,
             cfg.train.attack.name if cfg.train.robust else "clean",
             datetime.datetime.now().strftime("%Y%m%d-%H%M%S"),
             secrets.token_hex(3)]  # two runs started in the same second must not collide
    return "-".join(parts)


def unprotected_examples(cfg: RunConfig) -> str:
    """The clause naming examples the DP guarantee does not cover ('' if none)."""
    if cfg.data.public_from_private and cfg.data.public_examples > 0 and cfg.model.norm == "public_bn":
        return (f"the {cfg.data.public_examples} images set aside from the private pool as public "
                "normalization data (--public_from_private)")
    return ""


def guarantee(cfg: RunConfig, spec: Optional[accounting.AccountingSpec]) -> str:
    """The guarantee statement of a run (or why there is none)."""
    if not cfg.train.dp.enabled:
        return "no differential privacy (--nodp)"
    if cfg.insecure_reproducible_noise:
        return randomness.INSECURE_WARNING
    return accounting.guarantee_statement(spec, unprotected_examples(cfg))
