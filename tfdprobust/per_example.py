"""Per-example gradient norms and the clipped gradient sum, from per-layer rules.

One batched forward and one batched backward pass give, for every trainable layer,
its input activations ``a`` and the gradient ``dz`` of the summed loss with respect to its
pre-activation output. Because every example's loss depends only on that example
(normalization statistics are constants, see :mod:`tfdprobust.normalization`), row ``i``
of ``dz`` is example ``i``'s own output gradient. A per-layer rule writes example ``i``'s
weight gradient from ``(a_i, dz_i)``, for Dense and Conv2D in *factor form*
``g_i = A_i^T G_i`` with ``A_i`` ``[T, d]`` (the activations, or for a convolution the
unfolded image patches) and ``G_i`` ``[T, p]`` (the output gradients at the ``T``
positions):

* Dense: ``A_i = a_i``, ``G_i = dz_i`` (``T = 1``, or the positions of a sequence input);
* Conv2D: ``A_i`` = patches of ``a_i`` (``tf.image.extract_patches``: strides, 'same' or
  'valid' padding and dilation), ``G_i = dz_i`` over the ``T = H_out W_out`` positions;
* the bias, and the scale and shift of public-data batch norm and group norm:
  ``sum_t dz_i`` and ``sum_t dz_i * x̂_i``, written out per example (``[batch, C]``, cheap).

From the factor form each layer's per-example squared norm comes one of two ways, chosen
**per layer by cost** (Bu et al., "Scalable and efficient training of large
convolutional neural networks with differential privacy", mixed ghost clipping):

* **ghost**: ``||A_i^T G_i||^2 = sum_{t,s} (A_i A_i^T)_{ts} (G_i G_i^T)_{ts}`` from the two
  ``T x T`` Gram matrices (``||a_i||^2 ||dz_i||^2`` when ``T = 1``), without ever forming
  ``g_i``; the clipped sum is then one weight-gradient op ``sum_i A_i^T (c_i G_i)``
  (book-keeping: Bu et al., "Differentially private optimization on large model at small
  cost"), the op a non-private step runs anyway;
* **materialized**: ``g_i`` itself (a batched matmul), whose rows give the norm and,
  weighted by ``c_i``, the clipped sum.

:func:`norm_costs` prices both per example, book-keeping included: ghost
``T^2 (d + p) + s T d p``, materialized ``T d p + s d p`` for ``s`` weighted sums. Ghost
wins for small ``T`` and wide layers (dense layers, late small-resolution convolutions);
materializing wins for early convolutions with many positions and few channels.

The clipped sum computes each layer's norms *during* the backward pass: the layer's
pre-activation goes through an identity whose gradient waits for them, so the pass reaches
the layer below only once they exist and the layer's activations and output gradient are
no longer needed for the norm (a layer used several times waits for all of its uses).

An example's clean and adversarial rows (``copies``) and a layer used several times in
the graph add up to one gradient per example: their factors are joined along ``T``, so the
norm is that of the example's whole gradient, never a sum of separate norms.
:func:`clipped_sum` clips with any strategy of :data:`tfdprobust.clipping.CLIPPINGS`
(they only need squared norms) and returns the clipped sum; flat clipping is exact (tested
against one ``GradientTape`` per example).

Rules live in :data:`REGISTRY`, a tensorflow-privacy ``LayerRegistry`` (same
``insert``/``lookup``/``is_elem`` contract), and a :class:`LayerRule` is also a
tensorflow-privacy registry function, so ``REGISTRY`` can be handed to tensorflow-privacy's
``compute_gradient_norms`` (which then gets the Conv2D and normalization rules it lacks).
Register more with :func:`register_rule`. A trainable layer without a usable rule (a
grouped convolution, DepthwiseConv2D, LayerNormalization, ...) falls back **per layer**:
its per-example gradients come from one-example vector-Jacobian products through that
layer alone (``tf.vectorized_map``, or ``tf.map_fn`` where TensorFlow's vectorizer cannot
run the layer), exact and materialized, while the rest of the network keeps its rules.

``tf.vectorized_map`` over whole single-example passes (:func:`vectorized_map_gradients`)
remains for networks the graph walk cannot follow (subclassed models, several inputs).
"""

import collections
import dataclasses
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import tensorflow as tf
from tensorflow_privacy.privacy.fast_gradient_clipping import layer_registry as tfp_layer_registry

from tfdprobust import clipping, graph, layers
from tfdprobust.errors import UsageError
from tfdprobust.normalization import PublicBatchNormalization

METHODS = ("auto", "ghost", "materialized")


class Factors:
    """A per-example weight gradient in factor form, ``g_i = A_i^T G_i`` (reshaped to the
    weight's shape), over ``rows`` rows. Subclasses say how to write it out fast.

    Attributes:
        dims: ``(T, d, p)``; ``T`` is ``None`` when not known statically.
    """

    dims: Tuple[Optional[int], int, int]

    def split(self, copies: int) -> List["Factors"]:
        """The factors of rows ``kB .. (k+1)B - 1`` for each copy ``k``."""
        raise NotImplementedError

    def matrices(self) -> Tuple[tf.Tensor, tf.Tensor]:
        """``(A [rows, T, d], G [rows, T, p])`` written out (for the ghost Gram matrices)."""
        raise NotImplementedError

    def blocks(self) -> List[tf.Tensor]:
        """Every row's gradient written out, as blocks ``[rows, d_k, p]`` that stack along
        ``d`` (kept apart: the norm and the weighted sum never need them joined)."""
        raise NotImplementedError

    def materialize(self) -> tf.Tensor:
        """``[rows, d, p]``: every row's gradient."""
        blocks = self.blocks()
        return tf.concat(blocks, 1) if len(blocks) > 1 else blocks[0]

    def masked(self, keep: tf.Tensor, all_kept: tf.Tensor) -> "Factors":
        """The same factors with the rows where ``keep`` is false set to exactly zero."""
        raise NotImplementedError

    def weighted_sums(self, scales: tf.Tensor) -> tf.Tensor:
        """``sum_r scales[k, r] A_r^T G_r`` for each row of ``scales`` (``[n, rows]``), as
        ``[n, d, p]``: one weight-gradient op for all ``n`` (book-keeping). Rows with
        scale 0 must have finite factors (see :meth:`masked`)."""
        raise NotImplementedError


class DenseFactors(Factors):
    """``A`` ``[rows, T, d]`` and ``G`` ``[rows, T, p]`` given explicitly."""

    def __init__(self, activations: tf.Tensor, output_grads: tf.Tensor):
        self.activations, self.output_grads = activations, output_grads
        self.dims = (activations.shape[1], activations.shape[2], output_grads.shape[2])

    def split(self, copies):
        return [DenseFactors(a, g) for a, g in zip(_split_copies(self.activations, copies),
                                                    _split_copies(self.output_grads, copies))]

    def matrices(self):
        return self.activations, self.output_grads

    def masked(self, keep, all_kept):
        return DenseFactors(_zero_dropped(self.activations, keep, all_kept),
                            _zero_dropped(self.output_grads, keep, all_kept))

    def blocks(self):
        a, g = self.activations, self.output_grads
        if a.shape[1] == 1:
            return [tf.einsum("bi,bj->bij", a[:, 0], g[:, 0])]
        return [tf.matmul(a, g, transpose_a=True)]

    def weighted_sums(self, scales):
        d, p = self.dims[1:]
        n = scales.shape[0]
        # [rows, T, p] -> [rows, T, n * p]: the n weightings side by side, one GEMM.
        g = self.output_grads[:, :, None, :] * tf.cast(tf.transpose(scales), self.output_grads.dtype)[:, None, :, None]
        out = tf.matmul(tf.reshape(self.activations, [-1, d]), tf.reshape(g, [-1, n * p]), transpose_a=True)
        return tf.transpose(tf.reshape(out, [d, n, p]), [1, 0, 2])


class ConvFactors(Factors):
    """A 2-D convolution's input ``a`` (NHWC) and output gradient ``dz``: ``A`` is the
    unfolded patches (not written out whole for the materialized gradient, see
    :meth:`blocks`), ``G`` is ``dz`` over the ``T = H_out W_out`` positions."""

    def __init__(self, a: tf.Tensor, dz: tf.Tensor, kernel_size, strides, dilation_rate, padding: str):
        self.a, self.dz = a, dz
        self.kernel_size, self.strides, self.dilation_rate = tuple(kernel_size), tuple(strides), tuple(dilation_rate)
        self.padding = padding.upper()
        kh, kw = self.kernel_size
        out_h, out_w = dz.shape[1], dz.shape[2]
        positions = out_h * out_w if out_h is not None and out_w is not None else None
        self.dims = (positions, kh * kw * a.shape[-1], dz.shape[-1])

    def split(self, copies):
        return [ConvFactors(a, dz, self.kernel_size, self.strides, self.dilation_rate, self.padding)
                for a, dz in zip(_split_copies(self.a, copies), _split_copies(self.dz, copies))]

    def masked(self, keep, all_kept):
        return ConvFactors(_zero_dropped(self.a, keep, all_kept), _zero_dropped(self.dz, keep, all_kept),
                           self.kernel_size, self.strides, self.dilation_rate, self.padding)

    def _offsets(self) -> List[tf.Tensor]:
        """For each kernel offset (row, col): the input values it meets at every output
        position, ``[rows, C_in, H_out, W_out]``, by unit-stride slices only: the input is
        split into its stride phases once (``tf.image.extract_patches`` and strided slices
        are several times slower on CPU)."""
        a = self.a
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.strides, self.dilation_rate
        out_h, out_w, channels = self.dz.shape[1], self.dz.shape[2], a.shape[-1]
        height, width = a.shape[1], a.shape[2]
        if self.padding == "SAME":  # TensorFlow's SAME: the odd pixel goes after
            pad_h = max((out_h - 1) * sh + (kh - 1) * dh + 1 - height, 0)
            pad_w = max((out_w - 1) * sw + (kw - 1) * dw + 1 - width, 0)
            a = tf.pad(a, [[0, 0], [pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]])
            height, width = height + pad_h, width + pad_w
        # Rows/cols the phases need (a multiple of the stride), cropping or zero-padding.
        need_h = sh * (out_h + ((kh - 1) * dh) // sh)
        need_w = sw * (out_w + ((kw - 1) * dw) // sw)
        a = a[:, :need_h, :need_w]
        a = tf.pad(a, [[0, 0], [0, max(need_h - height, 0)], [0, max(need_w - width, 0)], [0, 0]])
        # [rows, H/s, s, W/s, s, C] -> [rows, s_h, s_w, C, H/s, W/s]: one copy.
        phased = tf.transpose(tf.reshape(a, [-1, need_h // sh, sh, need_w // sw, sw, channels]), [0, 2, 4, 5, 1, 3])
        out = []
        for i in range(kh):
            for j in range(kw):
                r, c = i * dh, j * dw
                out.append(phased[:, r % sh, c % sw, :, r // sh:r // sh + out_h, c // sw:c // sw + out_w])
        return out

    def _unfolded_t(self) -> tf.Tensor:
        """``A^T``: ``[rows, d, T]`` with ``d`` ordered (kernel row, kernel col, channel)."""
        positions, d, _ = self.dims
        return tf.reshape(tf.stack(self._offsets(), 1), [-1, d, positions if positions is not None else -1])

    def _g(self) -> tf.Tensor:
        return _positions(self.dz)

    def matrices(self):
        return tf.transpose(self._unfolded_t(), [0, 2, 1]), self._g()

    def blocks(self):
        g = self._g()
        channels = self.a.shape[-1]
        if channels < 8:  # few channels: one batched matmul on the stacked offsets
            return [tf.matmul(self._unfolded_t(), g)]
        # one batched matmul per kernel offset, [C_in x T] x [T x p] per example
        positions = self.dims[0] if self.dims[0] is not None else -1
        return [tf.matmul(tf.reshape(o, [-1, channels, positions]), g) for o in self._offsets()]

    def weighted_sums(self, scales):
        # The n weightings of dz side by side as output channels: the filter gradient of
        # output channel o only sees dz[..., o], so one op gives all n sums.
        n, (_, d, p) = scales.shape[0], self.dims
        dz = self.dz[..., None, :] * tf.cast(tf.transpose(scales), self.dz.dtype)[:, None, None, :, None]
        dz = tf.reshape(dz, tf.concat([tf.shape(self.dz)[:3], [n * p]], 0))
        shape = [*self.kernel_size, self.a.shape[-1], n * p]
        if self.dilation_rate == (1, 1):  # the filter-gradient op of the non-private step
            grad = tf.raw_ops.Conv2DBackpropFilter(input=self.a, filter_sizes=shape, out_backprop=dz,
                                                   strides=[1, *self.strides, 1], padding=self.padding)
        else:  # dilated: differentiate tf.nn.convolution (space-to-batch on CPU); linear in the kernel
            kernel = tf.zeros(shape, self.a.dtype)
            with tf.GradientTape() as tape:
                tape.watch(kernel)
                pre = tf.nn.convolution(self.a, kernel, self.strides, self.padding, dilations=self.dilation_rate)
            grad = tape.gradient(pre, kernel, output_gradients=dz)
        return tf.transpose(tf.reshape(grad, [d, n, p]), [1, 0, 2])


#: A rule's per-example gradient of one weight: factors, or the rows ``[rows, *shape]``.
Piece = Union[Factors, tf.Tensor]


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """How to get per-example gradients for one layer class.

    Attributes:
        forward: ``forward(layer, a) -> (pre, out)``: the pre-activation output (the
            tensor whose gradient the rule consumes) and the layer output; or
            ``(pre, out, kept)``, where ``kept`` is what ``grads`` receives instead of ``a``
            (a normalization keeps its x̂ rather than computing its statistics twice).
        grads: ``grads(layer, kept, dpre) -> [piece for each trainable weight]`` in the order
            of ``layer.trainable_weights``: :class:`Factors` (then the norm may be a ghost
            norm) or the per-example gradient rows themselves.
        applies: optional ``applies(layer) -> bool``; a layer it rejects (e.g. a grouped
            convolution) has no rule and takes the per-layer fallback.
        activation: optional ``activation(layer, pre) -> out`` when the output is a
            function of ``pre`` alone (Dense, Conv2D); with it, or when ``out`` is ``pre``
            itself, :meth:`run` can tap ``pre`` (see :func:`clipped_sum`).

    A rule is also a tensorflow-privacy registry function (``__call__``, see
    ``tensorflow_privacy.privacy.fast_gradient_clipping.type_aliases.RegistryFunction``).
    """

    forward: Callable
    grads: Callable
    applies: Optional[Callable] = None
    activation: Optional[Callable] = None

    def run(self, layer, a, tap: Optional[Callable] = None) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, bool]:
        """``forward`` as ``(pre, out, kept, tapped)``: ``kept`` is ``a`` unless the rule keeps
        another tensor; with ``tap`` (an identity whose gradient the caller watches) ``pre``
        goes through ``tap`` before ``out`` is computed from it, when the rule allows that
        (``tapped`` says whether it did)."""
        result = self.forward(layer, a)
        pre, out, kept = result if len(result) == 3 else (*result, a)
        if tap is None:
            return pre, out, kept, False
        if out is pre:
            pre = tap(pre)
            return pre, pre, kept, True
        if self.activation is not None:
            pre = tap(pre)
            return pre, self.activation(layer, pre), kept, True
        return pre, out, kept, False

    def per_example(self, layer, a, dpre) -> List[tf.Tensor]:
        """Every weight's per-example gradient rows ``[rows, *weight.shape]``."""
        return [_rows(piece, w) for piece, w in zip(self.grads(layer, a, dpre), layer.trainable_weights)]

    def __call__(self, layer, input_args, input_kwargs, tape, num_microbatches=None):
        """tensorflow-privacy's registry-function contract: ``(pre, outputs, sqr_norm_fn)``,
        ``sqr_norm_fn(d loss / d pre)`` giving each example's squared gradient norm over
        the layer's weights (ghost or materialized, by :func:`norm_costs`)."""
        del input_kwargs
        if num_microbatches is not None:
            raise NotImplementedError("tfdprobust rules clip per example (num_microbatches=None)")
        if len(input_args) != 1:
            raise ValueError(f"{layer.name}: a rule takes one input tensor, got {len(input_args)}")
        pre, out, kept, _ = self.run(layer, input_args[0])
        tape.watch(pre)

        def sqr_norm_fn(dpre):
            pieces = self.grads(layer, kept, dpre)
            return tf.add_n([_norm_of([p], 1, "auto", 1)[0] for p in pieces])

        return pre, out, sqr_norm_fn


class RuleRegistry(tfp_layer_registry.LayerRegistry):
    """tensorflow-privacy's ``LayerRegistry`` holding :class:`LayerRule` objects (keyed by the
    exact layer class, as there: a subclass that changes the computation gets no rule by
    inheritance). ``is_elem`` also asks the rule's ``applies``, so tensorflow-privacy never
    calls a rule on a layer it cannot handle."""

    def knows(self, layer_class: type) -> bool:
        return hash(layer_class) in self._registry

    def rule_for(self, layer: tf.keras.layers.Layer) -> Optional[LayerRule]:
        rule = self._registry.get(hash(type(layer)))
        if rule is not None and rule.applies is not None and not rule.applies(layer):
            return None
        return rule

    def is_elem(self, layer_instance: tf.keras.layers.Layer) -> bool:
        return self.rule_for(layer_instance) is not None


#: The rules of this module (Dense, Conv2D, WSConv2D, PublicBatchNormalization, GroupNormalization).
REGISTRY = RuleRegistry()


def register_rule(layer_class: type):
    """Decorator registering a :class:`LayerRule` factory for ``layer_class``."""

    def decorator(factory: Callable[[], LayerRule]):
        REGISTRY.insert(layer_class, factory())
        return factory

    return decorator


def rule_for(layer: tf.keras.layers.Layer) -> Optional[LayerRule]:
    """The rule for ``layer``, or ``None`` when it has none or cannot use it."""
    return REGISTRY.rule_for(layer)


def _layer_nodes(net: tf.keras.Model, layer: tf.keras.layers.Layer):
    return [n for nodes in net._nodes_by_depth.values() for n in nodes  # noqa: SLF001
            if n.layer is layer and not n.is_input]


def supports(net: tf.keras.Model) -> bool:
    """Whether the fast path applies: ``net`` is a graph network (``Sequential`` or
    functional, one input and one output) and each of its trainable layers either has a
    usable rule or can take the per-layer fallback (every call of it has one input and
    one output tensor). A nested model takes the fallback as one layer."""
    if not (graph.is_graph_network(net) and len(net.inputs) == 1 and len(net.outputs) == 1):
        return False
    for layer in net.layers:
        if not layer.trainable_weights or rule_for(layer) is not None:
            continue
        if not all(len(n.flat_input_ids) == 1 and len(n.flat_output_ids) == 1 for n in _layer_nodes(net, layer)):
            return False
    return True


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
    # trainable, per-example, but no rule: the exact per-layer fallback (one-example VJPs)
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
        if REGISTRY.knows(type(layer)) or type(layer) in _PER_EXAMPLE_LAYERS:
            continue
        raise UsageError(
            f"layer {layer.name} ({type(layer).__name__}) is not known to be per-example, so DP "
            "training refuses it (it could mix private examples); replace it, or declare it with "
            "tfdprobust.per_example.register_per_example_layer if each output row depends only on "
            "its own input row")


# --------------------------------------------------------------------------- rules
def _positions(t: tf.Tensor) -> tf.Tensor:
    """``[rows, ..., c] -> [rows, T, c]`` with ``T`` the product of the middle axes."""
    middle = t.shape[1:-1]
    positions = math.prod(middle) if all(m is not None for m in middle) else -1
    return tf.reshape(t, [tf.shape(t)[0], positions, t.shape[-1]])


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
        return pre, layer.activation(pre)

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
        return pre, layer.activation(pre)

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


# --------------------------------------------------------------------------- costs
#: Multiply-adds that one element of a materialized per-example gradient costs beyond its
#: arithmetic: it is written out and read back (for the norm and for each weighted sum), and
#: that traffic is memory-bound on CPU (DRAM moves about one float per 0.4 ns per core, a GEMM
#: does tens of multiply-adds per ns). Without it, a dense layer whose example has few rows
#: (T = 2: the clean and adversarial copies) tied with ghost at two sums and was written out:
#: LeNet's 800 x 500 kernel, 100 M floats at B = 250, made its DP + PGD-10 step about 1.4-1.6x
#: slower in our probes (examples per CPU-second, one thread, on a loaded machine).
MATERIALIZED_ELEMENT_COST = 16


def norm_costs(positions: int, d: int, p: int, sums: int = 1) -> Dict[str, int]:
    """Per-example cost, in multiply-adds, of a factor-form weight's norm plus ``sums``
    weighted sums.

    * ghost: the Gram matrices ``A A^T`` and ``G G^T`` (``T^2 (d + p)``), then each sum is
      one weight-gradient op over the batch (``T d p`` per example);
    * materialized: ``A^T G`` per example (``T d p``), then each sum weighs its rows
      (``d p``), plus the memory traffic of the ``d p`` written-out elements
      (:data:`MATERIALIZED_ELEMENT_COST` each).

    ``positions`` is ``T`` with an example's copies and uses joined; ``d``, ``p`` are the
    factor widths (``kh kw c_in`` and ``c_out`` for a convolution).
    """
    t = positions
    return {"ghost": t * t * (d + p) + sums * t * d * p,
            "materialized": t * d * p + (sums + MATERIALIZED_ELEMENT_COST) * d * p}


def choose_method(positions: Optional[int], d: int, p: int, sums: int = 1) -> str:
    """``"ghost"`` or ``"materialized"``, whichever :func:`norm_costs` finds cheaper (a
    statically unknown ``T`` materializes)."""
    if positions is None:
        return "materialized"
    costs = norm_costs(positions, d, p, sums)
    return "ghost" if costs["ghost"] < costs["materialized"] else "materialized"


# --------------------------------------------------------------------------- driver
def row_losses(logits: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """``weights * cross_entropy(labels, logits)`` per row."""
    return weights * tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


@dataclasses.dataclass
class _Use:
    """One call of a trainable layer in the graph walk."""

    layer: tf.keras.layers.Layer
    rule: LayerRule
    a: tf.Tensor  # what the rule's grads take: the layer input, or the tensor its forward kept
    pre: tf.Tensor
    dpre: Optional[tf.Tensor] = None


def _tap(on_gradient: Callable[[tf.Tensor], List[tf.Tensor]]) -> Callable[[tf.Tensor], tf.Tensor]:
    """An identity whose gradient calls ``on_gradient(dy)`` and is passed on only once the
    tensors it returns exist."""

    @tf.custom_gradient
    def tap(t):
        def grad(dy):
            with tf.control_dependencies(on_gradient(dy)):
                return tf.identity(dy)

        return tf.identity(t), grad

    return tap


def _forward_backward(net, inputs, labels, weights,
                      on_dpre: Optional[Callable[[List[_Use], int, tf.Tensor], List[tf.Tensor]]] = None
                      ) -> Tuple[List[_Use], tf.Tensor]:
    """The one forward and one backward pass: every trainable layer call's input and the
    gradient of the summed row losses with respect to its pre-activation output (no
    weight gradient is computed here).

    With ``on_dpre``, each use whose rule can be tapped calls ``on_dpre(uses, k, dpre)`` as
    soon as its ``dpre`` exists during the backward pass, and the pass goes on below that
    layer only once the tensors it returns are computed. The clipped sum computes each
    layer's norms there: TensorFlow's one-thread executor otherwise may run the whole
    backward pass first and keep every layer's input and output gradient alive at once
    (ResNet-20 at B = 1000: several GB more, and about 1.4x the CPU time, in our probes).
    """
    uses: List[_Use] = []

    def hook(layer, args, kwargs):
        if not layer.trainable_weights:
            return None
        rule = rule_for(layer) or _fallback_rule(kwargs)
        k = len(uses)
        tap = None if on_dpre is None else _tap(lambda dpre: on_dpre(uses, k, dpre))
        pre, out, kept, _ = rule.run(layer, args[0], tap)
        uses.append(_Use(layer, rule, kept, pre))
        return out

    with tf.GradientTape() as tape:
        logits = graph.run(net, inputs, hook)
        total = tf.reduce_sum(row_losses(logits, labels, weights))
    dpres = tape.gradient(total, [u.pre for u in uses], unconnected_gradients=tf.UnconnectedGradients.ZERO)
    for use, dpre in zip(uses, dpres):
        use.dpre = dpre
    return uses, logits


def _rows(piece: Piece, weight) -> tf.Tensor:
    if isinstance(piece, Factors):
        rows = piece.materialize()
        return tf.reshape(rows, tf.concat([tf.shape(rows)[:1], weight.shape], 0))
    return piece


def _split_copies(t: tf.Tensor, copies: int) -> List[tf.Tensor]:
    """Rows ``[copies * B, ...]`` -> ``copies`` tensors ``[B, ...]`` (copy ``k`` is rows ``kB..``)."""
    if copies == 1:
        return [t]
    tail = [d if d is not None else tf.shape(t)[i + 1] for i, d in enumerate(t.shape[1:])]
    return tf.unstack(tf.reshape(t, [copies, -1, *tail]), num=copies)


def _sum_squares(rows: tf.Tensor) -> tf.Tensor:
    """``[rows, ...] -> [rows]``: each row's sum of squares, as a batched dot product (one
    pass, several times faster on CPU than ``reduce_sum(square(.))``)."""
    size = math.prod(rows.shape[1:]) if rows.shape[1:].is_fully_defined() else -1
    flat = tf.reshape(rows, [tf.shape(rows)[0], 1, size])
    return tf.reshape(tf.matmul(flat, flat, transpose_b=True), [-1])


def _ghost_squared_norm(parts: List[Factors]) -> tf.Tensor:
    """``||sum_j A_j^T G_j||^2`` per example from Gram matrices (the parts joined along ``T``)."""
    mats = [f.matrices() for f in parts]
    a = tf.concat([m[0] for m in mats], 1) if len(mats) > 1 else mats[0][0]
    g = tf.concat([m[1] for m in mats], 1) if len(mats) > 1 else mats[0][1]
    if a.shape[1] == 1:
        return _sum_squares(a) * _sum_squares(g)
    gram_a = tf.matmul(a, a, transpose_b=True)
    gram_g = tf.matmul(g, g, transpose_b=True)
    squared = tf.reduce_sum(gram_a * gram_g, [1, 2])
    # Rounding can leave a tiny negative value for a ~zero gradient; NaN stays NaN (dropped).
    return tf.where(squared < 0, tf.zeros_like(squared), squared)


def _norm_of(pieces: List[Piece], copies: int, method: str, sums: int):
    """One weight's per-example squared norm over all its uses and an example's copies.

    Returns ``(squared [B], method used, blocks or None)``; the materialized gradient is
    kept (as blocks that stack along the first non-batch axis) for the weighted sums.
    """
    if all(isinstance(p, Factors) for p in pieces):
        parts = [part for f in pieces for part in f.split(copies)]
        positions = sum(f.dims[0] for f in parts) if all(f.dims[0] is not None for f in parts) else None
        _, d, p = parts[0].dims
        chosen = choose_method(positions, d, p, sums) if method == "auto" else method
        if chosen == "ghost":
            return _ghost_squared_norm(parts), "ghost", None
        blocks = [tf.add_n(list(same)) for same in zip(*[f.blocks() for f in parts])]
    else:
        blocks = [tf.add_n([r for piece in pieces
                            for r in _split_copies(piece.materialize() if isinstance(piece, Factors) else piece,
                                                   copies)])]
    return tf.add_n([_sum_squares(b) for b in blocks]), "materialized", blocks


def _zero_dropped(t: tf.Tensor, keep: tf.Tensor, all_kept: tf.Tensor) -> tf.Tensor:
    """``t`` with the rows of dropped (non-finite) examples set to exactly zero."""
    def masked():
        shape = [-1] + [1] * (t.shape.rank - 1)
        return tf.where(tf.reshape(keep, shape), t, tf.zeros_like(t))

    return tf.cond(all_kept, lambda: tf.identity(t), masked)


@dataclasses.dataclass
class _Entry:
    variable: tf.Variable
    pieces: List[Piece]
    squared: Optional[tf.Tensor] = None
    method: str = "materialized"
    rows: Optional[List[tf.Tensor]] = None  # materialized: blocks stacking along axis 1


class _Book:
    """The per-variable ledger of one batch: norms first, weighted sums once scales are known."""

    def __init__(self, net, inputs, labels, weights, copies: int, method: str, sums: int):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.copies, self.method, self.sums = copies, method, sums
        self.batch = tf.shape(inputs)[0] // copies
        self._entries = {id(v): _Entry(v, []) for v in net.trainable_variables}
        self.fallback = set()
        self._done = set()  # uses whose norms the backward pass computed
        self._calls: Optional[Dict[int, int]] = None
        self.uses, self.logits = _forward_backward(net, inputs, labels, weights, self._norms_in_backward)
        for k, use in enumerate(self.uses):
            if k not in self._done:
                self._add(use, use.dpre)
        self.entries = [self._entries[id(v)] for v in net.trainable_variables]
        for e in self.entries:
            if e.squared is not None:
                continue
            if not e.pieces:  # not on the path from the input: no gradient
                e.squared = tf.zeros([self.batch], e.variable.dtype)
                e.rows = [tf.zeros(tf.concat([[self.batch], e.variable.shape], 0), e.variable.dtype)]
                continue
            e.squared, e.method, e.rows = _norm_of(e.pieces, copies, method, sums)
            if id(e.variable) in self.fallback:
                e.method = "fallback"

    def _add(self, use: _Use, dpre: tf.Tensor) -> None:
        for weight, piece in zip(use.layer.trainable_weights, use.rule.grads(use.layer, use.a, dpre)):
            self._entries[id(weight)].pieces.append(piece)
            if rule_for(use.layer) is None:
                self.fallback.add(id(weight))

    def _norms_in_backward(self, uses: List[_Use], k: int, dpre: tf.Tensor) -> List[tf.Tensor]:
        """The norms of use ``k``'s weights, when no other use shares them (else they wait
        for the whole backward pass)."""
        if self._calls is None:  # the forward pass is complete once gradients flow
            self._calls = collections.Counter(id(w) for u in uses for w in u.layer.trainable_weights)
        use = uses[k]
        if rule_for(use.layer) is None or any(self._calls[id(w)] != 1 for w in use.layer.trainable_weights):
            return []
        self._add(use, dpre)
        self._done.add(k)
        out = []
        for weight in use.layer.trainable_weights:
            e = self._entries[id(weight)]
            e.squared, e.method, e.rows = _norm_of(e.pieces, self.copies, self.method, self.sums)
            out.append(e.squared)
        return out

    @property
    def methods(self) -> Dict[str, str]:
        return {e.variable.name: e.method for e in self.entries}

    def weighted_sums(self, scale_sets: Sequence[Sequence[tf.Tensor]], keep: tf.Tensor) -> List[List[tf.Tensor]]:
        """For each set of per-variable scales, ``sum_i scale_i g_i`` per variable (the sets
        share one pass over each materialized gradient and one weight-gradient op per ghost
        layer); examples with ``keep`` false add exactly zero."""
        all_kept = tf.reduce_all(keep)
        keep_rows = tf.tile(keep, [self.copies])
        out = [[] for _ in scale_sets]
        for k, e in enumerate(self.entries):
            scales = tf.stack([tf.cast(s[k], e.variable.dtype) for s in scale_sets])  # [n, B]
            if e.rows is not None:
                parts = [tf.tensordot(scales, _zero_dropped(b, keep, all_kept), axes=1) for b in e.rows]
                summed = tf.concat(parts, 1) if len(parts) > 1 else parts[0]
            else:  # ghost: one weight-gradient op per use on (A, scale * G), book-keeping
                scale_rows = tf.tile(scales, [1, self.copies])
                summed = tf.add_n([f.masked(keep_rows, all_kept).weighted_sums(scale_rows) for f in e.pieces])
            for n in range(len(scale_sets)):
                out[n].append(tf.reshape(summed[n], e.variable.shape))
        return out


@dataclasses.dataclass(frozen=True)
class ClippedSum:
    """What :func:`clipped_sum` returns.

    Attributes:
        clipped: the sum over examples of the clipped gradients, one tensor per variable.
        norms: ``[batch]`` unclipped global norms (non-finite for dropped examples).
        logits: the row logits of the forward pass.
        unclipped: the plain sum of the (non-dropped) gradients, if asked for.
        methods: variable name -> ``ghost``, ``materialized`` or ``fallback``.
    """

    clipped: List[tf.Tensor]
    norms: tf.Tensor
    logits: tf.Tensor
    unclipped: Optional[List[tf.Tensor]]
    methods: Dict[str, str]


def squared_norms(net: tf.keras.Model, inputs: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor,
                  copies: int = 1, method: str = "auto") -> Tuple[List[tf.Tensor], tf.Tensor, Dict[str, str]]:
    """Each example's squared gradient norm per variable, by the per-layer rules.

    Args:
        net: a network for which :func:`supports` is true.
        inputs, labels, weights: ``copies * B`` rows; example ``i`` owns rows
            ``i, B + i, ...`` (its loss is the sum of theirs).
        method: ``auto`` (per layer by :func:`norm_costs`), or force ``ghost`` /
            ``materialized`` for every factor-form weight (tests).

    Returns:
        ``(squared, logits, methods)``: ``squared[k]`` is ``[B]`` for ``net.trainable_variables[k]``.
    """
    book = _Book(net, inputs, labels, weights, copies, method, sums=1)
    return [e.squared for e in book.entries], book.logits, book.methods


def clipped_sum(net: tf.keras.Model, inputs: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor,
                bound, copies: int = 1, clipping_name: str = "flat", gamma: float = 0.01,
                method: str = "auto", unclipped: bool = False) -> ClippedSum:
    """The clipped gradient sum by book-keeping: one forward pass, one backward pass to the
    pre-activations, per-layer norms (ghost or materialized, by cost), then the sum of the
    clipped gradients from one weight-gradient op (or one weighted row sum) per layer.

    Args:
        net, inputs, labels, weights, copies, method: as in :func:`squared_norms`.
        bound: C (a float or a scalar tensor, e.g. the adaptive bound's value).
        clipping_name: a :data:`tfdprobust.clipping.CLIPPINGS` strategy.
        gamma: automatic clipping's stabilizer.
        unclipped: also return the plain gradient sum (the clipping diagnostics' cosine).
    """
    book = _Book(net, inputs, labels, weights, copies, method, sums=2 if unclipped else 1)
    scales, norms = clipping.clip_factors([e.squared for e in book.entries], bound, clipping_name, gamma)
    keep = tf.math.is_finite(norms)
    sets = [scales, [tf.ones_like(norms)] * len(scales)] if unclipped else [scales]
    sums = book.weighted_sums(sets, keep)
    return ClippedSum(sums[0], norms, book.logits, sums[1] if unclipped else None, book.methods)


def per_example_gradients(
    net: tf.keras.Model, inputs: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor
) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """Per-row gradients of :func:`row_losses`, written out, by the same single forward and
    backward pass (the materialized path; the train step itself needs only norms and the
    clipped sum, :func:`clipped_sum`).

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
    uses, logits = _forward_backward(net, inputs, labels, weights)
    by_var: Dict[int, tf.Tensor] = {}
    for use in uses:
        for weight, grad in zip(use.layer.trainable_weights, use.rule.per_example(use.layer, use.a, use.dpre)):
            by_var[id(weight)] = by_var[id(weight)] + grad if id(weight) in by_var else grad
    rows = tf.shape(inputs)[0]
    return [by_var[id(v)] if id(v) in by_var else tf.zeros(tf.concat([[rows], v.shape], 0), v.dtype)
            for v in net.trainable_variables], logits


def vectorized_map_gradients(
    net: tf.keras.Model, inputs: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor
) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """The generic (slower) path: one-row passes through the whole network, vectorized by
    ``tf.vectorized_map`` (or looped by ``tf.map_fn`` when the network holds a layer the
    vectorizer cannot run, see :func:`_vectorizable`).

    Same contract as :func:`per_example_gradients`, for any network.
    """
    variables = net.trainable_variables
    logits = net(inputs, training=False)

    def fn(row):
        one_input, one_label, one_weight = row
        return tf.reduce_sum(row_losses(net(one_input, training=False), one_label, one_weight))

    grads = one_example_vjps(fn, variables, (inputs, labels, weights), vectorize=_vectorizable(net))
    return list(grads), logits


def fold_rows(grads: Sequence[tf.Tensor], copies: int) -> List[tf.Tensor]:
    """Adds the gradients of ``copies`` stacked copies of a batch: rows i, B+i, 2B+i, ...

    Used to combine an example's clean and adversarial rows into its single gradient.
    """
    if copies == 1:
        return list(grads)
    return [tf.add_n(_split_copies(g, copies)) for g in grads]
