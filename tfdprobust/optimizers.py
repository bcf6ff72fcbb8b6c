"""Optimizers that know the privatization: the optimizer registry and DP-AdamBC.

The registry (:data:`OPTIMIZERS`, the ``--optimizer`` flag) holds two kinds of entries:

* :class:`OptimizerSpec`: a Keras-2 (legacy) optimizer class with fixed keyword arguments
  (sgd, momentum, adam, rmsprop, adagrad). These can also be wrapped by
  tensorflow-privacy's DP optimizers (``--dp_path=tf_privacy``).
* :class:`NoiseAwareSpec`: a factory that also receives the :class:`NoiseScale` of the
  private gradient it will be fed (sigma, C, B), e.g. ``dp_adambc``.

DP-AdamBC (Tang, Shpilevskiy and Lécuyer, "DP-AdamBC: Your DP-Adam Is Actually DP-SGD
(Unless You Apply Bias Correction)", AAAI 2024): the private gradient is the clipped mean
plus Gaussian noise of known per-coordinate variance ``Phi = (sigma C / B)^2``; Adam's
second moment estimates ``E[g~^2] = g^2 + Phi``, so DP-Adam divides by ``sqrt(v + Phi)``
and behaves like DP-SGD with a rescaled learning rate. DP-AdamBC subtracts ``Phi``:

    m_t = b1 m + (1 - b1) g~,    v_t = b2 v + (1 - b2) g~^2,
    m^ = m_t / (1 - b1^t),       v^ = v_t / (1 - b2^t),
    theta <- theta - lr * m^ / sqrt(max(v^ - Phi, gamma')).

The optimizer only post-processes the privatized gradient, so it costs no privacy.

Example:
    >>> opt = DPAdamBC(learning_rate=0.1, noise_std=0.0)   # Phi = 0: Adam without epsilon
    >>> v = tf.Variable([1.0])
    >>> _ = opt.apply_gradients([(tf.constant([0.5]), v)])
    >>> round(float(v.numpy()[0]), 4)                       # first Adam step is lr * sign(g)
    0.9
"""

import dataclasses
from typing import Callable, Optional, Tuple, Union

import tensorflow as tf

from tfdprobust.registry import Registry


@dataclasses.dataclass(frozen=True)
class NoiseScale:
    """The noise in the averaged private gradient an optimizer receives.

    Attributes:
        noise_multiplier: sigma.
        l2_clip: C, a float or (adaptive clipping) the variable holding the current bound.
        batch_size: B, the expected batch size the noisy sum is divided by.
    """

    noise_multiplier: float
    l2_clip: Union[float, tf.Variable]
    batch_size: int

    def std(self) -> tf.Tensor:
        """Per-coordinate std of the noise in the averaged gradient: sigma * C / B."""
        return self.noise_multiplier * tf.cast(self.l2_clip, tf.float32) / float(self.batch_size)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """A Keras-2 (legacy) optimizer class and the fixed keyword arguments it gets."""

    keras_class: type
    kwargs: Tuple[Tuple[str, float], ...] = ()

    def build(self, learning_rate: float, noise: Optional[NoiseScale] = None) -> tf.keras.optimizers.Optimizer:
        del noise  # a plain optimizer does not look at the noise
        return self.keras_class(**dict(self.kwargs, learning_rate=learning_rate))


@dataclasses.dataclass(frozen=True)
class NoiseAwareSpec:
    """An optimizer built from the learning rate and the :class:`NoiseScale` (or ``None``
    without DP). ``keras_class`` is ``None``: tensorflow-privacy cannot wrap it."""

    factory: Callable[[float, Optional[NoiseScale]], tf.keras.optimizers.Optimizer]
    keras_class = None
    requires_dp: bool = True

    def build(self, learning_rate: float, noise: Optional[NoiseScale] = None) -> tf.keras.optimizers.Optimizer:
        return self.factory(learning_rate, noise)


class DPAdamBC(tf.keras.optimizers.legacy.Optimizer):
    """Adam with the DP-noise variance removed from the second moment (Tang et al. 2024).

    Args:
        learning_rate: eta.
        noise_std: sigma * C / B, the per-coordinate noise std of the gradients it is fed:
            a float, or a zero-argument callable returning a tensor (adaptive clipping's
            bound changes every step; :meth:`NoiseScale.std`).
        beta_1, beta_2: Adam's moment decays.
        epsilon: gamma', the floor of the corrected second moment, ``max(v^ - Phi, gamma')``.
    """

    def __init__(self, learning_rate=1e-3, noise_std: Union[float, Callable[[], tf.Tensor]] = 0.0,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8, name: str = "DPAdamBC",
                 **kwargs):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("beta_1", beta_1)
        self._set_hyper("beta_2", beta_2)
        self.epsilon = epsilon
        self._noise_std = noise_std

    def noise_variance(self) -> tf.Tensor:
        """Phi = (sigma C / B)^2."""
        std = self._noise_std() if callable(self._noise_std) else tf.constant(self._noise_std, tf.float32)
        return tf.square(tf.cast(std, tf.float32))

    def _create_slots(self, var_list):
        for var in var_list:
            self.add_slot(var, "m")
        for var in var_list:
            self.add_slot(var, "v")

    def _resource_apply_dense(self, grad, var, apply_state=None):
        dtype = var.dtype.base_dtype
        lr = self._decayed_lr(dtype)
        beta_1 = tf.cast(self._get_hyper("beta_1"), dtype)
        beta_2 = tf.cast(self._get_hyper("beta_2"), dtype)
        t = tf.cast(self.iterations + 1, dtype)
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        m_t = m.assign(beta_1 * m + (1.0 - beta_1) * grad)
        v_t = v.assign(beta_2 * v + (1.0 - beta_2) * tf.square(grad))
        m_hat = m_t / (1.0 - tf.pow(beta_1, t))
        v_hat = v_t / (1.0 - tf.pow(beta_2, t))
        corrected = tf.maximum(v_hat - tf.cast(self.noise_variance(), dtype), self.epsilon)
        return var.assign_sub(lr * m_hat / tf.sqrt(corrected))

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        raise NotImplementedError("DPAdamBC has no sparse update; densify the gradient")

    def get_config(self):
        return {**super().get_config(), "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "beta_1": self._serialize_hyperparameter("beta_1"),
                "beta_2": self._serialize_hyperparameter("beta_2"), "epsilon": self.epsilon}


def _dp_adambc(learning_rate: float, noise: Optional[NoiseScale]) -> DPAdamBC:
    return DPAdamBC(learning_rate=learning_rate, noise_std=noise.std if noise is not None else 0.0)


OPTIMIZERS: Registry = Registry("optimizer")
_L = tf.keras.optimizers.legacy
OPTIMIZERS.register("sgd")(OptimizerSpec(_L.SGD))
OPTIMIZERS.register("momentum")(OptimizerSpec(_L.SGD, (("momentum", 0.9),)))  # heavy ball
OPTIMIZERS.register("adam")(OptimizerSpec(_L.Adam))
OPTIMIZERS.register("rmsprop")(OptimizerSpec(_L.RMSprop))
OPTIMIZERS.register("adagrad")(OptimizerSpec(_L.Adagrad))
OPTIMIZERS.register("dp_adambc")(NoiseAwareSpec(_dp_adambc))
