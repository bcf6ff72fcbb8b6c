"""Batch selection, and the ``DpEvent`` of the selection the code actually runs.

One object both draws the batches and describes them to the accountant, so the sampling
probability, the number of steps and the neighbouring relation cannot drift apart (the
idea of jax_privacy's batch-selection strategies). Samplers are registered by name; the
name is the ``--sampling`` flag.

* ``poisson`` (:class:`PoissonSampler`): at every step each private example joins the
  batch independently with probability ``q = B / N``; the membership mask is drawn
  *inside* ``tf.data`` from a secret generator (:mod:`tfdprobust.randomness`), so batch
  sizes are Binomial(N, q) and nobody can replay them from ``--seed``. The guarantee is
  the Poisson-subsampled Gaussian mechanism composed over the steps, under
  add-or-remove-one adjacency.
* ``shuffle`` (:class:`ShuffleSampler`): a secret permutation per epoch cut into batches
  of B. Removing an example re-partitions every later batch, so no add-or-remove claim
  follows; what holds is *replace-one* adjacency, where an example's slot changes one
  batch per epoch by at most 2C (sensitivity 2C, i.e. an effective noise multiplier
  sigma/2), composed over the epochs, with no amplification by sampling (Chua et al.,
  "How private are DP-SGD implementations?").

Example:
    >>> PoissonSampler(60000, 256).dp_event(1.1, steps=3516)
    SelfComposedDpEvent(event=PoissonSampledDpEvent(sampling_probability=0.004266666666666667, event=GaussianDpEvent(noise_multiplier=1.1)), count=3516)
    >>> ShuffleSampler(60000, 256).dp_event(1.1, steps=3516)
    SelfComposedDpEvent(event=GaussianDpEvent(noise_multiplier=0.55), count=15)
"""

import abc
import dataclasses
import math
from typing import Tuple

import dp_accounting

from tfdprobust.errors import require
from tfdprobust.registry import Registry

SAMPLERS: Registry = Registry("sampling")
NeighboringRelation = dp_accounting.NeighboringRelation
ADJACENCY_NAMES = {
    NeighboringRelation.ADD_OR_REMOVE_ONE: "add-or-remove-one",
    NeighboringRelation.REPLACE_ONE: "replace-one",
}


@dataclasses.dataclass(frozen=True)
class BatchSampler(abc.ABC):
    """How a run picks its batches from ``num_examples`` private examples.

    Attributes:
        num_examples: N, the number of private training examples.
        batch_size: B, the (expected) batch size.
    """

    num_examples: int
    batch_size: int

    #: The neighbouring relation under which :meth:`dp_event` is a valid description.
    neighboring_relation = NeighboringRelation.ADD_OR_REMOVE_ONE

    def __post_init__(self):
        require(self.num_examples > 0, f"the training set is empty (N={self.num_examples})")
        require(0 < self.batch_size <= self.num_examples,
                f"--batch_size={self.batch_size} must be in [1, {self.num_examples}] (the number of "
                "training examples)")

    @property
    def steps_per_epoch(self) -> int:
        """``ceil(N / B)``: the steps the training loop runs per epoch."""
        return math.ceil(self.num_examples / self.batch_size)

    @property
    def adjacency(self) -> str:
        return ADJACENCY_NAMES[self.neighboring_relation]

    @abc.abstractmethod
    def dataset(self, x, y, generator):
        """An endless ``tf.data.Dataset`` of ``(images, labels)`` batches.

        Args:
            x, y: the private examples (NumPy arrays, first axis N).
            generator: a ``tf.random.Generator`` from :func:`tfdprobust.randomness.noise_generator`;
                all of the selection's randomness comes from it.
        """

    @abc.abstractmethod
    def dp_event(self, noise_multiplier: float, steps: int,
                 extra_noise_multipliers: Tuple[float, ...] = ()) -> dp_accounting.DpEvent:
        """The event of ``steps`` DP-SGD steps with noise multiplier sigma on these batches.

        Args:
            extra_noise_multipliers: further Gaussian releases made on every step's batch,
                each given as its noise std over its add-or-remove-one sensitivity (e.g. the
                noised clipped-example count of adaptive clipping, :mod:`tfdprobust.clipping`).
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """One clause for the guarantee statement."""


@SAMPLERS.register("poisson")
@dataclasses.dataclass(frozen=True)
class PoissonSampler(BatchSampler):
    """Poisson sampling with rate ``q = B / N``, drawn in the input pipeline."""

    @property
    def sampling_probability(self) -> float:
        return self.batch_size / self.num_examples

    def dataset(self, x, y, generator):
        require(len(x) == self.num_examples, f"the sampler was made for N={self.num_examples} examples, got {len(x)}")
        return self._masked(x, y, generator)

    def shard_dataset(self, x, y, generator, index: int, count: int):
        """The batches of shard ``index`` of ``count``: examples ``index, index + count, ...``,
        each joining with the *global* rate q. The ``count`` shards' batches of one step
        together are one Poisson sample of all N examples, if each shard's generator is
        its own (:mod:`tfdprobust.distribute` gives one shard to each replica)."""
        require(len(x) == self.num_examples, f"the sampler was made for N={self.num_examples} examples, got {len(x)}")
        require(0 <= index < count, f"shard index {index} is not in [0, {count})")
        return self._masked(x[index::count], y[index::count], generator)

    def _masked(self, x, y, generator):
        import tensorflow as tf

        n, q = len(x), self.sampling_probability

        def select(images, labels):
            # float64 uniforms: P(u < q) = q up to 2**-53, so the accounted q is the real one.
            mask = generator.uniform([n], dtype=tf.float64) < q
            return tf.boolean_mask(images, mask), tf.boolean_mask(labels, mask)

        # from_tensors + map keeps the whole selection in the tf.data graph (no Python
        # generator); the dataset holds one reference to the arrays, not a copy per step.
        return tf.data.Dataset.from_tensors((x, y)).repeat().map(select).prefetch(2)

    def dp_event(self, noise_multiplier: float, steps: int,
                 extra_noise_multipliers: Tuple[float, ...] = ()) -> dp_accounting.DpEvent:
        # Every release of a step sees the same Poisson batch: the sampled event is their
        # composition (dp_accounting's RDP accountant handles Gaussians composed under one
        # PoissonSampledDpEvent exactly, as one Gaussian of the combined multiplier).
        return dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(
                self.sampling_probability, step_event(noise_multiplier, extra_noise_multipliers)),
            steps)

    def describe(self) -> str:
        return (f"Poisson sampling with q={self.sampling_probability:.4g} (each example joins each "
                "batch independently; drawn from OS entropy in the input pipeline)")


@SAMPLERS.register("shuffle")
@dataclasses.dataclass(frozen=True)
class ShuffleSampler(BatchSampler):
    """A fresh secret permutation every epoch, cut into batches of ``B`` (last one smaller)."""

    neighboring_relation = NeighboringRelation.REPLACE_ONE

    def dataset(self, x, y, generator):
        import tensorflow as tf

        # tf.data's shuffle takes an integer seed: draw it from the secret generator.
        seed = int(generator.uniform_full_int([], tf.int64).numpy())
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shuffle(self.num_examples, seed=seed, reshuffle_each_iteration=True)
        return ds.batch(self.batch_size).repeat().prefetch(2)

    def epochs_touched(self, steps: int) -> int:
        return math.ceil(steps / self.steps_per_epoch)

    def dp_event(self, noise_multiplier: float, steps: int,
                 extra_noise_multipliers: Tuple[float, ...] = ()) -> dp_accounting.DpEvent:
        # Replace-one: an example's batch sum moves by up to 2C, so the Gaussian of std
        # sigma*C has noise multiplier sigma/2 relative to the sensitivity; the same holds
        # for every extra release (twice its add-or-remove sensitivity). Each started
        # epoch touches the example once (parallel composition inside an epoch).
        return dp_accounting.SelfComposedDpEvent(
            step_event(noise_multiplier / 2, tuple(m / 2 for m in extra_noise_multipliers)),
            self.epochs_touched(steps))

    def describe(self) -> str:
        return ("shuffled batches (each example once per epoch): replace-one adjacency with "
                "sensitivity 2C, no amplification by sampling, one Gaussian mechanism per epoch")


def step_event(noise_multiplier: float, extra_noise_multipliers: Tuple[float, ...] = ()) -> dp_accounting.DpEvent:
    """The Gaussian releases of one step: the gradient's, then any extra ones, composed."""
    gradient = dp_accounting.GaussianDpEvent(noise_multiplier)
    if not extra_noise_multipliers:
        return gradient
    return dp_accounting.ComposedDpEvent([gradient, *(dp_accounting.GaussianDpEvent(m) for m in extra_noise_multipliers)])


def make_sampler(name: str, num_examples: int, batch_size: int) -> BatchSampler:
    """The registered sampler ``name`` (the ``--sampling`` flag) for N and B."""
    return SAMPLERS.get(name)(num_examples, batch_size)
