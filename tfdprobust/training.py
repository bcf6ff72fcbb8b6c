"""One private and robust training run, end to end, as a library call.

:func:`run` composes the modules: load data (:mod:`~tfdprobust.data`), account
(:mod:`~tfdprobust.accounting`), build the network (:mod:`~tfdprobust.models`), train
with :class:`~tfdprobust.train_step.PrivateRobustModel`, evaluate clean and PGD accuracy
on held-out data, then export a SavedModel with its metadata (:mod:`~tfdprobust.export`)
and write a results JSON. The CLI ``python -m tfdprobust.experiments.mnist`` is a thin
wrapper around it, and the tuner reuses :func:`build_trainer`.

Example:
    >>> cfg = RunConfig(data=DataConfig(max_train=500, max_test=200, public_examples=32),
    ...                 batch_size=100, export_dir=None)           # doctest: +SKIP
    >>> result = run(cfg)                                          # doctest: +SKIP
    >>> result["epsilon"], result["clean_accuracy"]                # doctest: +SKIP
"""

import dataclasses
import datetime
import importlib.metadata
import math
import os
import secrets
import time
from typing import Any, Callable, Dict, Optional, Sequence

import tensorflow as tf

from tfdprobust import (accounting, attacks, checkpoint, data, diagnostics, distribute, export, ledger, models,
                        randomness, resources, sampling, train_step)
from tfdprobust.data import DataConfig
from tfdprobust.errors import UsageError, require
from tfdprobust.models import ModelConfig
from tfdprobust.train_step import TrainConfig

PACKAGES = ("tensorflow", "tensorflow-privacy", "dp-accounting", "cleverhans", "keras-tuner",
            "tensorflow-datasets", "numpy")


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


def build_trainer(cfg: RunConfig, public: Optional[data.ImageData], input_shape=None,
                  strategy: Optional[tf.distribute.Strategy] = None) -> train_step.PrivateRobustModel:
    """A compiled :class:`PrivateRobustModel` for ``cfg`` (fresh weights from ``cfg.seed``),
    built in ``strategy``'s scope when there is one."""
    model_cfg = cfg.model if input_shape is None else dataclasses.replace(cfg.model, input_shape=input_shape)
    public_images = public.x if public is not None and cfg.model.norm == "public_bn" else None
    noise = None
    if strategy is not None and cfg.train.dp.enabled:
        noise = distribute.noise_generator(strategy, cfg.train.dp.insecure_noise_seed)  # outside the scope
    with distribute.scope(strategy):
        if cfg.precompute_features:  # the data are features already: only the head trains
            from tfdprobust import precompute

            net = precompute.build_head(model_cfg, seed=cfg.seed)
        else:
            net = models.build_model(model_cfg, seed=cfg.seed)
        record = None
        if cfg.pretrain is not None and cfg.pretrain.active:  # public only: before any private step
            from tfdprobust import pretrain

            record = pretrain.prepare(net, cfg.pretrain, cfg.data.dataset, public_images, verbose=0)
        trainer = train_step.PrivateRobustModel(net, cfg.train, public_images, noise_generator=noise)
        trainer.public_pretraining = record
        trainer.compile()
    if strategy is not None:
        # Keras would sum the replicas' step logs; the metrics are local means and the clipping
        # diagnostics local statistics, so the live logs show the first local replica's instead.
        trainer.distribute_reduction_method = "first"
    return trainer


def package_versions() -> Dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


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


def robust_evaluation(net: tf.keras.Model, x, y, attack: attacks.AttackConfig, preset: str = "quick",
                      verbose: int = 0):
    """Robust accuracy of ``net`` from :func:`tfdprobust.ensemble.robust_accuracy`: the one
    evaluation path the training CLI, the tuner and ``tfdprobust.evaluate`` share.

    ``attack`` gives the norm (``pgd_l2`` means l2), the radius, and the APGD steps and
    restarts of the preset.
    """
    from tfdprobust import ensemble

    norm = "l2" if attack.name.endswith("l2") else "linf"
    chosen = ensemble.get_preset(preset).scaled(steps=attack.steps, restarts=attack.restarts)
    return ensemble.robust_accuracy(lambda z: net(z, training=False), x, y, preset=chosen, norm=norm,
                                    eps=(attack.eps,), verbose=verbose)


def evaluate_net(net: tf.keras.Model, test: data.ImageData, attack: Optional[attacks.AttackConfig],
                 verbose: int = 1, log: Callable[[str], None] = print, preset: str = "quick",
                 examples: int = 1000) -> Dict[str, Any]:
    """Clean accuracy on ``test`` and robust accuracy (``preset`` ensemble) on its first
    ``examples`` images, with a 95% confidence interval."""
    out: Dict[str, Any] = {"clean_accuracy": train_step.accuracy(net, test.x, test.y)}
    if attack is not None:
        n = len(test) if examples == 0 else min(examples, len(test))
        if verbose:
            log(f"evaluating the {preset} attack ensemble ({attack.name[4:]} eps={attack.eps:g}, APGD "
                f"{attack.steps} steps) on {n} test images")
        result = robust_evaluation(net, test.x[:n], test.y[:n], attack, preset, verbose=verbose)
        out.update(robust_accuracy=result.accuracy(attack.eps), robust_ci95=list(result.ci95(attack.eps)),
                   robust_preset=preset, robust_examples=n,
                   robust_after_each=[{"attack": a, "accuracy": v} for a, v in result.at(attack.eps).after_each])
    return out


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


@dataclasses.dataclass(frozen=True)
class Trained:
    """What :func:`train` returns: the trainer, Keras history, steps taken, sampler, time,
    time/memory figures and the clipping diagnostics (private: not covered by epsilon)."""

    trainer: train_step.PrivateRobustModel
    history: tf.keras.callbacks.History
    steps: int
    sampler: sampling.BatchSampler
    seconds: float
    resources: Optional[Dict[str, Any]] = None
    diagnostics: Optional[Dict[str, Any]] = None
    resumed_from: Optional[int] = None
    full_net: Optional[tf.keras.Model] = None

    @property
    def net(self) -> tf.keras.Model:
        """The network to evaluate and export: pixels -> logits (the full network when only
        the head trained on precomputed features)."""
        return self.full_net if self.full_net is not None else self.trainer.net


def train(cfg: RunConfig, private: data.ImageData, public: Optional[data.ImageData],
          spec: Optional[accounting.AccountingSpec], log: Callable[[str], None] = print,
          monitor: Optional[data.ImageData] = None, log_dir: Optional[str] = None,
          callbacks: Sequence[tf.keras.callbacks.Callback] = (),
          checkpointing: Optional[checkpoint.Checkpointing] = None) -> Trained:
    """Builds the network (weights from ``cfg.seed``) and trains it on ``private``.

    Batches come from the run's sampler, drawn from a secret generator; after the
    network is initialized, TensorFlow's global RNG is reseeded from OS entropy too, so
    nothing during training can be replayed from ``cfg.seed`` (unless the run is marked
    insecure). Used by :func:`run` and by every tuning trial, so each gets fresh noise.
    ``callbacks`` go to Keras' ``fit`` (the experiments record held-out loss with them).

    Args:
        monitor: non-private images (e.g. the test split) on which
            :class:`~tfdprobust.train_step.DivergenceGuard` watches the loss; without them
            it only checks that the weights stay finite.
        log_dir: TensorBoard folder for the per-step clipping diagnostics (``None``: none).
        checkpointing: checkpoint (and resume) as :func:`tfdprobust.checkpoint.start` set up; the
            resumed run restores its checkpoint and trains the remaining epochs.

    Raises:
        RuntimeError: if the optimizer's step count differs from the sampler's plan (the
            accountant must compose the steps that actually ran).
        UsageError: if training diverges (see :class:`~tfdprobust.train_step.DivergenceGuard`).
    """
    strategy = distribute.make_strategy(cfg.strategy)
    image_shape = private.x.shape[1:]
    if cfg.precompute_features:  # fixed per-example pre-processing: no privacy cost (tfdprobust.precompute)
        from tfdprobust import precompute

        extractor = precompute.feature_extractor(dataclasses.replace(cfg.model, input_shape=image_shape))
        log(f"precomputing the fixed {extractor.name} ({', '.join(l.name for l in extractor.layers)}) once per "
            "image: the head trains on them, the full network is evaluated and exported")
        shown = log if cfg.verbose else None
        private = precompute.transform_data(extractor, private, "the private training images", shown)
        public = precompute.transform_data(extractor, public, "the public images", shown)
        monitor = precompute.transform_data(extractor, monitor, "the monitor (test) images", shown)
    tf.keras.utils.set_random_seed(cfg.seed)
    trainer = build_trainer(cfg, public, input_shape=image_shape, strategy=strategy)
    if checkpointing is not None and checkpointing.state is not None:
        checkpoint.restore(trainer, checkpointing.state)  # weights, optimizer, clip bound; never generators
    randomness.reseed_global(cfg.insecure_seed)
    sampler = sampling.make_sampler(cfg.sampling, len(private), cfg.batch_size)
    if strategy is None:
        # A generator of its own (split off), so sampling and noise never share a stream.
        generator = randomness.noise_generator(cfg.insecure_seed).split(1)[0]
        dataset = sampler.dataset(private.x, private.y, generator)
    else:  # each replica Poisson-samples its own shard with the global rate q = B / N
        dataset = distribute.poisson_dataset(strategy, sampler, private.x, private.y, cfg.insecure_seed)
        log(f"tf.distribute: {cfg.strategy} strategy, {strategy.num_replicas_in_sync} replica(s) on "
            f"{distribute.num_workers(strategy)} worker(s); this is worker {distribute.worker_index(strategy)}")
    dp = cfg.train.dp
    log(f"training {cfg.model.name} ({cfg.model.norm}) on {len(private)} private examples: {cfg.epochs} "
        f"epoch(s) x {sampler.steps_per_epoch} steps, {cfg.sampling} batches of {cfg.batch_size}, "
        + (f"DP-SGD sigma={dp.noise_multiplier:.4g} C={dp.l2_clip:g} {dp.clipping} clipping ({dp.path} path), "
           f"{cfg.train.optimizer}" if dp.enabled else f"no DP, {cfg.train.optimizer}")
        + (f", {cfg.train.attack.name} eps={cfg.train.attack.eps:g} x{cfg.train.attack.steps} adv_weight="
           f"{cfg.train.adv_weight:g}" if cfg.train.robust else ", no adversarial training"))
    if dp.enabled and cfg.verbose:
        log("progress bar: its loss, acc, adv_acc, dropped and diag_* figures are statistics of the private "
            "training batches and are NOT covered by epsilon")
    start = time.time()
    guard = (train_step.DivergenceGuard(monitor.x, monitor.y) if monitor is not None
             else train_step.DivergenceGuard())
    monitor_resources = resources.ResourceMonitor(sampler.steps_per_epoch * cfg.batch_size)
    # Only the fast DP path computes diagnostics; other runs write no (empty) TensorBoard log.
    logs_diagnostics = dp.enabled and dp.path == "vectorized"
    diagnostics_logger = diagnostics.DiagnosticsLogger(log_dir if logs_diagnostics else None)
    extra, epochs, resumed_from = checkpoint.keras_callbacks(checkpointing, cfg.epochs, sampler.steps_per_epoch)
    if epochs:
        try:
            history = train_step.fit(trainer, dataset, sampler.steps_per_epoch, epochs, spec, verbose=cfg.verbose,
                                     callbacks=[guard, monitor_resources, diagnostics_logger, *callbacks, *extra])
        except UsageError:  # diverged (DivergenceGuard): nothing is exported, nothing worth resuming
            diagnostics_logger.abort()  # the private-batch diagnostics go too
            if checkpointing is not None:
                checkpoint.remove(checkpointing.plan.folder)
            raise
        except BaseException:
            diagnostics_logger.abort()  # nothing is exported: the private-batch diagnostics go too
            raise
    else:  # killed after its last epoch (in the evaluation): nothing left to train
        trainer.refresh_public_statistics()
        history = tf.keras.callbacks.History()
        history.history = {}
    seconds = time.time() - start
    steps = int(trainer.optimizer.iterations.numpy())
    planned = cfg.epochs * sampler.steps_per_epoch
    if steps != planned:
        raise RuntimeError(f"the optimizer took {steps} steps but the sampler planned {planned}; "
                           "refusing to report an epsilon for steps that did not run as accounted")
    full_net = None
    if cfg.precompute_features:
        from tfdprobust import precompute

        full_net = precompute.full_model(dataclasses.replace(cfg.model, input_shape=image_shape), trainer.net)
    return Trained(trainer, history, steps, sampler, seconds, monitor_resources.summary(),
                   diagnostics_logger.summary() if logs_diagnostics else None, resumed_from, full_net)


def run(cfg: RunConfig, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Trains, evaluates and exports; returns the results dictionary (also written to JSON).

    The results hold epsilon (and per-epoch epsilons), the guarantee statement, clean and
    robust test accuracy, the data provenance, all settings and package versions. They
    hold no statistic of the private training batches (loss and accuracy on them are shown
    live in the progress bar only: epsilon does not cover them).
    """
    # MultiWorkerMirroredStrategy must configure TensorFlow before the first op runs.
    strategy = distribute.make_strategy(cfg.strategy)
    if not distribute.is_chief(strategy):
        # Other workers train their replicas; the chief alone evaluates, exports and writes.
        cfg = dataclasses.replace(cfg, export_dir=None, eval_attack=None, tensorboard_dir=None)
    # Fail on a taken or unwritable destination now, not after training.
    name = cfg.run_name or default_run_name(cfg)
    if cfg.export_dir is not None:
        export.check_destination(os.path.join(cfg.export_dir, name))
        export.check_destination(os.path.join(cfg.export_dir, name) + ".json")
    plan = checkpoint.plan_for(cfg, name)  # --resume: a checkpoint with the same settings exists
    given = cfg
    # --seed fixes data roles and initialization; noise and sampling stay secret.
    tf.keras.utils.set_random_seed(cfg.seed)
    experiment = data.load_experiment_data(cfg.data, log=log, ledger_dir=cfg.ledger_dir)
    for role, source in experiment.describe().items():
        log(f"data: {role:<6} {source}")
    cfg = resolve_noise(cfg, len(experiment.train))
    if cfg.pretrain is not None and cfg.pretrain.active:  # a bad source, layer or weights file: before any write
        from tfdprobust import pretrain

        shape = experiment.train.x.shape[1:]
        pretrain.check(cfg.pretrain, lambda: models.build_model(dataclasses.replace(cfg.model, input_shape=shape)),
                       cfg.data.dataset, shape)
    # Every check passed: only now is anything written. The claims stop a second run with this name.
    claims = export.claim_destinations(cfg.export_dir, name, [plan.folder] if plan is not None else [])
    try:
        result = _run_claimed(cfg, given, name, strategy, experiment, plan, log)
    finally:
        for claim in claims:
            claim.release()
    if plan is not None:
        checkpoint.remove(plan.folder)  # exported: the metadata records every step, the journal is done
    return result


def _run_claimed(cfg: RunConfig, given: RunConfig, name: str, strategy, experiment: data.ExperimentData,
                 plan: Optional[checkpoint.Plan], log: Callable[[str], None]) -> Dict[str, Any]:
    """:func:`run` after the data are loaded and the destinations claimed: train, evaluate, export."""
    n = len(experiment.train)
    checkpointing = checkpoint.start(plan, given, cfg, n, name, log) if plan is not None else None
    lost = list(checkpointing.journal.interrupted) if checkpointing is not None else []
    dp = cfg.train.dp
    spec = accounting_spec(cfg, n).replace(interrupted_steps=tuple(lost)) if dp.enabled else None
    if cfg.insecure_reproducible_noise and dp.enabled:
        log(randomness.INSECURE_WARNING)
    # ---- the data set's privacy budget (tfdprobust.ledger): --budget checked, this run recorded, before training
    # A resumed run was recorded (all its planned steps) by its first attempt; it adds only the
    # steps the attempt it resumes ran after that attempt's last checkpoint, which run again.
    release = spec
    if cfg.resume and spec is not None:
        release = spec.replace(steps=lost[-1], interrupted_steps=()) if lost else None
    if dp.enabled and distribute.is_chief(strategy) and release is not None:
        ledger.record_training(release, experiment.fingerprint, cfg.ledger_dir, cfg.budget, "training", name,
                               insecure=cfg.insecure_reproducible_noise)
    # ----
    log_dir = os.path.join(cfg.tensorboard_dir, name) if cfg.tensorboard_dir else None
    trained = train(cfg, experiment.train, experiment.public, spec, log, monitor=experiment.test, log_dir=log_dir,
                    checkpointing=checkpointing)
    trainer, history, steps, sampler = trained.trainer, trained.history, trained.steps, trained.sampler
    earlier_epsilons = (checkpointing.state.manifest.get("epsilon_per_epoch", [])
                        if checkpointing is not None and checkpointing.state is not None else [])
    metrics = (evaluate_net(trained.net, experiment.test, cfg.eval_attack, cfg.verbose, log,
                            preset=cfg.eval_preset, examples=cfg.eval_examples)
               if distribute.is_chief(strategy) else {})
    final_spec = spec.replace(steps=steps) if dp.enabled else None
    private = dp.enabled and not cfg.insecure_reproducible_noise

    result: Dict[str, Any] = {
        "dataset": cfg.data.dataset,
        "data_config": dataclasses.asdict(cfg.data),
        "model": dataclasses.asdict(cfg.model),
        "data": experiment.describe(),
        "data_notes": list(experiment.notes),
        "num_train_examples": n,
        "num_test_examples": len(experiment.test),
        "epochs": cfg.epochs,
        "steps": steps,
        # Steps killed attempts ran after their last checkpoint: composed into epsilon too.
        "steps_lost_in_interruptions": lost,
        "resumed_from_step": trained.resumed_from,
        "batch_size": cfg.batch_size,
        "sampling": cfg.sampling,
        "dp": dp.enabled,
        "private": private,
        "insecure_reproducible_noise": cfg.insecure_reproducible_noise,
        "dp_path": dp.path if dp.enabled else None,
        "noise_multiplier": dp.noise_multiplier if dp.enabled else 0.0,
        "l2_clip": dp.l2_clip if dp.enabled else None,
        "clipping": dp.clipping if dp.enabled else None,
        "clipping_settings": _clipping_settings(cfg) if dp.enabled else None,
        "delta": cfg.delta if dp.enabled else None,
        "accountant": cfg.accountant if dp.enabled else None,
        "adjacency": sampler.adjacency if dp.enabled else None,
        "target_epsilon": cfg.target_epsilon,
        # A run without a guarantee gets no epsilon at all (null in JSON), not a number.
        "epsilon": accounting.epsilon(final_spec) if private else None,
        "epsilon_per_epoch": earlier_epsilons + history.history.get("epsilon", []) if private else [],
        "guarantee": guarantee(cfg, final_spec),
        "unprotected": unprotected_examples(cfg) or None,
        "optimizer": cfg.train.optimizer,
        "learning_rate": cfg.train.learning_rate,
        "train_attack": dataclasses.asdict(cfg.train.attack) if cfg.train.robust else None,
        "adv_weight": cfg.train.adv_weight if cfg.train.robust else 0.0,
        "eval_attack": dataclasses.asdict(cfg.eval_attack) if cfg.eval_attack else None,
        "jit_compile": cfg.train.jit_compile,
        # How each weight's per-example norm was computed: from the layer shapes and a timing
        # probe on synthetic data (tfdprobust.per_example.calibration), not from private data.
        "norm_methods": ({"methods": trainer.norm_methods, "source": "layer shapes and a timing probe on synthetic "
                          "data on this machine; not derived from private data"}
                         if dp.enabled and dp.path == "vectorized" else None),
        "seed": cfg.seed,
        "strategy": cfg.strategy,
        "replicas": strategy.num_replicas_in_sync if strategy is not None else 1,
        "workers": distribute.num_workers(strategy),
        "worker_index": distribute.worker_index(strategy),
        "versions": package_versions(),
        "precomputed_features": cfg.precompute_features,
        "recipe": ({"name": cfg.recipe, "overrides": dict(cfg.recipe_overrides)} if cfg.recipe else None),
        **metrics,
    }
    record = getattr(trainer, "public_pretraining", None)
    if record is not None:  # what was public, and that it is outside the accounting
        from tfdprobust import pretrain

        result["public_pretraining"] = record.as_dict()
        result["guarantee"] = pretrain.extend_guarantee(result["guarantee"], record)
    if cfg.export_dir is not None:
        # metadata.json gets `result` as it stands: nothing computed on private batches.
        path = os.path.join(cfg.export_dir, name)  # as given: recorded paths stay portable
        export.export_model(trained.net, path, result)
        result["export_path"] = path
        result["results_path"] = path + ".json"
    # Only the run JSON (beside the export) and the returned dict carry these. Timing depends
    # weakly on the realised batch sizes; the diagnostics are private-batch statistics.
    result["resources"] = {**(trained.resources or {}), "train_seconds": trained.seconds,
                           "note": "not in metadata.json: wall time depends on the (private) realised batch sizes"}
    if trained.diagnostics is not None:
        result[diagnostics.RESULT_KEY] = trained.diagnostics
    if cfg.export_dir is not None:
        export.write_json_atomic(result["results_path"], result)
    return result


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies below it (portable logs)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _clipping_settings(cfg: RunConfig) -> Dict[str, Any]:
    """The knobs of the configured clipping strategy, and what its accounting composes."""
    dp = cfg.train.dp
    out: Dict[str, Any] = {"strategy": dp.clipping}
    if dp.clipping == "automatic":
        out.update(gamma=dp.auto_gamma, note="contribution C * g / (||g|| + gamma) < C (Bu et al. AUTO-S)")
    if dp.adaptive:
        out.update(initial_l2_clip=dp.l2_clip, target_quantile=dp.target_quantile,
                   quantile_learning_rate=dp.quantile_learning_rate, count_noise_std=cfg.train.count_noise_std,
                   count_noise_multiplier=cfg.train.extra_noise_multipliers[0],
                   note="the noised unclipped count of every step is composed into epsilon")
    return out


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def summary(result: Dict[str, Any]) -> str:
    """The short human-readable summary the CLI prints."""
    lines = []
    if "clean_accuracy" in result:
        lines.append(f"clean test accuracy : {result['clean_accuracy']:.4f}  ({result['num_test_examples']} test images)")
    else:  # a worker of a multi-worker run other than the chief
        lines.append(f"worker {result['worker_index']} of {result['workers']}: trained its replicas; the chief "
                     "(worker 0) evaluates and exports")
    if "robust_accuracy" in result:
        atk = result["eval_attack"]
        lo, hi = result["robust_ci95"]
        lines.append(f"robust accuracy     : {result['robust_accuracy']:.4f}  [95% CI {lo:.3f}, {hi:.3f}] "
                     f"({result['robust_preset']} ensemble: "
                     + ", ".join(step["attack"] for step in result["robust_after_each"][1:])
                     + f"; {atk['name'][4:]} eps={atk['eps']:g}, {result['robust_examples']} test images)")
    if result["private"]:
        lost = sum(result.get("steps_lost_in_interruptions") or [])
        steps = f"{result['steps']} steps" + (f" + {lost} lost in interrupted attempts" if lost else "")
        lines.append(f"epsilon             : {result['epsilon']:.4g} at delta={result['delta']:g} "
                     f"(sigma={result['noise_multiplier']:.4g}, {steps}, {result['sampling']} "
                     f"sampling, {result['adjacency']} adjacency, {result['accountant'].upper()})")
    lines.append(f"guarantee           : {result['guarantee']}")
    res = result.get("resources") or {}
    if res.get("epoch_seconds"):
        gpu = res.get("peak_gpu_memory_mb")
        lines.append(f"time and memory     : {res['train_seconds']:.1f} s training, "
                     f"{', '.join(f'{s:.1f}' for s in res['epoch_seconds'])} s per epoch, "
                     f"{res['examples_per_second']:.1f} examples/s, peak host RSS {res['peak_host_rss_mb']:.0f} MB"
                     + (f", peak GPU {gpu:.0f} MB" if gpu is not None else " (no GPU)"))
    diag = result.get(diagnostics.RESULT_KEY)
    if diag and diag.get("diag_clipped_fraction"):
        mean = {k: (diag[k]["mean"] if k in diag else None) for k in diagnostics.KEYS}
        lines.append("clipping diagnostics: NOT covered by epsilon (private batches): mean clipped fraction "
                     f"{_fmt(mean['diag_clipped_fraction'])}, median norm {_fmt(mean['diag_norm_p50'])}, "
                     + (f"clip-bias cosine {_fmt(mean['diag_clip_bias_cosine'])}, "
                        if mean["diag_clip_bias_cosine"] is not None else "clip-bias cosine off (--clip_bias_cosine), ")
                     + f"SNR {_fmt(mean['diag_snr'])}, "
                     f"final C {_fmt(diag['clip_bound']['last'])}")
    if "export_path" in result:
        lines.append(f"SavedModel          : {_shown(result['export_path'])}")
        lines.append(f"results JSON        : {_shown(result['results_path'])}")
    return "\n".join(lines)
