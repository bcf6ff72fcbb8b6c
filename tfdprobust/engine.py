"""Make your own Keras model private and robust in one call, with the guarantee attached.

:func:`make_private` is the facade over the core (the role Opacus' ``PrivacyEngine``
plays for PyTorch): it validates the user's network with the default-deny per-example
validator, builds the DP + adversarial :class:`~tfdprobust.train_step.PrivateRobustModel`
around it, calibrates the noise to a target epsilon when asked, and returns a
:class:`PrivateTrainer`, a Keras model whose ``fit`` draws its own Poisson batches from
the secret generator and records the DP event of every step it runs.

Example:
    >>> import numpy as np, tensorflow as tf, tfdprobust as tdp
    >>> x = np.random.default_rng(0).random((200, 8, 8, 1), np.float32)
    >>> y = np.arange(200) % 10
    >>> net = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Flatten(),
    ...                            tf.keras.layers.Dense(10)])
    >>> model = tdp.make_private(net, num_examples=len(x), expected_batch_size=20, epochs=2,
    ...                          target_epsilon=3.0, delta=1e-3, learning_rate=0.5)
    >>> history = model.fit(x, y, epochs=2, verbose=0)
    >>> model.epsilon() <= 3.0
    True

The guarantee lives on the object: :meth:`PrivateTrainer.epsilon`,
:meth:`PrivateTrainer.privacy_spent`, :attr:`PrivateTrainer.dp_event` (the composition of
every ``fit`` call's sampled Gaussian mechanism, as dp_accounting events) and
:attr:`PrivateTrainer.guarantee` (one sentence). Under DP, Keras' own fixed-size shuffled
batches are never used silently: ``fit`` refuses a ``batch_size`` other than the expected
batch size, ``shuffle``, ``sample_weight``, ``class_weight`` and ``steps_per_epoch``,
since each would change what the accountant composes.
"""

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple, Union

import dp_accounting
import numpy as np
import tensorflow as tf

from tfdprobust import accounting, attacks, export, randomness, train_step
from tfdprobust import sampling as samplers
from tfdprobust.errors import UsageError, require

AttackLike = Union[None, str, attacks.AttackConfig]


@dataclasses.dataclass(frozen=True)
class Segment:
    """One ``fit`` call as the accountant sees it: its sampler and the steps that ran."""

    sampler: samplers.BatchSampler
    steps: int
    noise_multiplier: float
    extra_noise_multipliers: Tuple[float, ...] = ()

    @property
    def dp_event(self) -> dp_accounting.DpEvent:
        return self.sampler.dp_event(self.noise_multiplier, self.steps, self.extra_noise_multipliers)


def _attack_config(attack: AttackLike) -> Optional[attacks.AttackConfig]:
    if attack is None or isinstance(attack, attacks.AttackConfig):
        return attack
    require(isinstance(attack, str), f"attack must be None, a name or an AttackConfig, got {type(attack).__name__}")
    return attacks.AttackConfig(name=attack, eps=0.1, steps=10, random_start=True)


def make_private(model: tf.keras.Model, *, expected_batch_size: int, l2_clip: float = 1.0,
                 noise_multiplier: Optional[float] = None, target_epsilon: Optional[float] = None,
                 epochs: Optional[float] = None, num_examples: Optional[int] = None,
                 delta: Optional[float] = None, attack: AttackLike = None, adv_weight: float = 0.5,
                 optimizer: str = "sgd", learning_rate: float = 0.5, clipping: str = "flat",
                 sampling: str = "poisson", accountant: str = "rdp", public_images=None,
                 input_shape: Optional[Tuple[int, ...]] = None, ledger_dir: Optional[str] = None,
                 budget: Optional[float] = None, insecure_noise_seed: Optional[int] = None,
                 public_pretraining=None,
                 jit_compile: bool = False) -> "PrivateTrainer":
    """Wraps ``model`` (Sequential, functional or subclassed; inputs -> logits) into a DP
    (and, with ``attack``, adversarially robust) trainer.

    Give either ``noise_multiplier``, or ``target_epsilon`` with ``epochs`` and
    ``num_examples`` (sigma is then calibrated by dp_accounting so that ``epochs`` passes
    of Poisson batches over ``num_examples`` examples spend at most ``target_epsilon``).

    Args:
        model: the user's network. It must map a float batch to logits; every layer must
            be per-example (the validator refuses batch normalization and anything it cannot
            verify). It is trained in place and is what :meth:`PrivateTrainer.export` saves.
        expected_batch_size: B; each example joins each batch with probability B / N.
        l2_clip: C, the per-example gradient norm bound.
        noise_multiplier: sigma (noise std sigma * C on the clipped sum).
        target_epsilon: calibrate sigma to this epsilon at ``delta``.
        epochs: the planned passes (needed with ``target_epsilon``).
        num_examples: N of the training data (needed with ``target_epsilon``).
        delta: the delta epsilon is reported at; default ``1 / (10 N)`` once N is known.
        attack: ``None`` (no adversarial training), an attack name of
            :data:`tfdprobust.attacks.ATTACKS` (l_inf radius 0.1, 10 steps), or an
            :class:`~tfdprobust.attacks.AttackConfig`. Inputs are then taken to lie in [0, 1].
        adv_weight: w in ``(1 - w) CE(clean) + w CE(adversarial)``, combined per example
            before clipping.
        optimizer, learning_rate: a :data:`tfdprobust.optimizers.OPTIMIZERS` name and eta.
        clipping: a :data:`tfdprobust.clipping.CLIPPINGS` strategy.
        sampling: ``poisson`` (add-or-remove-one) or ``shuffle`` (replace-one, no
            amplification; for sources that cannot be sampled, said in the guarantee).
        accountant: ``rdp`` or ``pld`` (dp_accounting).
        public_images: public normalization images, if the network has
            :class:`~tfdprobust.normalization.PublicBatchNormalization` layers.
        input_shape: one example's shape, to build a model that has no weights yet (a
            subclassed model never called, a Sequential without ``Input``).
        ledger_dir: the user-level store of per-data-set privacy ledgers
            (:mod:`tfdprobust.ledger`; default ``$XDG_DATA_HOME/tfdprobust``). Every ``fit``
            appends its planned release to the ledger of its training data, before training,
            so every run on a data set counts toward that data set's budget.
        budget: refuse (before training) a ``fit`` that would take the composition of
            everything the ledger holds about its data set above this epsilon.
        insecure_noise_seed: replay noise and sampling from this seed. Voids the guarantee;
            for tests and debugging only, and every statement then says so.
        public_pretraining: the :class:`tfdprobust.pretrain.PublicPretraining` record of
            what ``model`` saw before (from :func:`tfdprobust.pretrain.prepare`): the
            guarantee and the metadata name it as public and outside the DP accounting.
            Freeze layers (``pretrain.prepare`` / ``pretrain.freeze``) before this call.
        jit_compile: compile the train step with XLA (``TrainConfig.jit_compile``; off by
            default, slower on the CPUs we measured).

    Raises:
        UsageError: one line naming the argument and the fix.
    """
    require(isinstance(model, tf.keras.Model), f"make_private takes a tf.keras.Model, got {type(model).__name__}")
    require(isinstance(expected_batch_size, (int, np.integer)) and expected_batch_size >= 1,
            f"expected_batch_size must be an integer >= 1, got {expected_batch_size!r}")
    if input_shape is not None and not model.built:
        model.build((None, *input_shape))
    require(model.built and model.trainable_variables,
            "the model has no weights yet; pass input_shape=(one example's shape) to make_private, or build it")
    require((noise_multiplier is None) != (target_epsilon is None),
            "give exactly one of noise_multiplier and target_epsilon")
    require(sampling in samplers.SAMPLERS, f"sampling must be one of "
            f"{', '.join(samplers.SAMPLERS.names())}, got {sampling!r}")
    if target_epsilon is not None:
        require(epochs is not None and num_examples is not None,
                "target_epsilon needs epochs and num_examples (the run the noise is calibrated for)")
    if num_examples is not None:
        require(isinstance(num_examples, (int, np.integer)) and num_examples >= expected_batch_size,
                f"num_examples must be an integer >= expected_batch_size={expected_batch_size}, got {num_examples!r}")
    if delta is None and num_examples is not None:
        delta = 1.0 / (10 * num_examples)
    dp = train_step.DPConfig(l2_clip=float(l2_clip), noise_multiplier=float(noise_multiplier or 0.0),
                             clipping=clipping, insecure_noise_seed=insecure_noise_seed)
    config = train_step.TrainConfig(optimizer=optimizer, learning_rate=learning_rate,
                                    expected_batch_size=int(expected_batch_size), dp=dp,
                                    attack=_attack_config(attack), adv_weight=adv_weight,
                                    jit_compile=bool(jit_compile))
    if target_epsilon is not None:
        spec = accounting.AccountingSpec(
            num_examples=int(num_examples), batch_size=int(expected_batch_size), epochs=float(epochs),
            noise_multiplier=0.0, delta=delta, sampling=sampling, accountant=accountant,
            extra_noise_multipliers=config.extra_noise_multipliers)
        sigma = accounting.calibrate_noise(target_epsilon, spec)
        config = dataclasses.replace(config, dp=dataclasses.replace(dp, noise_multiplier=sigma))
    trainer = PrivateTrainer(model, config, public_images=public_images, sampling_name=sampling,
                             accountant=accountant, delta=delta, ledger_dir=ledger_dir, budget=budget)
    trainer.public_pretraining = public_pretraining
    trainer.compile()
    return trainer


class PrivateTrainer(train_step.PrivateRobustModel):
    """A :class:`~tfdprobust.train_step.PrivateRobustModel` that samples its own batches
    and carries its guarantee. Make one with :func:`make_private`."""

    def __init__(self, net: tf.keras.Model, config: train_step.TrainConfig, public_images=None,
                 sampling_name: str = "poisson", accountant: str = "rdp", delta: Optional[float] = None,
                 ledger_dir: Optional[str] = None, budget: Optional[float] = None, **kwargs):
        super().__init__(net, config, public_images=public_images, **kwargs)
        self.ledger_dir, self.budget = ledger_dir, budget
        self.ledger_path: Optional[str] = None
        self.sampling_name = sampling_name
        self.accountant = accountant
        self.delta = delta
        self.segments: List[Segment] = []
        #: :class:`tfdprobust.pretrain.PublicPretraining` (public, outside the accounting) or None
        self.public_pretraining = None
        self._fitting: Optional[Tuple[samplers.BatchSampler, int]] = None
        self._sampling_generator = (randomness.noise_generator(config.dp.insecure_noise_seed).split(1)[0]
                                    if config.dp.enabled else None)

    # -- data -----------------------------------------------------------------------
    def sampler(self, num_examples: int) -> samplers.BatchSampler:
        """This trainer's batch sampler for ``num_examples`` examples."""
        return samplers.make_sampler(self.sampling_name, num_examples, self.config.expected_batch_size)

    def batches(self, x, y) -> tf.data.Dataset:
        """The endless dataset of batches ``fit`` trains on (Poisson: each example joins
        each batch independently with probability q = B / N, from the secret generator)."""
        return self.sampler(len(x)).dataset(x, y, self._sampling_generator)

    # -- training -------------------------------------------------------------------
    def fit(self, x=None, y=None, batch_size=None, epochs: int = 1, verbose="auto", callbacks=None,
            validation_data=None, shuffle=None, sample_weight=None, class_weight=None,
            steps_per_epoch=None, initial_epoch: int = 0, **kwargs):
        """Trains on ``(x, y)`` with the trainer's own batches.

        Args:
            x: NumPy images with ``y`` labels; or a finite ``tf.data.Dataset`` of single
               ``(image, label)`` examples or TFDS-style ``{"image", "label"}`` dicts
               (unbatched, of known size; it is read into memory once: Poisson sampling
               needs every example at every step).
            batch_size: must be ``None`` or the expected batch size given to
                :func:`make_private` (Poisson batches vary around it).
            epochs: passes of ``ceil(N / B)`` steps.
            validation_data: public (non-private) data only: its scores are not covered by
                epsilon, and validating on private data would publish them.

        Raises:
            UsageError: for any Keras option that would change the batches or the
                sensitivity under DP (fixed ``batch_size``, ``shuffle``, ``sample_weight``,
                ``class_weight``, ``steps_per_epoch``), or for a data source of unknown size.
        """
        if not self.config.dp.enabled:
            return super().fit(x, y, batch_size=batch_size, epochs=epochs, verbose=verbose, callbacks=callbacks,
                               validation_data=validation_data, shuffle=True if shuffle is None else shuffle,
                               sample_weight=sample_weight, class_weight=class_weight,
                               steps_per_epoch=steps_per_epoch, initial_epoch=initial_epoch, **kwargs)
        b = self.config.expected_batch_size
        require(batch_size is None or batch_size == b,
                f"fit(batch_size={batch_size}) would use Keras' fixed-size batches, which the DP accounting "
                f"does not describe; drop batch_size (Poisson batches of expected size {b} are drawn) or "
                "pass expected_batch_size to make_private")
        for name, value in (("shuffle", shuffle), ("sample_weight", sample_weight), ("class_weight", class_weight),
                            ("steps_per_epoch", steps_per_epoch)):
            require(value is None, f"fit({name}=...) is not supported under DP (it would change the batches "
                    "or an example's weight, which the accounting does not describe); drop it")
        require(not kwargs, f"fit() got options the DP trainer does not take: {', '.join(sorted(kwargs))}")
        x, y = as_arrays(x, y)
        require(len(x) >= b, f"the training data has {len(x)} examples, fewer than expected_batch_size={b}")
        if self.delta is None:
            self.delta = 1.0 / (10 * len(x))
        require(0 < self.delta < 1.0 / len(x),
                f"delta={self.delta} must be in (0, 1/N) = (0, {1.0 / len(x):.3g}) for N={len(x)}; pass delta")
        sampler = self.sampler(len(x))
        self._record(x, y, epochs - initial_epoch, sampler)
        extra = [PrivacyLog(self)]
        if self.public_images is not None:
            extra.append(train_step.PublicStatisticsCallback())
        self._fitting = (sampler, int(self.optimizer.iterations.numpy()))
        try:
            history = super().fit(self.batches(x, y), epochs=epochs, steps_per_epoch=sampler.steps_per_epoch,
                                  verbose=verbose, initial_epoch=initial_epoch,
                                  callbacks=[*extra, *(callbacks or [])], validation_data=validation_data)
        finally:  # steps that ran count, even when a callback stopped or an error ended the fit
            ran = self.fitting_steps()
            self._fitting = None
            if ran:
                self.segments.append(self._segment(sampler, ran))
        return history

    def _record(self, x: np.ndarray, y: np.ndarray, epochs: int, sampler) -> None:
        """Checks ``budget`` and appends this fit's planned release to its data set's ledger
        (:mod:`tfdprobust.ledger`), before any step runs. A fit that a callback stops early
        stays recorded at its plan: the ledger may over-count, never under-count."""
        from tfdprobust import ledger

        spec = accounting.AccountingSpec(
            num_examples=len(x), batch_size=self.config.expected_batch_size, epochs=max(epochs, 1),
            noise_multiplier=self.config.dp.noise_multiplier, delta=self.delta, sampling=self.sampling_name,
            accountant=self.accountant, extra_noise_multipliers=self.config.extra_noise_multipliers)
        book = ledger.record_training(spec, ledger.fingerprint((x, y)), self.ledger_dir, self.budget, "python_api",
                                      type(self.net).__name__,
                                      insecure=self.config.dp.insecure_noise_seed is not None)
        self.ledger_path = book.path

    def fitting_steps(self) -> int:
        """Steps run so far by the ``fit`` in progress (0 outside ``fit``)."""
        if self._fitting is None:
            return 0
        return int(self.optimizer.iterations.numpy()) - self._fitting[1]

    def _segment(self, sampler: samplers.BatchSampler, steps: int) -> Segment:
        return Segment(sampler, steps, self.config.dp.noise_multiplier, self.config.extra_noise_multipliers)

    def projected_epsilon(self, more_steps: int, delta: Optional[float] = None) -> float:
        """Epsilon of every step so far (the ``fit`` in progress included) plus ``more_steps``
        of the current ``fit``: what the callbacks log and budget against."""
        done = self.segments
        if self._fitting is not None:
            steps = self.fitting_steps() + more_steps
            self.segments = done + ([self._segment(self._fitting[0], steps)] if steps else [])
        try:
            return self.epsilon(delta)
        finally:
            self.segments = done

    # -- the guarantee --------------------------------------------------------------
    @property
    def dp_event(self) -> dp_accounting.DpEvent:
        """Everything this trainer released about its training data: the composition of
        each ``fit`` call's sampled Gaussian mechanism over the steps that ran."""
        return dp_accounting.ComposedDpEvent([s.dp_event for s in self.segments])

    @property
    def steps(self) -> int:
        return sum(s.steps for s in self.segments)

    def _relation(self) -> dp_accounting.NeighboringRelation:
        relations = {s.sampler.neighboring_relation for s in self.segments}
        require(len(relations) <= 1, "fit calls with different sampling cannot be composed into one epsilon")
        return relations.pop() if relations else samplers.SAMPLERS.get(self.sampling_name).neighboring_relation

    def epsilon(self, delta: Optional[float] = None) -> float:
        """Epsilon at ``delta`` (default: the trainer's) of everything trained so far,
        by dp_accounting from :attr:`dp_event`; ``inf`` without noise, 0 before any step."""
        delta = self.delta if delta is None else delta
        if not self.config.dp.enabled or self.config.dp.insecure_noise_seed is not None:
            return math.inf
        if not self.segments:
            return 0.0
        if self.config.dp.noise_multiplier == 0:
            return math.inf
        require(delta is not None and 0 < delta < 1, f"delta must be in (0, 1), got {delta}")
        return accounting.epsilon_of_event(self.dp_event, delta, self.accountant, self._relation())

    def privacy_spent(self, delta: Optional[float] = None) -> Tuple[float, float]:
        """``(epsilon, delta)`` of everything trained so far."""
        delta = self.delta if delta is None else delta
        return self.epsilon(delta), delta

    @property
    def guarantee(self) -> str:
        """One sentence: which guarantee :meth:`epsilon` is, or why there is none; with
        public pre-training, what was public and that it is outside the accounting."""
        from tfdprobust import pretrain

        return pretrain.extend_guarantee(self._dp_guarantee(), self.public_pretraining)

    def _dp_guarantee(self) -> str:
        dp = self.config.dp
        if not dp.enabled:
            return "no differential privacy (DP disabled)"
        if dp.insecure_noise_seed is not None:
            return randomness.INSECURE_WARNING
        if not self.segments:
            return "nothing trained yet: epsilon 0"
        eps = self.epsilon()
        sampler = self.segments[-1].sampler
        return (f"({eps:.3g}, {self.delta:g})-DP, example-level, {sampler.adjacency} adjacency, "
                f"{self.accountant.upper()} accounting (dp_accounting) over {self.steps} steps in "
                f"{len(self.segments)} fit call(s) with sigma={dp.noise_multiplier:.4g}, C={dp.l2_clip:g}; "
                f"{sampler.describe()}; noise and sampling drawn from OS entropy")

    def metadata(self) -> Dict[str, Any]:
        """What :meth:`export` writes beside the model: settings and the guarantee only
        (nothing computed from the private data but the model itself)."""
        dp = self.config.dp
        eps, delta = self.privacy_spent()
        return {"epsilon": eps, "delta": delta, "guarantee": self.guarantee, "noise_multiplier": dp.noise_multiplier,
                "l2_clip": dp.l2_clip, "clipping": dp.clipping, "expected_batch_size": self.config.expected_batch_size,
                "steps": self.steps, "sampling": self.sampling_name, "accountant": self.accountant,
                "dp_event": repr(self.dp_event), "attack": (dataclasses.asdict(self.config.attack)
                                                           if self.config.robust else None),
                "adv_weight": self.config.adv_weight, "optimizer": self.config.optimizer,
                "learning_rate": self.config.learning_rate,
                "public_pretraining": (self.public_pretraining.as_dict()
                                       if self.public_pretraining is not None else None)}

    def export(self, path: str, overwrite: bool = False) -> str:
        """Saves the network (SavedModel) with :meth:`metadata`, atomically."""
        return export.export_model(self.net, path, self.metadata(), overwrite=overwrite)


class PrivacyLog(tf.keras.callbacks.Callback):
    """Adds ``epsilon`` (every step so far, this ``fit`` included) to each epoch's logs,
    before Keras' progress bar prints them."""

    def __init__(self, trainer: PrivateTrainer):
        super().__init__()
        self.trainer = trainer

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epsilon"] = self.trainer.projected_epsilon(0)


class StopAtEpsilon(tf.keras.callbacks.Callback):
    """Ends ``fit`` before the first step that would take epsilon past ``budget``.

    Example:
        ``model.fit(x, y, epochs=50, callbacks=[tdp.StopAtEpsilon(3.0)])``
    """

    def __init__(self, budget: float, delta: Optional[float] = None):
        super().__init__()
        require(math.isfinite(budget) and budget > 0, f"budget must be a finite number > 0, got {budget}")
        self.budget, self.delta = budget, delta
        self.allowed: Optional[int] = None

    def on_train_begin(self, logs=None):
        trainer: PrivateTrainer = self.model
        fits = lambda steps: trainer.projected_epsilon(steps, self.delta) <= self.budget  # noqa: E731
        require(fits(1), f"the privacy budget {self.budget} is spent: one more step would exceed it")
        low, high = 1, 2
        while fits(high) and high < 10**9:  # steps grow epsilon monotonically: bracket, then bisect
            low, high = high, high * 2
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        self.allowed = low

    def on_train_batch_end(self, batch, logs=None):
        if self.model.fitting_steps() + 1 > self.allowed:
            self.model.stop_training = True


def as_arrays(x, y=None) -> Tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` as NumPy arrays from NumPy data, a finite unbatched
    ``tf.data.Dataset`` of ``(image, label)`` pairs, or a TFDS split of
    ``{"image", "label"}`` dicts (integer images are scaled to [0, 1]).

    Raises:
        UsageError: for an infinite, unknown-size or batched dataset, or mismatched sizes.
    """
    if isinstance(x, tf.data.Dataset):
        require(y is None, "pass labels inside the dataset, not as y")
        size = int(x.cardinality().numpy())
        require(size >= 0, "the dataset's size is unknown or infinite; pass a finite dataset (e.g. "
                "ds.take(N), or tfds.load(..., split='train') which knows its size) or NumPy arrays")
        spec = x.element_spec
        if isinstance(spec, dict):
            require({"image", "label"} <= set(spec), f"a dict dataset needs 'image' and 'label' keys, has "
                    f"{', '.join(sorted(spec))}")
            x = x.map(lambda d: (d["image"], d["label"]))
            spec = x.element_spec
        require(isinstance(spec, tuple) and len(spec) == 2, "the dataset must hold (image, label) pairs")
        images, labels = [], []
        for image, label in x.as_numpy_iterator():
            images.append(image)
            labels.append(label)
        require(images, "the dataset is empty")
        x, y = np.stack(images), np.asarray(labels)
        require(y.ndim == 1, "the dataset looks batched (its labels have a batch axis); pass it unbatched: "
                "tfdprobust draws its own Poisson batches")
    require(y is not None, "fit needs labels: fit(x, y) or a dataset of (image, label) pairs")
    x, y = np.asarray(x), np.asarray(y)
    if np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32) / 255.0
    require(len(x) == len(y), f"x has {len(x)} examples but y has {len(y)}")
    require(y.ndim == 1, f"labels must be one integer per example (shape [N]), got shape {y.shape}")
    return x.astype(np.float32), y.astype(np.int64)
