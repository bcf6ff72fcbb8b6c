"""Per-example clipping and Gaussian noise: the differentially private core of DP-SGD.

Everything takes *per-example* gradients: a list with one tensor per variable, each
of shape ``[batch, *variable.shape]``. One row is one private example's whole
gradient, and its global L2 norm (over all variables together) is what gets clipped.

Example:
    >>> import tensorflow as tf
    >>> g = [tf.constant([[3.0, 4.0], [0.3, 0.4]])]      # two examples, norms 5 and 0.5
    >>> clipped, norms = clip_per_example(g, l2_clip=1.0)
    >>> [round(float(n), 3) for n in norms]
    [5.0, 0.5]
    >>> [[round(float(v), 3) for v in row] for row in clipped[0]]
    [[0.6, 0.8], [0.3, 0.4]]
"""

from typing import List, Optional, Sequence, Tuple

import tensorflow as tf


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
    norms = per_example_norms(per_example_grads)
    finite = tf.math.is_finite(norms)
    # min(1, C / norm); the max() guards 0/0 for all-zero gradients.
    scale = tf.where(finite, tf.minimum(1.0, l2_clip / tf.maximum(norms, 1e-12)), 0.0)
    clipped = []
    for g in per_example_grads:
        shape = tf.concat([tf.shape(g)[:1], tf.ones([tf.rank(g) - 1], tf.int32)], 0)
        keep = tf.reshape(finite, shape)
        safe = tf.where(keep, g, tf.zeros_like(g))
        clipped.append(safe * tf.cast(tf.reshape(scale, shape), g.dtype))
    return clipped, norms


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


def privatize(
    per_example_grads: Sequence[tf.Tensor],
    l2_clip: float,
    noise_multiplier: float,
    normalizer: tf.Tensor,
    generator: tf.random.Generator,
) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """Clip, sum, add noise, divide: the DP-SGD gradient estimate.

    Args:
        normalizer: what the noisy sum is divided by. Use the *expected* batch size
            under Poisson sampling: dividing by the realised size would leak it.
        generator: the secret noise generator (see :func:`add_gaussian_noise`).

    Returns:
        The private average gradient (one tensor per variable) and the unclipped
        per-example norms (for live monitoring only: they are not private).
    """
    summed, norms = clipped_sum(per_example_grads, l2_clip)
    noised = add_gaussian_noise(summed, noise_multiplier, l2_clip, generator)
    return [g / tf.cast(normalizer, g.dtype) for g in noised], norms
