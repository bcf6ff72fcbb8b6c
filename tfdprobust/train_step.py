"""The training step: PGD adversarial examples + DP-SGD inside a Keras ``train_step``.

:class:`PrivateRobustModel` wraps an inference network (a ``tf.keras.Sequential``
that maps images in [0, 1] to logits) and overrides ``train_step``, so ``fit``,
callbacks and progress bars work as usual. For each batch it:

1. refreshes the public-data normalization statistics from the public batch
   (:func:`tfdprobust.normalization.update_public_statistics`) — the only state the
   step changes besides the weights and the optimizer;
2. generates adversarial examples with the configured attack (CleverHans PGD by
   default) against the current model, inside the compiled step, calling the network
   in inference mode so the attack updates no state;
3. computes **one loss per private example**:
   ``(1 - w) * CE(clean_i) + w * CE(adversarial_i)``, combined *before* clipping, so
   each example yields exactly one gradient (clipping the clean and adversarial copies
   separately would double the sensitivity);
4. clips each example's gradient to C with the configured strategy
   (:data:`tfdprobust.clipping.CLIPPINGS`: flat, per-layer, automatic or adaptive), sums,
   adds N(0, (sigma C)^2) once, divides by the expected batch size, and applies the
   optimizer (which may know sigma, C and B: :mod:`tfdprobust.optimizers`); adaptive
   clipping then moves C from a noised count drawn from the same secret generator.

Two interchangeable DP paths compute step 4 (``DPConfig.path``):

* ``"vectorized"`` (default, fast): book-keeping (:func:`tfdprobust.per_example.clipped_sum`):
  one forward and one backward pass, per-layer gradient norms (ghost or materialized,
  whichever is cheaper for the layer's shapes), the clipping strategy's per-example scales,
  then the clipped sum from one weight-gradient op per layer. Networks the layer graph
  walk cannot follow use ``tf.vectorized_map`` over single-example passes instead.
* ``"tf_privacy"``: tensorflow-privacy's DP Keras optimizers (``DPKerasSGDOptimizer``
  and friends), which clip per microbatch of one example. This is the reference the
  fast path is tested against.

With ``dp.enabled=False`` the same step trains a non-private baseline (mean loss,
no clipping or noise); with ``attack=None`` or ``adv_weight=0`` a non-robust one.
"""

import dataclasses
import math
import types
from typing import Dict, List, Optional, Tuple

import tensorflow as tf

from tfdprobust import (accounting, attacks, clipping, compat, diagnostics, distribute, optimizers, per_example,
                        randomness)
from tfdprobust.errors import UsageError, require
from tfdprobust.normalization import has_public_normalization, update_public_statistics
from tfdprobust.registry import Registry

compat.check_keras()
DP_PATHS = ("vectorized", "tf_privacy")


# --------------------------------------------------------------------------- optimizers
# The registry lives in tfdprobust.optimizers (entries may see sigma, C and B); these names
# stay importable from here for existing callers.
OptimizerSpec = optimizers.OptimizerSpec
OPTIMIZERS: Registry = optimizers.OPTIMIZERS


# --------------------------------------------------------------------------- configs
#: Batches of more than AUTO_CHUNK_ABOVE expected rows (examples x their clean and adversarial
#: rows) take the clipped sum in chunks of AUTO_CHUNK_ROWS rows by default. Measured on a
#: 2-core AMD EPYC with AVX2 and FMA at commit 163cb9a (experiments/benchmarks/peers_s11.md,
#: docs/performance.md): with 500 or more rows the chunked step was faster in 8 of 9
#: configurations (ResNet-20 + PGD-10 at B = 1000: 0.81x against 0.57x the non-DP step) and its
#: extra memory at most 1.17x the non-DP step's (one pass: up to 5.3x); with 250 rows, one pass
#: was faster.
AUTO_CHUNK_ABOVE = 256
AUTO_CHUNK_ROWS = 128
#: A batch whose examples would hold more than 2 x AUTO_CHUNK_FLOATS written-out per-example
#: gradient floats at once (:func:`tfdprobust.per_example.costs.written_out_floats`) takes
#: chunks of AUTO_CHUNK_FLOATS floats' worth of examples (64 MB in float32). Measured on the
#: same machine at commit c0e856d (experiments/benchmarks/peers_s14_resnet_b250.md): ResNet-20
#: at B = 250 without attack (267,408 floats per example) took 1.55x the non-DP step's extra
#: memory in one pass, 1.22x in chunks of 128 rows and 0.80x in chunks of 64, at 0.85x, 0.83x
#: and 0.86x its speed.
AUTO_CHUNK_FLOATS = 2 ** 24


def auto_chunk_rows(expected_rows: int, copies: int = 1, per_example_floats: int = 0) -> Optional[int]:
    """The default chunk size of the clipped sum, in rows, or ``None`` (one pass).

    The smaller of: :data:`AUTO_CHUNK_ROWS` when there are more than :data:`AUTO_CHUNK_ABOVE`
    rows (activations and output gradients), and, when the examples would hold more than
    ``2 * AUTO_CHUNK_FLOATS`` written-out gradient floats, as many whole examples (``copies``
    rows each) as hold :data:`AUTO_CHUNK_FLOATS` (at least one). It depends on the configured
    (expected) batch size and the network's shape only, never on a realised batch.

    Args:
        expected_rows: expected examples per batch times ``copies``.
        copies: rows per example (2 with an attack: the clean and adversarial rows).
        per_example_floats: :func:`~tfdprobust.per_example.costs.written_out_floats` of the network.
    """
    candidates = [AUTO_CHUNK_ROWS] if expected_rows > AUTO_CHUNK_ABOVE else []
    if per_example_floats and (expected_rows // copies) * per_example_floats > 2 * AUTO_CHUNK_FLOATS:
        candidates.append(max(1, AUTO_CHUNK_FLOATS // per_example_floats) * copies)
    return min(candidates) if candidates else None


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """Differential privacy of the training step.

    Attributes:
        enabled: False trains a non-private baseline through the same step.
        l2_clip: C, the per-example gradient norm bound.
        noise_multiplier: sigma; noise std on the gradient sum is sigma * C.
        path: ``vectorized`` (fast) or ``tf_privacy`` (tensorflow-privacy optimizers).
        insecure_noise_seed: ``None`` (private): the noise comes from OS entropy. An
            integer replays the noise from it, which voids the DP guarantee; only
            ``--insecure_reproducible_noise`` sets it.
        clipping: a :data:`tfdprobust.clipping.CLIPPINGS` strategy: ``flat`` (default),
            ``per_layer``, ``automatic`` or ``adaptive`` (``l2_clip`` is then the initial C).
        auto_gamma: gamma of automatic clipping, ``C g / (||g|| + gamma)``.
        target_quantile: adaptive clipping's target fraction of unclipped examples.
        quantile_learning_rate: adaptive clipping's geometric step ``C <- C exp(-lr (f - q))``.
        count_noise: std of the noise on adaptive clipping's unclipped count; ``None`` is
            B / 20, Andrew et al.'s recommendation. Its release is composed into epsilon.
        clip_bias_cosine: also sum the unclipped gradients every step, for the
            ``diag_clip_bias_cosine`` diagnostic. Off by default: it is a second weighted
            sum per layer, and it tips layers with few rows per example (a dense layer under
            PGD) to written-out per-example gradients. The other diagnostics are free.
        chunk_rows: the clipped sum takes the batch in chunks of at most this many rows (whole
            examples, each with its clean and adversarial rows), one after the other; exact (see
            :func:`tfdprobust.per_example.clipped_sum`), and it bounds the DP step's extra memory.
            ``0``: one pass over the batch. ``None`` (default): :func:`auto_chunk_rows` decides
            from the expected rows per batch.
    """

    enabled: bool = True
    l2_clip: float = 1.0
    noise_multiplier: float = 7.1
    path: str = "vectorized"
    insecure_noise_seed: Optional[int] = None
    clipping: str = "flat"
    auto_gamma: float = 0.01
    target_quantile: float = 0.5
    quantile_learning_rate: float = 0.2
    count_noise: Optional[float] = None
    clip_bias_cosine: bool = False
    chunk_rows: Optional[int] = None

    def __post_init__(self):
        require(math.isfinite(self.l2_clip) and self.l2_clip > 0,
                f"--l2_clip must be a finite number > 0, got {self.l2_clip}")
        require(math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0,
                f"--noise must be a finite number >= 0 (the noise multiplier sigma), got {self.noise_multiplier}")
        require(self.path in DP_PATHS, f"--dp_path must be one of {', '.join(DP_PATHS)}, got {self.path!r}")
        clipping.CLIPPINGS.get(self.clipping)  # a UsageError listing the strategies
        require(self.clipping == "flat" or self.path == "vectorized",
                f"--clipping={self.clipping} needs --dp_path=vectorized (tensorflow-privacy clips flat)")
        require(math.isfinite(self.auto_gamma) and self.auto_gamma > 0,
                f"--auto_gamma must be a finite number > 0, got {self.auto_gamma}")
        require(0 < self.target_quantile < 1, f"--target_quantile must be in (0, 1), got {self.target_quantile}")
        require(math.isfinite(self.quantile_learning_rate) and self.quantile_learning_rate > 0,
                f"--quantile_learning_rate must be a finite number > 0, got {self.quantile_learning_rate}")
        require(self.chunk_rows is None or self.chunk_rows == 0 or self.chunk_rows >= 2,
                f"--dp_chunk_rows must be 0 (one pass) or >= 2 (an example's clean and adversarial rows), got "
                f"{self.chunk_rows}")
        require(self.count_noise is None or (math.isfinite(self.count_noise) and self.count_noise > 0),
                f"--count_noise must be a finite number > 0, got {self.count_noise}")

    def effective_chunk_rows(self, expected_rows: int, copies: int = 1, per_example_floats: int = 0) -> Optional[int]:
        """The chunk size the clipped sum uses for ``expected_rows`` rows per batch (``None``:
        one pass): ``chunk_rows`` when given, else :func:`auto_chunk_rows` (same arguments)."""
        if self.chunk_rows is None:
            return auto_chunk_rows(expected_rows, copies, per_example_floats)
        return self.chunk_rows or None

    @property
    def adaptive(self) -> bool:
        return self.enabled and self.clipping == "adaptive"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything the train step needs besides the network and the data.

    Attributes:
        optimizer: registry key (sgd, momentum, adam, rmsprop, adagrad).
        learning_rate: eta.
        expected_batch_size: the normalizer of the private gradient sum (the expected
            batch size under Poisson sampling; dividing by the realised size would leak it).
        dp: :class:`DPConfig`.
        attack: the training attack, or ``None`` for no adversarial training.
        adv_weight: w in ``(1 - w) * clean loss + w * adversarial loss``, per example.
        jit_compile: compile the whole train step (attack loop included) with XLA. Off by
            default: on CPU with TensorFlow 2.15 it made every step we measured 2-3x slower, DP
            or not (``experiments/benchmarks/profile_s10.md``); the results are the same up to
            float rounding.
    """

    optimizer: str = "sgd"
    learning_rate: float = 4.0  # the defaults of experiments/defaults/ (with C = 1, batch 1000)
    expected_batch_size: int = 1000
    dp: DPConfig = DPConfig()
    attack: Optional[attacks.AttackConfig] = attacks.AttackConfig(
        name="pgd_linf", eps=0.1, steps=10, random_start=True)
    adv_weight: float = 0.5
    jit_compile: bool = False

    def __post_init__(self):
        spec = OPTIMIZERS.get(self.optimizer)
        require(not getattr(spec, "requires_dp", False) or self.dp.enabled,
                f"--optimizer={self.optimizer} corrects for DP noise; use it with --dp (or adam with --nodp)")
        require(not (self.dp.enabled and self.dp.path == "tf_privacy") or compat.has_tf_privacy(),
                f"--dp_path=tf_privacy {compat.TF_PRIVACY_INSTALL}; use --dp_path=vectorized (the default)")
        require(spec.keras_class is not None or not (self.dp.enabled and self.dp.path == "tf_privacy"),
                f"--optimizer={self.optimizer} cannot be wrapped by tensorflow-privacy; use --dp_path=vectorized")
        require(math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1e6,
                f"--learning_rate must be a finite number in (0, 1e6], got {self.learning_rate}")
        require(self.expected_batch_size > 0, f"--batch_size must be > 0, got {self.expected_batch_size}")
        require(0.0 <= self.adv_weight <= 1.0, f"--adv_weight must be in [0, 1], got {self.adv_weight}")

    @property
    def robust(self) -> bool:
        return self.attack is not None and self.adv_weight > 0

    @property
    def count_noise_std(self) -> float:
        """Std of adaptive clipping's count noise (default B / 20, Andrew et al.)."""
        return self.dp.count_noise if self.dp.count_noise is not None else self.expected_batch_size / 20.0

    @property
    def extra_noise_multipliers(self) -> Tuple[float, ...]:
        """Noise multipliers of the releases each step makes besides the gradient (for accounting)."""
        if self.dp.adaptive:
            return (clipping.count_noise_multiplier(self.count_noise_std),)
        return ()

    def noise_scale(self, clip_bound=None) -> Optional[optimizers.NoiseScale]:
        """sigma, C (or the adaptive bound's variable) and B of the private gradient."""
        if not self.dp.enabled:
            return None
        return optimizers.NoiseScale(self.dp.noise_multiplier,
                                     clip_bound if clip_bound is not None else self.dp.l2_clip,
                                     self.expected_batch_size)

    def make_optimizer(self, clip_bound=None) -> tf.keras.optimizers.Optimizer:
        """The optimizer for this config: plain Keras, noise-aware (sees sigma, C and B), or
        tensorflow-privacy's DP version of a Keras class."""
        spec = OPTIMIZERS.get(self.optimizer)
        if self.dp.enabled and self.dp.path == "tf_privacy":
            compat.require_tf_privacy()
            from tensorflow_privacy.privacy.optimizers import dp_optimizer_keras

            dp_class = dp_optimizer_keras.make_keras_optimizer_class(spec.keras_class)
            # num_microbatches=None: one microbatch per example, i.e. per-example clipping.
            return dp_class(l2_norm_clip=self.dp.l2_clip, noise_multiplier=self.dp.noise_multiplier,
                            num_microbatches=None, **dict(spec.kwargs, learning_rate=self.learning_rate))
        return spec.build(self.learning_rate, self.noise_scale(clip_bound))


# --------------------------------------------------------------------------- the model
class PrivateRobustModel(tf.keras.Model):
    """A Keras model whose ``train_step`` does adversarial training with DP-SGD.

    Args:
        net: the inference network (``Sequential`` or functional, images in [0, 1] -> logits). It is
            what gets exported; this wrapper only adds the training logic.
        config: :class:`TrainConfig`.
        public_images: the public normalization batch, required iff ``net`` has
            :class:`~tfdprobust.normalization.PublicBatchNormalization` layers.
        noise_generator: the secret noise generator; ``None`` makes one
            (:func:`tfdprobust.randomness.noise_generator`). Under ``tf.distribute``,
            :func:`tfdprobust.distribute.noise_generator` makes it outside the strategy's
            scope, so every worker seeds its own.

    Example:
        >>> import numpy as np
        >>> from tfdprobust.models import ModelConfig, build_model
        >>> net = build_model(ModelConfig(norm="group"))
        >>> from tfdprobust.sampling import PoissonSampler
        >>> model = PrivateRobustModel(net, TrainConfig(expected_batch_size=8))
        >>> model.compile()
        >>> x = np.random.default_rng(0).random((16, 28, 28, 1), np.float32)
        >>> y = np.arange(16) % 10
        >>> sampler = PoissonSampler(len(x), 8)
        >>> batches = sampler.dataset(x, y, tf.random.Generator.from_non_deterministic_state())
        >>> history = model.fit(batches, steps_per_epoch=sampler.steps_per_epoch, epochs=1, verbose=0)
        >>> sorted(k for k in history.history if not k.startswith("diag_"))  # diag_*: private diagnostics
        ['acc', 'adv_acc', 'clip_bound', 'dropped', 'loss']
    """

    def __init__(self, net: tf.keras.Sequential, config: TrainConfig, public_images=None,
                 noise_generator: Optional[tf.random.Generator] = None, **kwargs):
        super().__init__(**kwargs)
        if config.dp.enabled:
            per_example.validate_network(net)
            # Secret (OS-entropy) noise unless the insecure flag replays it; never saved.
            self.noise_generator = (noise_generator if noise_generator is not None
                                    else randomness.noise_generator(config.dp.insecure_noise_seed))
        # The clipping bound C as a variable: constant, except under adaptive clipping where
        # quantile_update moves it from noised counts (post-processing, covered by epsilon).
        self.clip_bound = tf.Variable(float(config.dp.l2_clip), trainable=False, name="clip_bound")
        needs_public = has_public_normalization(net)
        require(not needs_public or public_images is not None,
                "the network uses public-data normalization but no public images were given; "
                "set --public_examples > 0 or use --norm=none/group")
        self.net = net
        self.config = config
        self.public_images = (tf.constant(public_images, tf.float32)
                              if needs_public and public_images is not None else None)
        self.loss_tracker = tf.keras.metrics.Mean(name="loss")
        self.clean_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="acc")
        self.adv_accuracy = tf.keras.metrics.SparseCategoricalAccuracy(name="adv_acc")
        # Examples dropped for a non-finite gradient (live diagnostic; private, not published).
        self.dropped = tf.keras.metrics.Sum(name="dropped")
        # A plain holder: Keras would wrap a dict attribute into its tracked state.
        self._traced = types.SimpleNamespace(norm_methods={})

    def compile(self, **kwargs):
        kwargs.setdefault("optimizer", self.config.make_optimizer(
            self.clip_bound if self.config.dp.adaptive else None))
        kwargs.setdefault("jit_compile", self.config.jit_compile)
        super().compile(**kwargs)

    def fit(self, *args, **kwargs):
        """Keras ``fit``, with the optimizer's variables created first.

        A ``tf.function`` whose first trace creates variables is traced a second time
        without them; the optimizer creates its step counter, hyperparameters and slots in
        its first ``apply_gradients``, inside the train step. Creating them here halves
        the start-up of every run (one trace of the DP step instead of two).
        """
        data = args[0] if args else kwargs.get("x")
        require(not self.config.dp.enabled or isinstance(data, tf.data.Dataset),
                "under DP, fit(x, y) would train on Keras' fixed-size shuffled batches, which the privacy "
                "accounting does not describe; use tfdprobust.make_private(net, ...).fit(x, y), which draws "
                "Poisson batches, or pass a sampler's dataset (tfdprobust.sampling)")
        if hasattr(self.optimizer, "_create_all_weights"):  # Keras-2 (legacy) optimizers
            with self.distribute_strategy.scope(), tf.name_scope(self.optimizer._name):
                self.optimizer._create_all_weights(self.net.trainable_variables)
        return super().fit(*args, **kwargs)

    @property
    def norm_methods(self) -> Dict[str, str]:
        """Variable name -> ``ghost``, ``materialized`` or ``fallback``: how the DP step computes
        each weight's per-example norm (empty until the step is traced). Chosen from the layer
        shapes and, where the cost model is not decisive, a timing probe on synthetic data
        (:mod:`tfdprobust.per_example.calibration`): never from the training data."""
        return dict(self._traced.norm_methods)

    @property
    def metrics(self):
        tracked = [self.loss_tracker, self.clean_accuracy]
        if self.config.robust:
            tracked.append(self.adv_accuracy)
        if self.config.dp.enabled and self.config.dp.path == "vectorized":
            tracked.append(self.dropped)
        return tracked

    def call(self, x, training=False):
        return self.net(x, training=False)

    # -- pieces of the step (public so tests and benchmarks can call them) --------
    def refresh_public_statistics(self) -> None:
        if self.public_images is not None:
            update_public_statistics(self.net, self.public_images)

    def adversarial(self, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Adversarial examples against the current network; changes no state."""
        if not self.config.robust:
            return x
        return _unless_empty(x, lambda: attacks.generate(lambda z: self.net(z, training=False), x, y,
                                                         self.config.attack), lambda: tf.identity(x))

    @property
    def copies(self) -> int:
        """Rows per private example: 2 (adversarial and clean) when 0 < adv_weight < 1, else 1."""
        return 2 if self.config.robust and self.config.adv_weight != 1.0 else 1

    @property
    def chunk_rows(self) -> Optional[int]:
        """Rows per chunk of the DP clipped sum (``None``: one pass), from ``DPConfig.chunk_rows``,
        the expected batch size and the network's written-out gradient size (:func:`auto_chunk_rows`)."""
        return self.config.dp.effective_chunk_rows(self.config.expected_batch_size * self.copies, self.copies,
                                                   per_example.costs.written_out_floats(self.net))

    def rows(self, x: tf.Tensor, x_adv: tf.Tensor, y: tf.Tensor):
        """The rows that enter the loss, their labels and weights, and copies per example.

        Example ``i`` owns rows ``i`` (adversarial, weight w) and ``B + i`` (clean,
        weight 1 - w) when 0 < w < 1; one row otherwise. Its loss is the sum of its rows.
        """
        ones = tf.ones_like(y, tf.float32)
        w = self.config.adv_weight
        if self.copies == 1:
            return (x_adv if self.config.robust else x), y, ones, 1
        return (tf.concat([x_adv, x], 0), tf.concat([y, y], 0),
                tf.concat([w * ones, (1.0 - w) * ones], 0), 2)

    def example_losses(self, x: tf.Tensor, x_adv: tf.Tensor, y: tf.Tensor):
        """One loss per private example, ``[batch]``: ``(1-w) CE(clean) + w CE(adversarial)``.

        Returns:
            ``(losses, row_logits)``, the logits of :meth:`rows` (for metrics).
        """
        rows, labels, weights, copies = self.rows(x, x_adv, y)
        rows, labels, weights, count = per_example.stand_in_if_empty(rows, labels, weights, copies)
        logits = self.net(rows, training=False)
        losses = per_example.row_losses(logits, labels, weights)
        losses = tf.add_n(tf.split(losses, copies)) if copies > 1 else losses
        return losses[:count // copies], logits[:count]

    def per_example_gradients(self, x, x_adv, y) -> Tuple[List[tf.Tensor], tf.Tensor]:
        """Each private example's gradient of its :meth:`example_losses` term, written out
        (the train step itself never needs them: see :meth:`private_step`).

        Uses the per-layer rules of :mod:`tfdprobust.per_example` when the network's graph
        can be walked, else ``tf.vectorized_map``.

        Returns:
            ``(grads, row_logits)``; ``grads[k]`` is ``[batch, *variable_k.shape]``.
        """
        rows, labels, weights, copies = self.rows(x, x_adv, y)
        method = (per_example.per_example_gradients if per_example.supports(self.net)
                  else per_example.vectorized_map_gradients)
        grads, logits = method(self.net, rows, labels, weights)
        return per_example.fold_rows(grads, copies), logits

    def private_gradients(self, x, x_adv, y) -> Tuple[List[tf.Tensor], tf.Tensor]:
        """The DP-SGD gradient of the fast path (clip each example with the configured
        strategy to C, sum, secret noise, divide by the expected batch size), and the row
        logits. Under adaptive clipping, also moves C with a noised count (same secret
        generator) for the next step."""
        noisy, logits, _ = self.private_step(x, x_adv, y)
        return noisy, logits

    def clipped_sum(self, x, x_adv, y):
        """``(clipped sum, unclipped sum, unclipped norms, row logits)`` of this batch at the
        current bound: book-keeping on the per-layer rules (:func:`per_example.clipped_sum`),
        or ``tf.vectorized_map`` rows for a network the graph walk cannot follow. The
        unclipped sum is ``None`` unless ``DPConfig.clip_bias_cosine``."""
        dp = self.config.dp
        bound = self.clip_bound.read_value()
        rows, labels, weights, copies = self.rows(x, x_adv, y)
        if per_example.supports(self.net):
            out = per_example.clipped_sum(self.net, rows, labels, weights, bound, copies, dp.clipping,
                                          dp.auto_gamma, unclipped=dp.clip_bias_cosine,
                                          chunk_rows=self.chunk_rows)
            self._traced.norm_methods = dict(out.methods)
            return out.clipped, out.unclipped, out.norms, out.logits
        grads, logits = per_example.vectorized_map_gradients(self.net, rows, labels, weights)
        grads = per_example.fold_rows(grads, copies)
        clipped, norms = clipping.clip(grads, bound, dp.clipping, dp.auto_gamma)
        unclipped = diagnostics.unclipped_sum(grads, norms) if dp.clip_bias_cosine else None
        return [tf.reduce_sum(g, axis=0) for g in clipped], unclipped, norms, logits

    def private_step(self, x, x_adv, y):
        """:meth:`private_gradients` plus this step's clipping diagnostics (a dict of scalars,
        computed on the private batch: NOT covered by epsilon, see :mod:`tfdprobust.diagnostics`)."""
        dp = self.config.dp
        bound = self.clip_bound.read_value()
        summed, unclipped, norms, logits = self.clipped_sum(x, x_adv, y)
        # Under tf.distribute each of the R replicas adds independent noise of std sigma C / sqrt(R)
        # to its own clipped sum, and the noisy sums are all-reduced: total noise std sigma C, once.
        # Without a strategy both are no-ops (share 1, sum over one replica).
        noised = distribute.sum_over_replicas(clipping.add_gaussian_noise(
            summed, dp.noise_multiplier * distribute.noise_share(), bound, self.noise_generator))
        noisy = [g / tf.cast(self.config.expected_batch_size, g.dtype) for g in noised]
        self.dropped.update_state(tf.cast(clipping.dropped_count(norms), tf.float32))
        diag = diagnostics.sum_diagnostics(summed, unclipped, norms, bound, dp.noise_multiplier)
        if dp.adaptive:
            clipping.quantile_update(norms, self.clip_bound, dp.target_quantile, dp.quantile_learning_rate,
                                     self.config.count_noise_std, self.config.expected_batch_size,
                                     self.noise_generator)
        return noisy, logits, diag

    # -- Keras hooks --------------------------------------------------------------
    def train_step(self, data):
        x, y = data
        y = tf.cast(y, tf.int64)
        self.refresh_public_statistics()
        x_adv = self.adversarial(x, y)
        variables = self.net.trainable_variables
        dp = self.config.dp
        if dp.enabled and dp.path == "vectorized":
            grads, logits, diag = self.private_step(x, x_adv, y)
            distribute.apply_summed(self.optimizer, zip(grads, variables))  # already summed over replicas
        else:
            if dp.enabled:  # tensorflow-privacy divides by the batch's size: refused with Poisson batches
                tf.debugging.assert_positive(tf.shape(y)[0], message=(
                    "--dp_path=tf_privacy cannot take an empty batch (it divides by the batch size); "
                    "use --dp_path=vectorized"))
            with tf.GradientTape() as tape:
                losses, logits = self.example_losses(x, x_adv, y)
                # tensorflow-privacy's optimizers take the *vector* of per-example losses.
                # Without DP: the mean over the global batch (across replicas under tf.distribute).
                objective = losses if dp.enabled else distribute.global_mean(losses)
            self.optimizer.minimize(objective, variables, tape=tape)
        self._update_metrics(x, y, logits)
        logs = {m.name: m.result() for m in self.metrics}
        if dp.enabled and dp.path == "vectorized":
            # Per-step values (not running means) so TensorBoard shows each step; the C used
            # by this step is what clip_bound logs.
            logs.update(diag)
        return logs

    def _update_metrics(self, x, y, row_logits):
        """Batch metrics from the logits the step already computed (before the update).

        Only adversarial-only training needs one extra clean forward pass.
        """
        batch = tf.shape(y)[0]
        first = row_logits[:batch]
        if not self.config.robust:
            clean = first
        else:
            self.adv_accuracy.update_state(y, first)
            clean = (row_logits[batch:] if self.config.adv_weight < 1 else
                     _unless_empty(x, lambda: self.net(x, training=False), lambda: tf.zeros_like(first)))
        self.clean_accuracy.update_state(y, clean)
        self.loss_tracker.update_state(
            tf.keras.losses.sparse_categorical_crossentropy(y, first, from_logits=True))

    def test_step(self, data):
        x, y = data
        logits = self.net(x, training=False)
        self.loss_tracker.update_state(
            tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        self.clean_accuracy.update_state(y, logits)
        return {m.name: m.result() for m in (self.loss_tracker, self.clean_accuracy)}


def _unless_empty(x: tf.Tensor, compute, empty):
    """``compute()``, or ``empty()`` when ``x`` has no rows: a guard in the graph, so no
    kernel runs on a zero-row batch (see :func:`tfdprobust.per_example.stand_in_if_empty`)."""
    if x.shape[0] is not None and x.shape[0] > 0:
        return compute()
    return tf.cond(tf.shape(x)[0] > 0, compute, empty)


# --------------------------------------------------------------------------- callbacks
class PrivacyCallback(tf.keras.callbacks.Callback):
    """Adds ``epsilon`` (at the spec's delta, for the steps run so far) to the epoch logs.

    Put it before Keras' progress bar (``fit`` does, see :func:`fit`) so the bar shows it.
    """

    def __init__(self, spec: accounting.AccountingSpec):
        super().__init__()
        self.spec = spec
        self.epsilons: List[float] = []

    def on_epoch_end(self, epoch, logs=None):
        steps = int(self.model.optimizer.iterations.numpy())
        eps = accounting.epsilon(self.spec.replace(steps=steps))
        self.epsilons.append(eps)
        if logs is not None:
            logs["epsilon"] = eps


class DivergenceGuard(tf.keras.callbacks.Callback):
    """Stops a run whose model diverges, judged only on what epsilon already covers.

    Every ``every`` steps it checks that the weights are finite and that the mean loss on a
    fixed batch of *non-private* images (held-out test images) has not become non-finite or
    grown past ``factor`` times its value before training. Deciding on private training
    batches' loss would itself release something epsilon does not cover; the model states
    are already covered (DP protects every intermediate model), so this is post-processing.

    Raises:
        UsageError: from inside ``fit``, naming the flags to change.
    """

    def __init__(self, images=None, labels=None, every: int = 10, factor: float = 10.0):
        super().__init__()
        self.images = None if images is None else tf.constant(images[:512], tf.float32)
        self.labels = None if labels is None else tf.constant(labels[:512], tf.int64)
        self.every = every
        self.factor = factor
        self.start: Optional[float] = None

    def _loss(self) -> float:
        logits = self.model.net(self.images, training=False)
        return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(self.labels, logits)))

    def on_train_begin(self, logs=None):
        if self.images is not None:
            self.start = self._loss()

    def _check(self):
        step = int(self.model.optimizer.iterations.numpy())
        if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.model.net.trainable_variables):
            reason = "the weights became non-finite"
        elif self.images is not None:
            loss = self._loss()
            if math.isfinite(loss) and loss <= self.factor * max(self.start, 1.0):
                return
            reason = f"the held-out loss rose from {self.start:.3g} to {loss:.3g}"
        else:
            return
        self.model.stop_training = True
        raise UsageError(f"training diverged at step {step}: {reason}; lower --learning_rate (or --l2_clip), "
                         "or use --optimizer=sgd; nothing was exported")

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) % self.every == 0:
            self._check()

    def on_epoch_end(self, epoch, logs=None):
        self._check()


class PublicStatisticsCallback(tf.keras.callbacks.Callback):
    """At the end of training, recomputes public statistics with the final weights.

    During training each step's statistics were computed *before* that step's update;
    inference and export must use statistics that match the final weights.
    """

    def on_train_end(self, logs=None):
        self.model.refresh_public_statistics()


def fit(model: PrivateRobustModel, dataset: tf.data.Dataset, steps_per_epoch: int, epochs: int,
        spec: Optional[accounting.AccountingSpec] = None, callbacks=(), verbose: int = 1,
        validation_data=None) -> tf.keras.callbacks.History:
    """``model.fit`` with the privacy and public-statistics callbacks in place.

    Returns:
        The Keras ``History``; with ``spec``, ``history.history["epsilon"]`` holds epsilon
        after each epoch.
    """
    extra = [PublicStatisticsCallback()]
    if spec is not None and model.config.dp.enabled:
        extra.insert(0, PrivacyCallback(spec))
    # Keras puts its progress bar after user callbacks, so epsilon is in the logs it prints.
    return model.fit(dataset, epochs=epochs, steps_per_epoch=steps_per_epoch, verbose=verbose,
                     callbacks=[*extra, *callbacks], validation_data=validation_data)


def accuracy(net: tf.keras.Model, x, y, attack: Optional[attacks.AttackConfig] = None,
             batch_size: int = 500, verbose: int = 0) -> float:
    """Clean accuracy, or accuracy under ``attack``, of ``net`` on ``(x, y)`` (compiled)."""
    bar = tf.keras.utils.Progbar(len(x), verbose=verbose, unit_name="example")
    correct = attacks.correct_under_attack(lambda z: net(z, training=False), x, y, attack,
                                           batch_size, compiled=True, progress=bar)
    return float(correct.mean()) if len(correct) else 0.0
