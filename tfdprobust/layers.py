"""Layers the registered networks need beyond Keras': all per-example by construction.

* :class:`PadShortcut`: the parameter-free "option A" shortcut of He et al., "Deep
  Residual Learning for Image Recognition" (CIFAR-10 ResNets): subsample by the stride
  and zero-pad the new channels.
* :class:`TemperedSigmoid`: ``s * sigmoid(T x) - o`` of Papernot et al., "Tempered
  Sigmoid Activations for Deep Learning with Differential Privacy".
* :class:`WSConv2D`: a convolution with weight standardization (Qiao et al., "Micro-Batch
  Training with Batch-Channel Normalization and Weight Standardization"), which pairs
  with group normalization in DP ResNets (Kurakin et al.; De et al., "Unlocking
  High-Accuracy Differentially Private Image Classification through Scale").

Each output row depends on its own input row only; :mod:`tfdprobust.per_example` knows
the first two as per-example layers and has a gradient rule for the third.

Example:
    >>> import tensorflow as tf
    >>> PadShortcut(8, stride=2)(tf.ones([1, 4, 4, 4])).shape
    TensorShape([1, 2, 2, 8])
    >>> float(TemperedSigmoid()(tf.constant(0.5)))  == float(tf.tanh(0.5))
    True
"""

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tfdprobust")
class PadShortcut(tf.keras.layers.Layer):
    """Identity shortcut that subsamples by ``stride`` and zero-pads to ``channels``.

    Args:
        channels: output channel count (>= the input's).
        stride: spatial subsampling (keeps every ``stride``-th row and column).
    """

    def __init__(self, channels: int, stride: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.channels = channels
        self.stride = stride

    def call(self, inputs):
        h = inputs[:, ::self.stride, ::self.stride, :]
        extra = self.channels - inputs.shape[-1]
        # Half the new channels before, half after, as in He et al.'s option A.
        return tf.pad(h, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "stride": self.stride}


@tf.keras.utils.register_keras_serializable(package="tfdprobust")
class TemperedSigmoid(tf.keras.layers.Layer):
    """``scale * sigmoid(inverse_temperature * x) - offset``, elementwise.

    The defaults (2, 2, 1) are tanh, which Papernot et al. found best on MNIST, Fashion-MNIST
    and CIFAR-10 among the tempered sigmoids they tuned.
    """

    def __init__(self, scale: float = 2.0, inverse_temperature: float = 2.0, offset: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale
        self.inverse_temperature = inverse_temperature
        self.offset = offset

    def call(self, inputs):
        return self.scale * tf.sigmoid(self.inverse_temperature * inputs) - self.offset

    def get_config(self):
        return {**super().get_config(), "scale": self.scale,
                "inverse_temperature": self.inverse_temperature, "offset": self.offset}


def standardize_kernel(kernel: tf.Tensor, epsilon: float) -> tf.Tensor:
    """Each output channel's weights (the last axis) to mean 0 and variance 1 over its fan-in."""
    axes = list(range(len(kernel.shape) - 1))
    mean, variance = tf.nn.moments(kernel, axes=axes, keepdims=True)
    return (kernel - mean) * tf.math.rsqrt(variance + epsilon)


@tf.keras.utils.register_keras_serializable(package="tfdprobust")
class WSConv2D(tf.keras.layers.Conv2D):
    """``Conv2D`` whose kernel is standardized per output channel before every use.

    The standardization depends on the weights only, never on data, so the layer stays
    per-example.
    """

    def __init__(self, *args, ws_epsilon: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.ws_epsilon = ws_epsilon

    def convolution_op(self, inputs, kernel):
        return super().convolution_op(inputs, standardize_kernel(kernel, self.ws_epsilon))

    def get_config(self):
        return {**super().get_config(), "ws_epsilon": self.ws_epsilon}
