"""Per-example clipping and Gaussian noise: the differentially private core of DP-SGD.

Everything takes *per-example* gradients: a list with one tensor per variable, each
of shape ``[batch, *variable.shape]``. One row is one private example's whole
gradient, and its global L2 norm (over all variables together) is what gets clipped.

Clipping strategies are registered in :data:`CLIPPINGS` (the ``--clipping`` flag). Each
bounds every example's whole contribution by the bound ``C`` it is given, so the noise
std is always sigma * C. A strategy only sees each example's per-variable *squared
norms* and returns a *scale* per example and variable (:func:`clip_factors`): the
clipped row is the gradient times its scale. That is what lets the fast path
(:mod:`tfdprobust.per_example`) clip without materializing the gradients at all: it gets
the squared norms per layer (ghost norms where cheaper) and forms the clipped sum with
one weight-gradient op per layer on the scaled output gradients (book-keeping).

* ``flat``: ``g * min(1, C / ||g||)`` (Abadi et al., "Deep Learning with Differential
  Privacy").
* ``per_layer``: each variable (a layer's kernel or bias) clipped on its own to
  ``C / sqrt(K)`` for K variables, so the whole gradient stays within C (McMahan et al.,
  "Learning Differentially Private Recurrent Language Models").
* ``automatic``: ``C * g / (||g|| + gamma)`` (Bu et al., "Automatic Clipping:
  Differentially Private Deep Learning Made Easier and Stronger", AUTO-S). Every example
  is normalized, so its contribution is < C; with C = 1 this is exactly Bu et al.'s
  sensitivity-1 rule, and another C only rescales the learning rate by C.
* ``adaptive``: flat clipping at a bound that follows a target quantile of the norms
  (Andrew et al., "Differentially Private Learning with Adaptive Clipping"):
  :func:`quantile_update` moves C geometrically using a *noised* count of unclipped
  examples, drawn from the same secret generator as the gradient noise. That count is a
  second Gaussian release per step; :func:`count_noise_multiplier` gives its noise
  multiplier, which the accounting composes into epsilon.

Example:
    >>> import tensorflow as tf
    >>> g = [tf.constant([[3.0, 4.0], [0.3, 0.4]])]      # two examples, norms 5 and 0.5
    >>> clipped, norms = clip_per_example(g, l2_clip=1.0)
    >>> [round(float(n), 3) for n in norms]
    [5.0, 0.5]
    >>> [[round(float(v), 3) for v in row] for row in clipped[0]]
    [[0.6, 0.8], [0.3, 0.4]]
"""

import math
from typing import Callable, List, Sequence, Tuple, Union

import tensorflow as tf

from tfdprobust.registry import Registry

Bound = Union[float, tf.Tensor, tf.Variable]


def per_example_norms(per_example_grads: Sequence[tf.Tensor]) -> tf.Tensor:
    """Global L2 norm of each example's gradient, shape ``[batch]``."""
    squares = [
        tf.reduce_sum(tf.reshape(tf.square(g), [tf.shape(g)[0], -1]), axis=1)
        for g in per_example_grads
    ]
    return tf.sqrt(tf.add_n(squares))


def clip_per_example(
    per_example_grads: Sequence[tf.Tensor], l2_clip: float
) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """Scales each example's gradient to global L2 norm at most ``l2_clip``.

    An example whose gradient is not finite (inf or NaN anywhere, or a norm that
    overflows) is dropped: it contributes exactly zero, which keeps the bound, instead of
    0 * inf = NaN wiping out the whole sum.

    Returns:
        The clipped per-example gradients and the *unclipped* norms (non-finite for the
        dropped examples; :func:`dropped_count` counts them).
    """
    return clip(per_example_grads, l2_clip, "flat")


def dropped_count(norms: tf.Tensor) -> tf.Tensor:
    """How many examples :func:`clip_per_example` dropped for a non-finite gradient."""
    return tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(norms)), tf.int32))


def clipped_sum(
    per_example_grads: Sequence[tf.Tensor], l2_clip: float
) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """Sum over the batch of the clipped gradients, and the unclipped norms."""
    clipped, norms = clip_per_example(per_example_grads, l2_clip)
    return [tf.reduce_sum(g, axis=0) for g in clipped], norms


def add_gaussian_noise(
    summed_grads: Sequence[tf.Tensor],
    noise_multiplier: float,
    l2_clip: float,
    generator: tf.random.Generator,
) -> List[tf.Tensor]:
    """Adds N(0, (noise_multiplier * l2_clip)^2) independently to every coordinate.

    Noise is added once per step to the *sum*, as in DP-SGD; its std is sigma * C
    because C bounds one example's contribution to that sum.

    Args:
        summed_grads: the clipped gradient sum, one tensor per variable.
        noise_multiplier: sigma.
        l2_clip: C.
        generator: where the noise comes from; make it with
            :func:`tfdprobust.randomness.noise_generator`, which seeds it from OS entropy.
            Every draw advances its state, so no two variables or steps share noise.
    """
    std = noise_multiplier * l2_clip
    return [g + generator.normal(tf.shape(g), stddev=std, dtype=g.dtype) for g in summed_grads]


def squared_norms(per_example_grads: Sequence[tf.Tensor]) -> List[tf.Tensor]:
    """Each example's squared L2 norm of each variable's gradient: one ``[batch]`` per variable."""
    return [tf.reduce_sum(tf.reshape(tf.square(g), [tf.shape(g)[0], -1]), axis=1) for g in per_example_grads]


#: ``fn(squared_norms, norms, bound, gamma) -> scales``: ``squared_norms`` holds one ``[batch]``
#: tensor per variable, ``norms`` the global norms; ``scales`` is one ``[batch]`` tensor per
#: variable (a clipped row is the gradient row times its scale). Non-finite examples are
#: handled by :func:`clip_factors`, not by the strategy.
CLIPPINGS: Registry = Registry("clipping")


def _flat_scale(norms, bound):
    # min(1, C / norm); the max() guards 0/0 for all-zero gradients.
    return tf.minimum(tf.cast(1.0, norms.dtype), bound / tf.maximum(norms, tf.cast(1e-12, norms.dtype)))


@CLIPPINGS.register("flat")
def _flat(squared, norms, bound, gamma):
    del gamma
    return [_flat_scale(norms, bound)] * len(squared)


@CLIPPINGS.register("adaptive")
def _adaptive(squared, norms, bound, gamma):
    # The clipping itself is flat; what adapts is the bound (see quantile_update).
    del gamma
    return [_flat_scale(norms, bound)] * len(squared)


@CLIPPINGS.register("automatic")
def _automatic(squared, norms, bound, gamma):
    # C / (||g|| + gamma) * ||g|| < C for every example, including tiny ones.
    return [bound / (norms + tf.cast(gamma, norms.dtype))] * len(squared)


@CLIPPINGS.register("per_layer")
def _per_layer(squared, norms, bound, gamma):
    del gamma, norms
    # Equal budgets C / sqrt(K): sum_k (C / sqrt(K))^2 = C^2, so the whole row stays <= C.
    share = bound / math.sqrt(len(squared))
    return [_flat_scale(tf.sqrt(s), share) for s in squared]


def clip_factors(squared: Sequence[tf.Tensor], bound: "Bound", clipping: str = "flat",
                 gamma: float = 0.01) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """Per-example scales of the registered strategy ``clipping``, from squared norms alone.

    Args:
        squared: one ``[batch]`` tensor per variable, each example's squared gradient norm
            of that variable (:func:`squared_norms`, or ghost norms).

    Returns:
        ``(scales, norms)``: one ``[batch]`` scale per variable (exactly 0 for an example
        whose global norm is not finite: it is dropped), and the unclipped global norms.
    """
    norms = tf.sqrt(tf.add_n(list(squared)))
    bound = tf.cast(bound, norms.dtype)
    fn: Callable = CLIPPINGS.get(clipping)
    finite = tf.math.is_finite(norms)
    zero = tf.zeros_like(norms)
    return [tf.where(finite, s, zero) for s in fn(squared, norms, bound, gamma)], norms


def scale_rows(per_example_grads: Sequence[tf.Tensor], scales: Sequence[tf.Tensor],
               norms: tf.Tensor) -> List[tf.Tensor]:
    """Each row times its scale; rows with a non-finite global norm become exactly zero
    (not 0 * inf = NaN)."""
    out = []
    for g, scale in zip(per_example_grads, scales):
        shape = tf.concat([tf.shape(g)[:1], tf.ones([tf.rank(g) - 1], tf.int32)], 0)
        keep = tf.reshape(tf.math.is_finite(norms), shape)
        safe = tf.where(keep, g, tf.zeros([], g.dtype))  # broadcast: no zeros as large as g (see factors._zero_dropped)
        out.append(safe * tf.cast(tf.reshape(scale, shape), g.dtype))
    return out


def clip(per_example_grads: Sequence[tf.Tensor], bound: Bound, clipping: str = "flat",
         gamma: float = 0.01) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """Clips every example's gradient with the registered strategy ``clipping``.

    Returns:
        The clipped rows (each row's global norm at most ``bound``) and the unclipped
        global norms (non-finite for dropped examples).
    """
    scales, norms = clip_factors(squared_norms(per_example_grads), bound, clipping, gamma)
    return scale_rows(per_example_grads, scales, norms), norms


def privatize(
    per_example_grads: Sequence[tf.Tensor],
    l2_clip: Bound,
    noise_multiplier: float,
    normalizer: tf.Tensor,
    generator: tf.random.Generator,
    clipping: str = "flat",
    gamma: float = 0.01,
) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """Clip, sum, add noise, divide: the DP-SGD gradient estimate.

    Args:
        l2_clip: C, the bound on each example's contribution (a tensor or variable for
            adaptive clipping, whose bound changes between steps).
        normalizer: what the noisy sum is divided by. Use the *expected* batch size
            under Poisson sampling: dividing by the realised size would leak it.
        generator: the secret noise generator (see :func:`add_gaussian_noise`).
        clipping: a :data:`CLIPPINGS` strategy (default ``flat``, as before strategies existed).
        gamma: the stabilizer of ``automatic`` clipping.

    Returns:
        The private average gradient (one tensor per variable) and the unclipped
        per-example norms (for live monitoring only: they are not private).
    """
    clipped, norms = clip(per_example_grads, l2_clip, clipping, gamma)
    summed = [tf.reduce_sum(g, axis=0) for g in clipped]
    noised = add_gaussian_noise(summed, noise_multiplier, l2_clip, generator)
    return [g / tf.cast(normalizer, g.dtype) for g in noised], norms


# --------------------------------------------------------------------------- adaptive bound
def count_noise_multiplier(count_noise_std: float) -> float:
    """Noise multiplier of adaptive clipping's count release.

    Each example adds ``b_i - 1/2`` with ``b_i = 1[||g_i|| <= C]`` (centred as in Andrew et
    al. and tensorflow-privacy's ``QuantileAdaptiveClipSumQuery``), so adding or removing one
    example moves the sum by 1/2: the multiplier is ``std / (1/2)``.
    """
    return count_noise_std / 0.5


def quantile_update(
    norms: tf.Tensor,
    bound: tf.Variable,
    target_quantile: float,
    learning_rate: float,
    count_noise_std: float,
    normalizer: tf.Tensor,
    generator: tf.random.Generator,
) -> tf.Tensor:
    """Andrew et al.'s geometric update of the clipping bound from a noised count.

    ``f~ = (sum_i (b_i - 1/2) + N(0, count_noise_std^2)) / normalizer + 1/2`` estimates
    the fraction of unclipped examples, then ``C <- C * exp(-lr * (f~ - target))``. The
    noise comes from ``generator`` (the secret one); dividing by the *expected* batch size
    keeps the realised size out of it. Everything after the noise is post-processing.

    Args:
        norms: this step's unclipped per-example norms (non-finite for dropped examples,
            which count as clipped: b_i = 0 keeps the sensitivity at 1/2).
        bound: the variable holding C; it is updated in place.

    Returns:
        The noised unclipped fraction ``f~``.
    """
    unclipped = tf.cast(tf.logical_and(tf.math.is_finite(norms), norms <= bound), tf.float32)
    centred = tf.reduce_sum(unclipped - 0.5)
    noised = centred + generator.normal([], stddev=count_noise_std, dtype=tf.float32)
    fraction = noised / tf.cast(normalizer, tf.float32) + 0.5
    bound.assign(bound * tf.exp(-learning_rate * (fraction - target_quantile)))
    return fraction
