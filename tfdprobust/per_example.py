"""Fast per-example gradients from per-layer rules (the Opacus "grad sampler" idea).

One batched forward and one batched backward pass give, for every trainable layer,
its input activations ``a`` and the gradient of the summed loss with respect to its
pre-activation output ``dz``. Because every example's loss depends only on that
example (normalization statistics are constants, see :mod:`tfdprobust.normalization`),
row ``i`` of ``dz`` is example ``i``'s own output gradient, and a per-layer rule turns
``(a_i, dz_i)`` into example ``i``'s parameter gradient:

* Dense: ``a_i ⊗ dz_i`` and ``dz_i``;
* Conv2D: image patches of ``a_i`` (``tf.image.extract_patches``) contracted with ``dz_i``;
* public-data batch norm and group norm: ``sum(dz_i * x̂_i)`` and ``sum(dz_i)``.

The forward pass walks the Keras layer graph (:mod:`tfdprobust.graph`), so functional
networks with residual additions and concatenations (ResNet-20) take the fast path as
well as ``Sequential`` ones. Rules are registered per layer class with
:func:`register_rule`; besides the above, :class:`~tfdprobust.layers.WSConv2D` (weight
standardization) has one. A network with a trainable layer that has no rule falls back
to ``tf.vectorized_map`` (slower, exact).

``tf.vectorized_map`` over single-example passes is the slow reference: TensorFlow's
vectorizer runs ``Conv2DBackpropFilter`` in a ``while_loop``, which is what makes it
slow on convolutional networks. ``tests/test_per_example.py`` checks the two agree.
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from tfdprobust import graph, layers
from tfdprobust.errors import UsageError
from tfdprobust.normalization import PublicBatchNormalization


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """How to get per-example gradients for one layer class.

    Attributes:
        forward: ``forward(layer, a) -> (pre, out)``: the pre-activation output (the
            tensor whose gradient the rule consumes) and the layer output.
        grads: ``grads(layer, a, dpre) -> [per-example grad for each trainable weight]``
            in the order of ``layer.trainable_weights``, each with a leading batch axis.
        applies: optional ``applies(layer) -> bool``; a layer it rejects (e.g. a grouped
            convolution) has no rule, so its network takes the exact vectorized path
            instead of failing at trace time.
    """

    forward: Callable
    grads: Callable
    applies: Optional[Callable] = None


_RULES: Dict[type, LayerRule] = {}


def register_rule(layer_class: type):
    """Decorator registering a :class:`LayerRule` factory for ``layer_class``."""

    def decorator(factory: Callable[[], LayerRule]):
        _RULES[layer_class] = factory()
        return factory

    return decorator


def rule_for(layer: tf.keras.layers.Layer) -> Optional[LayerRule]:
    """The rule for ``layer``, or ``None`` when it has none or cannot use it."""
    rule = _RULES.get(type(layer))
    if rule is not None and rule.applies is not None and not rule.applies(layer):
        return None
    return rule


def supports(net: tf.keras.Model) -> bool:
    """Whether the fast path applies: ``net`` is a graph network (``Sequential`` or
    functional, one input and one output) and each of its trainable layers has a usable
    per-example rule. A nested model counts as a layer without a rule."""
    return (graph.is_graph_network(net) and len(net.inputs) == 1 and len(net.outputs) == 1
            and all(not layer.trainable_weights or rule_for(layer) is not None for layer in net.layers))


# --------------------------------------------------------------------------- safety
L = tf.keras.layers
#: Layers whose output row i depends on input row i alone (in the inference mode the
#: train step runs them in), with no rule of their own: they are exact on the
#: ``tf.vectorized_map`` path and harmless on the fast path. Default-deny: anything not
#: here and without a rule is refused under DP (like Opacus' ModuleValidator).
_PER_EXAMPLE_LAYERS = {
    L.InputLayer, L.Activation, L.ReLU, L.LeakyReLU, L.ELU, L.PReLU, L.Softmax,
    L.Flatten, L.Reshape, L.Permute, L.RepeatVector, L.Rescaling, L.CenterCrop,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
    L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D, L.ZeroPadding1D, L.ZeroPadding2D, L.Cropping1D, L.Cropping2D,
    L.UpSampling1D, L.UpSampling2D,
    # inference mode (training=False, which is how the train step calls the network)
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.GaussianNoise, L.GaussianDropout,
    L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum, L.Concatenate,
    # trainable, per-example, but no fast rule (exact through tf.vectorized_map)
    L.Conv1D, L.Conv3D, L.DepthwiseConv2D, L.SeparableConv2D, L.Conv2DTranspose,
    L.LayerNormalization, L.Embedding, L.EinsumDense,
    # ours (tfdprobust.layers): shape-only and elementwise
    layers.PadShortcut, layers.TemperedSigmoid,
}


def register_per_example_layer(layer_class: type) -> type:
    """Declares that ``layer_class`` never mixes examples (usable as a class decorator).

    Only register a layer whose output for one example depends on that example alone
    and which changes no state when called with ``training=False``.
    """
    _PER_EXAMPLE_LAYERS.add(layer_class)
    return layer_class


def validate_network(net: tf.keras.Model) -> None:
    """Refuses a network that may let one private example influence another.

    Every layer (nested ones too) must have a per-example rule or be a known
    per-example layer; containers (``Sequential``, functional models) are checked
    through their layers.

    Raises:
        UsageError: naming the first offending layer and the fix.
    """
    for layer in [net, *net.submodules]:
        if not isinstance(layer, tf.keras.layers.Layer) or isinstance(layer, tf.keras.Model):
            continue
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            raise UsageError(
                f"layer {layer.name} is BatchNormalization, which mixes private examples; "
                "use --norm=public_bn or --norm=group for DP training")
        if type(layer) in _RULES or type(layer) in _PER_EXAMPLE_LAYERS:
            continue
        raise UsageError(
            f"layer {layer.name} ({type(layer).__name__}) is not known to be per-example, so DP "
            "training refuses it (it could mix private examples); replace it, or declare it with "
            "tfdprobust.per_example.register_per_example_layer if each output row depends only on "
            "its own input row")


# --------------------------------------------------------------------------- rules
@register_rule(tf.keras.layers.Dense)
def _dense_rule() -> LayerRule:
    def forward(layer, a):
        pre = tf.matmul(a, layer.kernel)
        if layer.use_bias:
            pre = pre + layer.bias
        return pre, layer.activation(pre)

    def grads(layer, a, dpre):
        out = [tf.einsum("bi,bj->bij", a, dpre)]
        if layer.use_bias:
            out.append(dpre)
        return out

    return LayerRule(forward, grads)


@register_rule(tf.keras.layers.Conv2D)
def _conv2d_rule() -> LayerRule:
    def forward(layer, a):
        pre = layer.convolution_op(a, layer.kernel)
        if layer.use_bias:
            pre = tf.nn.bias_add(pre, layer.bias)
        return pre, layer.activation(pre)

    def grads(layer, a, dpre):
        kh, kw = layer.kernel_size
        sh, sw = layer.strides
        dh, dw = layer.dilation_rate
        # Patches are laid out (row, col, channel), matching the kernel's first three axes.
        patches = tf.image.extract_patches(
            a, sizes=[1, kh, kw, 1], strides=[1, sh, sw, 1], rates=[1, dh, dw, 1],
            padding=layer.padding.upper())
        batch = tf.shape(a)[0]
        patches = tf.reshape(patches, [batch, -1, kh * kw * a.shape[-1]])
        dflat = tf.reshape(dpre, [batch, -1, dpre.shape[-1]])
        kernel = tf.einsum("bpk,bpc->bkc", patches, dflat)
        out = [tf.reshape(kernel, tf.concat([[batch], tf.shape(layer.kernel)], 0))]
        if layer.use_bias:
            out.append(tf.reduce_sum(dflat, axis=1))
        return out

    def applies(layer):
        return layer.groups == 1 and layer.data_format == "channels_last"

    return LayerRule(forward, grads, applies)


@register_rule(layers.WSConv2D)
def _ws_conv2d_rule() -> LayerRule:
    conv = _conv2d_rule()

    def grads(layer, a, dpre):
        # The conv rule gives each example's gradient with respect to the standardized
        # kernel w^ = (w - mean) / s; pull it back through the standardization (a function
        # of the weights only, so the same Jacobian for every example): the batch-norm
        # backward formula over each output channel's fan-in,
        # dw = (g - mean(g) - w^ * mean(g * w^)) / s.
        out = conv.grads(layer, a, dpre)
        kernel = layer.kernel
        fan_in_axes = list(range(len(kernel.shape) - 1))
        mean, variance = tf.nn.moments(kernel, axes=fan_in_axes, keepdims=True)
        inv_s = tf.math.rsqrt(variance + layer.ws_epsilon)
        w_hat = (kernel - mean) * inv_s
        g = out[0]
        axes = [1 + k for k in fan_in_axes]
        g_mean = tf.reduce_mean(g, axis=axes, keepdims=True)
        gw_mean = tf.reduce_mean(g * w_hat, axis=axes, keepdims=True)
        out[0] = (g - g_mean - w_hat * gw_mean) * inv_s
        return out

    return LayerRule(conv.forward, grads, conv.applies)


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
        out = layer(a)
        return out, out

    def grads(layer, a, dpre):
        return _affine_norm_grads(normalize(layer, a), dpre, layer)

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
        out = layer(a)
        return out, out

    def grads(layer, a, dpre):
        return _affine_norm_grads(normalize(layer, a), dpre, layer)

    def applies(layer):
        # only the channels-last grouping that normalize() implements
        return layer.axis in (-1, len(layer.input_shape) - 1)

    return LayerRule(forward, grads, applies)


# --------------------------------------------------------------------------- driver
def row_losses(logits: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """``weights * cross_entropy(labels, logits)`` per row."""
    return weights * tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def per_example_gradients(
    net: tf.keras.Model, inputs: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor
) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """Per-row gradients of :func:`row_losses` by one forward and one backward pass.

    The forward pass walks the network's layer graph (:func:`tfdprobust.graph.run`), so
    residual additions and concatenations are followed exactly as Keras would; at every
    layer with a rule, the rule's ``forward`` replaces the call and its input and
    pre-activation are recorded. A layer used at several places in the graph gets the
    sum of its per-use gradients, which is its true per-example gradient.

    Args:
        net: a network for which :func:`supports` is true.
        inputs: ``[rows, ...]`` images.
        labels: ``[rows]`` int labels.
        weights: ``[rows]`` loss weights.

    Returns:
        ``(grads, logits)``: ``grads[k]`` is ``[rows, *net.trainable_variables[k].shape]``.
    """
    records = []

    def hook(layer, args, kwargs):
        rule = rule_for(layer) if layer.trainable_weights else None
        if rule is None:
            return None
        a = args[0]
        pre, out = rule.forward(layer, a)
        records.append((layer, rule, a, pre))
        return out

    with tf.GradientTape() as tape:
        logits = graph.run(net, inputs, hook)
        total = tf.reduce_sum(row_losses(logits, labels, weights))
    dpres = tape.gradient(total, [r[3] for r in records],
                          unconnected_gradients=tf.UnconnectedGradients.ZERO)
    by_var: Dict[int, tf.Tensor] = {}
    for (layer, rule, a, _), dpre in zip(records, dpres):
        for weight, grad in zip(layer.trainable_weights, rule.grads(layer, a, dpre)):
            by_var[id(weight)] = by_var[id(weight)] + grad if id(weight) in by_var else grad
    return [by_var[id(v)] for v in net.trainable_variables], logits


def vectorized_map_gradients(
    net: tf.keras.Model, inputs: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor
) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """The generic (slower) path: ``tf.vectorized_map`` over one-row passes.

    Same contract as :func:`per_example_gradients`, for any network.
    """
    variables = net.trainable_variables

    def one(args):
        row, label, weight = args
        with tf.GradientTape() as tape:
            logits = net(row[None], training=False)
            loss = tf.reduce_sum(row_losses(logits, label[None], weight[None]))
        grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return grads, logits[0]

    return tf.vectorized_map(one, (inputs, labels, weights))


def fold_rows(grads: Sequence[tf.Tensor], copies: int) -> List[tf.Tensor]:
    """Adds the gradients of ``copies`` stacked copies of a batch: rows i, B+i, 2B+i, ...

    Used to combine an example's clean and adversarial rows into its single gradient.
    """
    if copies == 1:
        return list(grads)
    out = []
    for g in grads:
        parts = tf.split(g, copies, axis=0)
        out.append(tf.add_n(parts))
    return out
