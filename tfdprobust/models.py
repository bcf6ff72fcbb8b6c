"""Model registry: small image classifiers with a choice of normalization.

Every model is a Keras graph network (a ``tf.keras.Sequential``, or a functional model
such as ResNet-20 with its residual additions) that maps images in [0, 1] to **logits**
(no softmax), so attacks work in pixel space and losses use ``from_logits=True``. A
registered builder returns either a tuple of layers (stacked into a ``Sequential``) or a
whole functional ``tf.keras.Model``.

Normalization (``ModelConfig.norm``):

* ``"none"``: no normalization layer.
* ``"public_bn"``: :class:`~tfdprobust.normalization.PublicBatchNormalization` after
  each convolution; statistics come only from public data.
* ``"group"``: group normalization, which is per-example and needs no data at all.

Example:
    >>> net = build_model(ModelConfig(name="lenet", norm="group"))
    >>> net.output_shape
    (None, 10)
    >>> MODELS.names()
    ('cnn', 'lenet', 'lenet_2fc', 'resnet20', 'tempered_cnn', 'scatternet_cnn', 'scatternet_linear')
"""

import dataclasses
import math
from typing import Callable, Tuple, Union

import tensorflow as tf

from tfdprobust import layers as ours
from tfdprobust.features import Scattering2D, scattering_channels
from tfdprobust.errors import require
from tfdprobust.normalization import PublicBatchNormalization
from tfdprobust.registry import Registry

NORMS = ("none", "public_bn", "group")
WS_MODELS = ("resnet20", "tempered_cnn")
# Models that start with fixed features (tfdprobust.precompute); a literal so the CLIs can
# check --precompute_features before TensorFlow loads (a test checks it against the layers).
PRECOMPUTABLE_MODELS = ("scatternet_cnn", "scatternet_linear")
MODELS: Registry = Registry("model")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which network to build.

    Attributes:
        name: registry key (see :data:`MODELS`).
        norm: ``none``, ``public_bn`` or ``group``.
        input_shape: image shape, HWC.
        num_classes: number of logits.
        activation: hidden activation (``relu`` or ``tanh``; tanh is often better under DP).
        groups: preferred number of groups for group normalization (the largest
            divisor of the channel count not above it is used).
        weight_standardization: standardize every convolution kernel
            (:class:`~tfdprobust.layers.WSConv2D`); resnet20 and tempered_cnn only.
    """

    name: str = "cnn"
    norm: str = "public_bn"
    input_shape: Tuple[int, int, int] = (28, 28, 1)
    num_classes: int = 10
    activation: str = "relu"
    groups: int = 4
    weight_standardization: bool = False

    def __post_init__(self):
        MODELS.get(self.name)  # raises a UsageError listing the models
        require(self.norm in NORMS, f"--norm={self.norm!r} is unknown; choose one of {', '.join(NORMS)}")
        require(self.activation in ("relu", "tanh"), f"--activation must be relu or tanh, got {self.activation!r}")
        require(self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}")
        require(self.groups >= 1, f"groups must be >= 1, got {self.groups}")
        require(not self.weight_standardization or self.name in WS_MODELS,
                f"--weight_standardization needs --model in {', '.join(WS_MODELS)}, got {self.name!r}")


def _norm_layer(cfg: ModelConfig, channels: int, affine: bool = True) -> Tuple[tf.keras.layers.Layer, ...]:
    if cfg.norm == "public_bn":
        return (PublicBatchNormalization(),)
    if cfg.norm == "group":
        groups = max(g for g in range(1, min(cfg.groups, channels) + 1) if channels % g == 0)
        return (tf.keras.layers.GroupNormalization(groups=groups, center=affine, scale=affine),)
    return ()


@MODELS.register("cnn")
def cnn(cfg: ModelConfig) -> Tuple[tf.keras.layers.Layer, ...]:
    """The small MNIST CNN used by SIDP and the Opacus/TF-Privacy MNIST examples.

    conv 16@8x8/2 -> norm -> act -> maxpool 2/1 -> conv 32@4x4/2 -> norm -> act ->
    maxpool 2/1 -> dense 32 -> act -> dense classes (26,010 parameters without norm).
    """
    act = cfg.activation
    L = tf.keras.layers
    return (
        L.Conv2D(16, 8, strides=2, padding="same"), *_norm_layer(cfg, 16), L.Activation(act),
        L.MaxPool2D(2, 1),
        L.Conv2D(32, 4, strides=2, padding="valid"), *_norm_layer(cfg, 32), L.Activation(act),
        L.MaxPool2D(2, 1),
        L.Flatten(), L.Dense(32, activation=act), L.Dense(cfg.num_classes),
    )


@MODELS.register("lenet")
def lenet(cfg: ModelConfig) -> Tuple[tf.keras.layers.Layer, ...]:
    """LeNet as in the Caffe / Opacus MNIST examples (431,080 parameters without norm).

    conv 20@5x5 -> norm -> act -> maxpool 2 -> conv 50@5x5 -> norm -> act -> maxpool 2 ->
    dense 500 -> act -> dense classes. See :func:`lenet_2fc` for the variant of
    Tursynbek et al., "Robustness threats of differential privacy" (seed 004).
    """
    act = cfg.activation
    L = tf.keras.layers
    return (
        L.Conv2D(20, 5), *_norm_layer(cfg, 20), L.Activation(act), L.MaxPool2D(2),
        L.Conv2D(50, 5), *_norm_layer(cfg, 50), L.Activation(act), L.MaxPool2D(2),
        L.Flatten(), L.Dense(500, activation=act), L.Dense(cfg.num_classes),
    )


@MODELS.register("lenet_2fc")
def lenet_2fc(cfg: ModelConfig) -> Tuple[tf.keras.layers.Layer, ...]:
    """The LeNet of Tursynbek, Petiushko and Oseledets, "Robustness threats of differential
    privacy" (seed 004, Section 3): as :func:`lenet`, but with the *two* 500-unit hidden
    dense layers the paper's text describes ("two fully-connected layers with 500 hidden
    units each"), then the classifier.
    """
    act = cfg.activation
    L = tf.keras.layers
    return (*lenet(cfg)[:-1], L.Dense(500, activation=act), L.Dense(cfg.num_classes))


def _conv(cfg: ModelConfig, filters: int, kernel: int, strides: int = 1) -> tf.keras.layers.Layer:
    # A normalization layer right after the convolution makes its bias redundant.
    conv_class = ours.WSConv2D if cfg.weight_standardization else tf.keras.layers.Conv2D
    return conv_class(filters, kernel, strides=strides, padding="same", use_bias=cfg.norm == "none",
                      kernel_initializer="he_normal")


def _apply(h, layers):
    for layer in layers:
        h = layer(h)
    return h


@MODELS.register("resnet20")
def resnet20(cfg: ModelConfig) -> tf.keras.Model:
    """ResNet-20 for CIFAR-10 (He et al., "Deep Residual Learning for Image Recognition", §4.2).

    conv 16@3x3 -> norm -> act, then 3 stages of 3 basic blocks with 16, 32 and 64
    channels (the first block of stages 2 and 3 halves the resolution), global average
    pooling and a dense layer. A basic block is conv-norm-act-conv-norm, plus the
    shortcut, then act; the shortcut is the parameter-free option A (subsample and
    zero-pad, :class:`~tfdprobust.layers.PadShortcut`). 0.27 M parameters with 10
    classes. Normalization is group norm or public-data BN, never private BatchNorm.
    """
    L = tf.keras.layers
    act = cfg.activation
    inputs = tf.keras.Input(cfg.input_shape)
    h = _apply(inputs, (_conv(cfg, 16, 3), *_norm_layer(cfg, 16), L.Activation(act)))
    channels_in = 16
    for stage, channels in enumerate((16, 32, 64)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            y = _apply(h, (_conv(cfg, channels, 3, stride), *_norm_layer(cfg, channels), L.Activation(act),
                           _conv(cfg, channels, 3), *_norm_layer(cfg, channels)))
            shortcut = h if stride == 1 and channels == channels_in else ours.PadShortcut(channels, stride)(h)
            h = L.Activation(act)(L.Add()([y, shortcut]))
            channels_in = channels
    h = L.GlobalAveragePooling2D()(h)
    return tf.keras.Model(inputs, L.Dense(cfg.num_classes)(h))


@MODELS.register("tempered_cnn")
def tempered_cnn(cfg: ModelConfig) -> Tuple[tf.keras.layers.Layer, ...]:
    """The CIFAR-10 CNN of Papernot et al., "Tempered Sigmoid Activations for Deep Learning
    with Differential Privacy" (Table 7), with tempered-sigmoid activations (tanh).

    2 x conv 32@3x3 -> maxpool 2 -> 2 x conv 64@3x3 -> maxpool 2 -> 2 x conv 128@3x3 ->
    maxpool 2 -> dense 128 -> dense classes; each conv is followed by the chosen norm.
    ``cfg.activation`` is ignored: the activation is the tempered sigmoid.
    """
    L = tf.keras.layers
    out = []
    for filters in (32, 64, 128):
        for _ in range(2):
            out += [_conv(cfg, filters, 3), *_norm_layer(cfg, filters), ours.TemperedSigmoid()]
        out.append(L.MaxPool2D(2))
    return (*out, L.Flatten(), L.Dense(128), ours.TemperedSigmoid(), L.Dense(cfg.num_classes))


@MODELS.register("scatternet_cnn")
def scatternet_cnn(cfg: ModelConfig) -> Tuple[tf.keras.layers.Layer, ...]:
    """The ScatterNet + CNN of Tramèr and Boneh, "Differentially Private Learning Needs Better
    Features (or Much More Data)", for 28x28 images (MNIST, Fashion-MNIST).

    scattering J=2, L=8, order 2 (:class:`~tfdprobust.features.Scattering2D`, 28x28xC ->
    7x7x81C, no weights) -> norm -> conv 16@3x3/2 ('same': 4x4) -> act -> conv 32@3x3/1
    ('same') -> act -> dense 32 -> act -> dense classes (33,066 parameters with one input
    channel and no norm). The CNN is that of the authors' code (its ``MNIST_CNN`` on
    scattering input: no pooling); the paper uses tanh (``--activation=tanh``).

    The norm normalizes the scattering coefficients, as in the paper, and nothing else:
    ``--norm=group`` is its group normalization without affine parameters (27 groups over
    the 81 channels for Fashion-MNIST: pass ``--groups=27``; the default preference, 4,
    gives 3); ``--norm=public_bn`` standardizes them with statistics from public data (the
    paper's alternative for MNIST, "BN", instead spends privacy budget on noisy private
    statistics); ``--norm=none`` leaves them raw.

    Difference from the paper: the scattering is computed inside the network on every
    step (and attack step), not once in advance; that changes the cost, not the function.
    """
    act = cfg.activation
    L = tf.keras.layers
    channels = cfg.input_shape[-1] * scattering_channels(J=2, L=8, max_order=2)
    return (
        Scattering2D(J=2, L=8, max_order=2), *_norm_layer(cfg, channels, affine=False),
        L.Conv2D(16, 3, strides=2, padding="same", activation=act),
        L.Conv2D(32, 3, strides=1, padding="same", activation=act),
        L.Flatten(), L.Dense(32, activation=act), L.Dense(cfg.num_classes),
    )


def build_model(cfg: ModelConfig, seed: int = 0) -> tf.keras.Model:
    """Builds the registered network ``cfg.name`` with its weights initialized from ``seed``."""
    tf.keras.utils.set_random_seed(seed)
    builder: Callable[[ModelConfig], Union[tf.keras.Model, Tuple[tf.keras.layers.Layer, ...]]] = MODELS.get(cfg.name)
    built = builder(cfg)
    if isinstance(built, tf.keras.Model):
        built._name = cfg.name  # noqa: SLF001 - Keras has no public renamer
        return built
    return tf.keras.Sequential([tf.keras.Input(cfg.input_shape), *built], name=cfg.name)


def count_parameters(net: tf.keras.Model) -> int:
    return int(sum(math.prod(v.shape) for v in net.trainable_variables))


@MODELS.register("scatternet_linear")
def scatternet_linear(cfg: ModelConfig) -> Tuple[tf.keras.layers.Layer, ...]:
    """The ScatterNet + linear model of Tramèr and Boneh, "Differentially Private Learning Needs
    Better Features (or Much More Data)" (their ``ScatterLinear``), for 28x28 images.

    scattering J=2, L=8, order 2 (7x7x81C, no weights) -> norm (group norm without affine
    weights: ``--norm=group --groups=27`` for Fashion-MNIST) -> flatten -> dense classes
    (39,700 parameters with one input channel). ``cfg.activation`` is unused (no hidden layer).
    """
    channels = cfg.input_shape[-1] * scattering_channels(J=2, L=8, max_order=2)
    return (Scattering2D(J=2, L=8, max_order=2), *_norm_layer(cfg, channels, affine=False),
            tf.keras.layers.Flatten(), tf.keras.layers.Dense(cfg.num_classes))
