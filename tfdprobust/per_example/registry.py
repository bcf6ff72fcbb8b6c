"""The layer-rule registry (a tensorflow-privacy ``LayerRegistry`` where it is installed), which networks the fast
path can walk, and the default-deny list of layers allowed under DP (like Opacus'
``ModuleValidator``)."""

import dataclasses
from typing import Callable, List, Optional, Tuple

import tensorflow as tf

from tfdprobust import graph, layers
from tfdprobust.errors import UsageError
from tfdprobust.per_example.factors import _rows
from tfdprobust.per_example import probe
from tfdprobust.per_example.norms import _norm_of


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """How to get per-example gradients for one layer class.

    Attributes:
        forward: ``forward(layer, a) -> (pre, out)``: the pre-activation output (the
            tensor whose gradient the rule consumes) and the layer output, or ``None`` for
            ``activation(layer, pre)``; or ``(pre, out, kept)``, where ``kept`` is what
            ``grads`` receives instead of ``a`` (a normalization keeps its x̂ rather than
            computing its statistics twice).
        grads: ``grads(layer, kept, dpre) -> [piece for each trainable weight]`` in the order
            of ``layer.trainable_weights``: :class:`Factors` (then the norm may be a ghost
            norm) or the per-example gradient rows themselves.
        applies: optional ``applies(layer) -> bool``; a layer it rejects (e.g. a grouped
            convolution) has no rule and takes the per-layer fallback.
        activation: ``activation(layer, pre) -> out`` for a rule whose ``forward`` returns
            ``out = None`` (Dense, Conv2D: the output is a function of ``pre`` alone). Then,
            or when ``out`` is ``pre`` itself, :meth:`run` can tap ``pre`` (see
            :func:`~tfdprobust.per_example.driver.clipped_sum`).

    A rule is also a tensorflow-privacy registry function (``__call__``, see
    ``tensorflow_privacy.privacy.fast_gradient_clipping.type_aliases.RegistryFunction``).
    """

    forward: Callable
    grads: Callable
    applies: Optional[Callable] = None
    activation: Optional[Callable] = None

    def run(self, layer, a, tap: Optional[Callable] = None) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """``forward`` as ``(pre, out, kept)``: ``kept`` is ``a`` unless the rule keeps another
        tensor; with ``tap`` (an identity whose gradient the caller watches) ``pre`` goes
        through ``tap`` before ``out`` is computed from it, when the rule allows that."""
        result = self.forward(layer, a)
        pre, out, kept = result if len(result) == 3 else (*result, a)
        if tap is not None and out is pre:
            pre = out = tap(pre)
        elif tap is not None and out is None:
            pre = tap(pre)
        if out is None:  # computed once, from the tapped pre when there is one
            out = self.activation(layer, pre)
        return pre, out, kept

    def per_example(self, layer, a, dpre) -> List[tf.Tensor]:
        """Every weight's per-example gradient rows ``[rows, *weight.shape]``."""
        return [_rows(piece, w) for piece, w in zip(self.grads(layer, a, dpre), layer.trainable_weights)]

    def __call__(self, layer, input_args, input_kwargs, tape, num_microbatches=None):
        """tensorflow-privacy's registry-function contract: ``(pre, outputs, sqr_norm_fn)``,
        ``sqr_norm_fn(d loss / d pre)`` giving each example's squared gradient norm over
        the layer's weights (ghost or materialized, by :func:`~tfdprobust.per_example.costs.norm_costs`)."""
        del input_kwargs
        if num_microbatches is not None:
            raise NotImplementedError("tfdprobust rules clip per example (num_microbatches=None)")
        if len(input_args) != 1:
            raise ValueError(f"{layer.name}: a rule takes one input tensor, got {len(input_args)}")
        pre, out, kept = self.run(layer, input_args[0])
        tape.watch(pre)

        def sqr_norm_fn(dpre):
            pieces = self.grads(layer, kept, dpre)
            return tf.add_n([_norm_of([p], 1, "auto", 1)[0] for p in pieces])

        return pre, out, sqr_norm_fn


def _layer_registry_base() -> type:
    """tensorflow-privacy's ``LayerRegistry`` where it is installed (the reference stack), so
    ``REGISTRY`` can be handed to its ghost-norm driver; elsewhere a class with the same
    contract (``insert``, ``lookup``, ``is_elem`` keyed by ``hash(layer_class)``)."""
    from tfdprobust import compat

    if compat.has_tf_privacy():
        from tensorflow_privacy.privacy.fast_gradient_clipping import layer_registry

        return layer_registry.LayerRegistry

    class LayerRegistry:
        def __init__(self):
            self._layer_class_dict, self._registry = {}, {}

        def is_elem(self, layer_instance) -> bool:
            return hash(type(layer_instance)) in self._registry

        def lookup(self, layer_instance):
            return self._registry[hash(type(layer_instance))]

        def insert(self, layer_class, layer_registry_function) -> None:
            self._layer_class_dict[hash(layer_class)] = layer_class
            self._registry[hash(layer_class)] = layer_registry_function

    return LayerRegistry


class RuleRegistry(_layer_registry_base()):
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


#: The rules (Dense, Conv2D, WSConv2D, PublicBatchNormalization, GroupNormalization: registered
#: when :mod:`tfdprobust.per_example.rules` is imported, which the package does).
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
    per-example layer; containers (``Sequential``, functional and subclassed models) are
    checked through their layers. Then what the network actually executes is checked
    on a probe batch (:func:`~tfdprobust.per_example.probe.check_examples_independent`):
    a subclassed model's ``call`` or a custom layer declared per-example by mistake that
    combines rows is refused too.

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
    probe.check_examples_independent(net)
