"""Gradient-free attacks: SPSA (Uesato et al. 2018)."""

from typing import Optional

import tensorflow as tf

from tfdprobust.attacks.config import ModelFn, project
from tfdprobust.errors import require

def margin_loss(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Best other logit minus the true one: > 0 means misclassified."""
    true = tf.gather(logits, y, batch_dims=1)
    other = tf.reduce_max(logits - 1e9 * tf.one_hot(y, tf.shape(logits)[1]), axis=1)
    return other - true


def spsa_linf(model_fn: ModelFn, x, y, eps: float, steps: int = 20, samples: int = 32,
              delta: float = 0.01, step_size: Optional[float] = None, seed: int = 0) -> tf.Tensor:
    """Gradient-free l_inf attack: sign steps on SPSA estimates of the margin-loss gradient.

    Uesato et al. 2018 ("Adversarial risk and the dangers of evaluating against weak
    attacks") use SPSA to expose gradient masking: it never differentiates the model,
    only queries it, so it still works when gradients are zero or misleading. Batched:
    each step costs ``samples`` forward passes per example (antithetic +-delta pairs).

    Example:
        >>> x_adv = spsa_linf(model_fn, x[:100], y[:100], eps=0.3)  # doctest: +SKIP
    """
    require(samples >= 2 and samples % 2 == 0, f"samples must be even and >= 2, got {samples}")
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    if eps == 0:
        return tf.identity(x)
    alpha = step_size or max(eps / 10, 2.5 * eps / steps)
    gen = tf.random.Generator.from_seed(seed)
    half = samples // 2
    shape = tf.shape(x)
    x_adv = x
    best = x
    best_loss = margin_loss(model_fn(x), y)
    for _ in range(steps):
        d = delta * tf.sign(gen.uniform(tf.concat([[half], shape], 0), -1.0, 1.0))
        d = tf.concat([d, -d], 0)  # [samples, B, ...]
        probe = tf.reshape(x_adv[None] + d, tf.concat([[-1], shape[1:]], 0))
        logits = model_fn(tf.clip_by_value(probe, 0.0, 1.0))
        loss = tf.reshape(margin_loss(logits, tf.tile(y, [samples])), [samples, -1])
        bshape = tf.concat([[samples, shape[0]], tf.ones([len(x.shape) - 1], tf.int32)], 0)
        grad = tf.reduce_mean(tf.reshape(loss, bshape) * d, 0) / (delta * delta)
        x_adv = project(x_adv + alpha * tf.sign(grad), x, eps, "linf")
        cur = margin_loss(model_fn(x_adv), y)
        better = cur > best_loss
        best = tf.where(tf.reshape(better, [-1] + [1] * (len(x.shape) - 1)), x_adv, best)
        best_loss = tf.maximum(cur, best_loss)
    return best

