"""Handcrafted, data-independent image features: the scattering transform as a Keras layer.

Tramèr and Boneh, "Differentially Private Learning Needs Better Features (or Much More
Data)", train small networks with DP-SGD on the scattering transform of Oyallon and Mallat
("Deep Roto-Translation Scattering for Object Classification"; Bruna and Mallat,
"Invariant Scattering Convolution Networks") instead of on pixels, and beat end-to-end
private CNNs on MNIST, Fashion-MNIST and CIFAR-10. The transform is a fixed cascade of
Morlet wavelet convolutions, complex moduli and a Gaussian low-pass: with ``J`` scales,
``L`` angles and order 2 it maps each image channel to ``1 + J L + L^2 J (J - 1) / 2``
channels (81 for ``J = 2, L = 8``) at ``2^J``-fold lower resolution (28x28 -> 7x7).

:class:`Scattering2D` has no weights and no state, and its output row depends on its input
row alone (each image is transformed on its own), so under DP it costs no privacy and no
example influences another. It is declared per-example (default-deny list of
:mod:`tfdprobust.per_example`); the validator's numerical probe checks that too. The layers
after it keep their own per-example gradient rules; the transform itself is only
differentiated through (for attacks and for gradients with respect to the input).

The transform is kymatio's (Andreux et al., "Kymatio: Scattering Transforms in Python"),
its TensorFlow 2-D frontend. kymatio 0.3.0's public entry points (``kymatio.tensorflow``,
``kymatio.keras``, ``kymatio.numpy``) also import its 3-D harmonic scattering, which needs
``scipy.special.sph_harm``, removed in SciPy 1.15; so this module imports the 2-D frontend
module itself, which runs on both stacks (TensorFlow 2.15 and the newest with tf-keras).

Example:
    >>> import tensorflow as tf
    >>> Scattering2D()(tf.zeros([2, 28, 28, 1])).shape
    TensorShape([2, 7, 7, 81])
"""

from typing import Tuple

import tensorflow as tf

from tfdprobust.per_example.registry import register_per_example_layer


def _kymatio_scattering(J: int, shape: Tuple[int, int], L: int, max_order: int):
    """kymatio's TensorFlow 2-D scattering for images of ``shape`` (see the module docstring
    for why the frontend module is imported directly)."""
    try:
        from kymatio.scattering2d.frontend.tensorflow_frontend import ScatteringTensorFlow2D
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError(f"Scattering2D needs kymatio (pip install 'kymatio>=0.3,<0.4'): {e}") from e
    return ScatteringTensorFlow2D(J=J, shape=shape, L=L, max_order=max_order)


def scattering_channels(J: int, L: int, max_order: int) -> int:
    """Coefficients per input channel: order 0, ``J L`` of order 1, ``L^2 J (J - 1) / 2`` of order 2."""
    return 1 + J * L + (L * L * J * (J - 1) // 2 if max_order == 2 else 0)


@register_per_example_layer
@tf.keras.utils.register_keras_serializable(package="tfdprobust")
class Scattering2D(tf.keras.layers.Layer):
    """The 2-D scattering transform of NHWC images, as NHWC feature maps.

    Each input channel is transformed separately; the output has ``C * K`` channels, the
    ``K = scattering_channels(J, L, max_order)`` coefficients of input channel 0 first
    (order 0, then order 1 by scale and angle, then order 2), then channel 1's, ... (the
    order of Tramèr and Boneh's reshape of kymatio's ``[B, C, K, H', W']`` output).

    Args:
        J: number of scales; the output resolution is the input's divided by ``2**J``
            (the height and width must be multiples of ``2**J``).
        L: number of wavelet angles in ``[0, pi)``.
        max_order: 1 or 2.
    """

    def __init__(self, J: int = 2, L: int = 8, max_order: int = 2, **kwargs):
        super().__init__(**kwargs)
        if J < 1 or L < 1 or max_order not in (1, 2):
            raise ValueError(f"Scattering2D needs J >= 1, L >= 1 and max_order 1 or 2, got {J}, {L}, {max_order}")
        self.J, self.L, self.max_order = int(J), int(L), int(max_order)

    def build(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank != 4 or None in input_shape[1:]:
            raise ValueError(f"{self.name} needs NHWC images of known size, got shape {input_shape}")
        height, width, channels = input_shape[1:]
        step = 2 ** self.J
        if height % step or width % step:
            raise ValueError(f"{self.name}: image size {height}x{width} is not a multiple of 2**J = {step}")
        self._out_hwc = (height // step, width // step, channels * scattering_channels(self.J, self.L, self.max_order))
        # kymatio's object holds the filter bank (NumPy arrays, no variables); kept out of
        # Keras' attribute tracking so the layer stays weightless and exports as constants.
        object.__setattr__(self, "_transform", _kymatio_scattering(self.J, (height, width), self.L, self.max_order))
        super().build(input_shape)

    def call(self, inputs):
        height, width, channels = inputs.shape[1:]
        out_h, out_w, out_c = self._out_hwc
        images = tf.reshape(tf.transpose(tf.cast(inputs, tf.float32), [0, 3, 1, 2]), [-1, height, width])
        coefficients = self._transform.scattering(images)  # [B * C, K, H', W']
        coefficients = tf.reshape(coefficients, [-1, channels, out_c // channels, out_h, out_w])
        out = tf.reshape(tf.transpose(coefficients, [0, 3, 4, 1, 2]), [-1, out_h, out_w, out_c])
        return tf.cast(out, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        input_shape = tf.TensorShape(input_shape)
        step = 2 ** self.J
        channels = input_shape[3] * scattering_channels(self.J, self.L, self.max_order)
        return tf.TensorShape([input_shape[0], input_shape[1] // step, input_shape[2] // step, channels])

    def get_config(self):
        return {**super().get_config(), "J": self.J, "L": self.L, "max_order": self.max_order}
