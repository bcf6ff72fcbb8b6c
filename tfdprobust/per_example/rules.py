"""The registered per-layer rules (Dense, Conv2D, WSConv2D, public-data batch norm, group
norm) and the exact per-layer fallback for a trainable layer without one."""

from typing import Callable, List, Sequence

import tensorflow as tf

from tfdprobust import layers
from tfdprobust.normalization import PublicBatchNormalization
from tfdprobust.per_example.factors import ConvFactors, DenseFactors, _positions, _rows
from tfdprobust.per_example.registry import LayerRule, register_rule


def _layer_activation(layer, pre):
    return layer.activation(pre)


@register_rule(tf.keras.layers.Dense)
def _dense_rule() -> LayerRule:
    def forward(layer, a):
        if a.shape.rank == 2:
            pre = tf.matmul(a, layer.kernel)
        else:  # a sequence (or any leading axes): as Keras' Dense, contract the last axis
            pre = tf.tensordot(a, layer.kernel, [[a.shape.rank - 1], [0]])
            pre.set_shape(a.shape[:-1].concatenate(layer.kernel.shape[-1:]))
        if layer.use_bias:
            pre = pre + layer.bias
        return pre, None  # out = layer.activation(pre), applied by LayerRule.run

    def grads(layer, a, dpre):
        a3, g3 = _positions(a), _positions(dpre)
        out = [DenseFactors(a3, g3)]
        if layer.use_bias:
            out.append(tf.reduce_sum(g3, axis=1))
        return out

    return LayerRule(forward, grads, activation=_layer_activation)


@register_rule(tf.keras.layers.Conv2D)
def _conv2d_rule() -> LayerRule:
    def forward(layer, a):
        pre = layer.convolution_op(a, layer.kernel)
        if layer.use_bias:
            pre = tf.nn.bias_add(pre, layer.bias)
        return pre, None  # out = layer.activation(pre), applied by LayerRule.run

    def grads(layer, a, dpre):
        out = [ConvFactors(a, dpre, layer.kernel_size, layer.strides, layer.dilation_rate, layer.padding)]
        if layer.use_bias:
            out.append(tf.reduce_sum(dpre, axis=[1, 2]))
        return out

    def applies(layer):
        return layer.groups == 1 and layer.data_format == "channels_last"

    return LayerRule(forward, grads, applies, _layer_activation)


@register_rule(layers.WSConv2D)
def _ws_conv2d_rule() -> LayerRule:
    conv = _conv2d_rule()

    def grads(layer, a, dpre):
        # The conv rule gives each example's gradient with respect to the standardized
        # kernel w^ = (w - mean) / s; pull it back through the standardization (a function
        # of the weights only, so the same Jacobian for every example): the batch-norm
        # backward formula over each output channel's fan-in,
        # dw = (g - mean(g) - w^ * mean(g * w^)) / s. Not a factor form any more, so
        # these gradients are always materialized.
        out = conv.grads(layer, a, dpre)
        kernel = layer.kernel
        fan_in_axes = list(range(len(kernel.shape) - 1))
        mean, variance = tf.nn.moments(kernel, axes=fan_in_axes, keepdims=True)
        inv_s = tf.math.rsqrt(variance + layer.ws_epsilon)
        w_hat = (kernel - mean) * inv_s
        g = _rows(out[0], kernel)
        axes = [1 + k for k in fan_in_axes]
        g_mean = tf.reduce_mean(g, axis=axes, keepdims=True)
        gw_mean = tf.reduce_mean(g * w_hat, axis=axes, keepdims=True)
        out[0] = (g - g_mean - w_hat * gw_mean) * inv_s
        return out

    return LayerRule(conv.forward, grads, conv.applies, conv.activation)


def _affine_norm_grads(xhat, dpre, layer) -> List[tf.Tensor]:
    axes = list(range(1, len(dpre.shape) - 1))
    out = []
    for weight in layer.trainable_weights:
        if weight is getattr(layer, "gamma", None):
            out.append(tf.reduce_sum(dpre * xhat, axis=axes))
        elif weight is getattr(layer, "beta", None):
            out.append(tf.reduce_sum(dpre, axis=axes))
        else:
            raise NotImplementedError(f"unexpected weight {weight.name} in {layer.name}")
    return out


@register_rule(PublicBatchNormalization)
def _public_bn_rule() -> LayerRule:
    def normalize(layer, a):
        return (a - layer.public_mean) * tf.math.rsqrt(layer.public_variance + layer.epsilon)

    def forward(layer, a):
        xhat = normalize(layer, a)
        out = xhat * layer.gamma + layer.beta
        return out, out, xhat

    def grads(layer, xhat, dpre):
        return _affine_norm_grads(xhat, dpre, layer)

    return LayerRule(forward, grads)


@register_rule(tf.keras.layers.GroupNormalization)
def _group_norm_rule() -> LayerRule:
    def normalize(layer, a):
        channels = a.shape[-1]
        shape = tf.concat([tf.shape(a)[:-1], [layer.groups, channels // layer.groups]], 0)
        grouped = tf.reshape(a, shape)
        axes = list(range(1, len(a.shape) - 1)) + [len(a.shape)]
        mean, variance = tf.nn.moments(grouped, axes=axes, keepdims=True)
        return tf.reshape((grouped - mean) * tf.math.rsqrt(variance + layer.epsilon), tf.shape(a))

    def forward(layer, a):
        # Keras' computation, keeping x̂ for the scale's per-example gradient
        xhat = normalize(layer, a)
        out = xhat * layer.gamma if layer.scale else xhat
        out = out + layer.beta if layer.center else out
        return out, out, xhat

    def grads(layer, xhat, dpre):
        return _affine_norm_grads(xhat, dpre, layer)

    def applies(layer):
        # only the channels-last grouping that normalize() implements
        return layer.axis in (-1, len(layer.input_shape) - 1)

    return LayerRule(forward, grads, applies)


# --------------------------------------------------------------------------- per-layer fallback
def _vectorizable(layer: tf.keras.layers.Layer) -> bool:
    """Whether ``tf.vectorized_map`` can run ``layer``'s per-example gradients on this
    machine. Not for grouped convolutions: the vectorizer turns their filter gradient
    into a ``Conv2DBackpropFilter`` loop that has no CPU kernel (Keras runs grouped
    convolutions through XLA, which a ``tf.map_fn`` loop keeps)."""
    convs = (tf.keras.layers.Conv1D, tf.keras.layers.Conv2D, tf.keras.layers.Conv3D)
    return not any(isinstance(m, convs) and getattr(m, "groups", 1) > 1 for m in [layer, *layer.submodules])


def one_example_vjps(fn: Callable, variables: Sequence[tf.Variable], elems, vectorize: bool = True):
    """``[rows, *v.shape]`` for each variable: ``fn(elems_i)``'s gradients, one row at a time.

    ``fn(one) -> scalar`` gets row ``i`` of every tensor in ``elems`` (leading axis kept, of
    size 1). ``tf.vectorized_map`` when ``vectorize``, else a ``tf.map_fn`` loop."""
    def one(row):
        row = tf.nest.map_structure(lambda t: t[None], row)
        with tf.GradientTape() as tape:
            value = fn(row)
        grads = tape.gradient(value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [tf.convert_to_tensor(g) for g in grads]

    if vectorize:
        return tf.vectorized_map(one, elems)
    signature = [tf.TensorSpec(v.shape, v.dtype) for v in variables]
    return tf.map_fn(one, elems, fn_output_signature=signature)


def _fallback_rule(kwargs: dict) -> LayerRule:
    """The exact per-layer path for a trainable layer without a usable rule: per-example
    gradients by one-example vector-Jacobian products through this layer alone."""

    def forward(layer, a):
        out = layer(a, **kwargs)
        return out, out

    def grads(layer, a, dout):
        weights = layer.trainable_weights

        def fn(row):
            one_a, one_dout = row
            return tf.reduce_sum(layer(one_a, **kwargs) * tf.stop_gradient(one_dout))

        return one_example_vjps(fn, weights, (a, dout), vectorize=_vectorizable(layer))

    return LayerRule(forward, grads)
