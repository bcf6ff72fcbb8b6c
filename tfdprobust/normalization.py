"""Batch normalization whose statistics come only from public data.

This is the virtual-batch / public-data normalization of Davody et al. (2020)
("On the effect of normalization layers on differentially private training"):
each private batch travels with a public batch (default 128 KMNIST images for
MNIST), and the normalization statistics are computed on the public images only.

How it stays private:

* :class:`PublicBatchNormalization` normalizes with *stored* statistics (non-trainable
  variables). Given those, its output for one example depends on that example alone,
  so one private example can never change another's output or gradient, and
  per-example gradients are well defined.
* :func:`update_public_statistics` is the only thing that writes the statistics. It
  runs the public batch through the network's layer graph (Sequential or functional,
  residual blocks included) and sets each layer's
  mean/variance from the public activations. The train step calls it once per step,
  before the attack and the gradient; nothing else (attacks, evaluation) changes state.
* Public images are never trained on: they only produce statistics, which are treated
  as constants in the gradient (the moments are computed outside the gradient tape).

At inference the stored statistics (from the public batch, with the final weights)
are used, and an exported model carries them as variables.
"""

import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="tfdprobust")
class PublicBatchNormalization(tf.keras.layers.Layer):
    """Normalizes the last axis with statistics set from public data.

    Example:
        >>> import numpy as np
        >>> layer = PublicBatchNormalization()
        >>> public = tf.constant(np.random.default_rng(0).normal(3.0, 2.0, (512, 4)), tf.float32)
        >>> _ = layer(public)                      # builds the variables
        >>> layer.set_statistics_from(public)
        >>> out = layer(public)
        >>> bool(abs(float(tf.reduce_mean(out))) < 1e-5)
        True
    """

    def __init__(self, epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def build(self, input_shape):
        channels = int(input_shape[-1])
        self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        # Every replica of a tf.distribute strategy computes the same statistics from the same
        # public batch, so the first replica's assignment stands for all (mirrored copies agree).
        first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        self.public_mean = self.add_weight(
            name="public_mean", shape=(channels,), initializer="zeros", trainable=False, aggregation=first)
        self.public_variance = self.add_weight(
            name="public_variance", shape=(channels,), initializer="ones", trainable=False, aggregation=first)
        super().build(input_shape)

    def call(self, inputs):
        return tf.nn.batch_normalization(
            inputs, self.public_mean, self.public_variance, self.beta, self.gamma, self.epsilon)

    def set_statistics_from(self, public_inputs: tf.Tensor) -> None:
        """Sets the stored statistics to the moments of ``public_inputs`` (public data only)."""
        axes = list(range(len(public_inputs.shape) - 1))
        mean, variance = tf.nn.moments(tf.stop_gradient(public_inputs), axes=axes)
        self.public_mean.assign(mean)
        self.public_variance.assign(variance)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def has_public_normalization(net: tf.keras.Model) -> bool:
    return any(isinstance(layer, PublicBatchNormalization) for layer in net.layers)


def update_public_statistics(net: tf.keras.Model, public_images: tf.Tensor) -> None:
    """Recomputes every :class:`PublicBatchNormalization` layer's statistics from public data.

    Walks the network's layer graph (``Sequential`` or functional, e.g. a ResNet's residual
    blocks; see :func:`tfdprobust.graph.run`) in topological order, so that each layer's
    statistics are computed on public activations produced with the *new* statistics of
    the layers before it. Every layer runs in inference mode, so no other state changes.

    Raises:
        TypeError: if ``net`` is a subclassed model (its layer graph is unknown).
    """
    from tfdprobust import graph  # graph imports nothing of ours; kept local for clarity

    if not graph.is_graph_network(net):
        raise TypeError("public-data normalization needs a Sequential or functional network")

    def hook(layer, args, kwargs):
        if isinstance(layer, PublicBatchNormalization):
            layer.set_statistics_from(args[0])
        return None  # then call the layer as usual, with its new statistics

    graph.run(net, public_images, hook)
