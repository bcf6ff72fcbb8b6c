"""Training a network privately and robustly on loaded data, and evaluating it.

:func:`train` builds the network of a :class:`~tfdprobust.run_config.RunConfig` and
trains it with :class:`~tfdprobust.train_step.PrivateRobustModel` on batches from the
run's secret sampler; :func:`evaluate_net` reports clean accuracy and the attack
ensemble's robust accuracy. :func:`tfdprobust.runs.run` composes them with data loading,
accounting and export; the tuner reuses :func:`build_trainer` and :func:`train`.
"""

import dataclasses
import time
from typing import Any, Callable, Dict, Optional, Sequence

import tensorflow as tf

from tfdprobust import (accounting, attacks, checkpoint, data, diagnostics, distribute, models, randomness, resources,
                        sampling, train_step)
from tfdprobust.errors import UsageError
from tfdprobust.run_config import RunConfig


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
