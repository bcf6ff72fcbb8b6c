"""Walking a Keras graph network (``Sequential`` or functional) node by node.

Keras' own ``Functional._run_internal_graph`` evaluates the layers of a graph network in
topological order. The per-example gradient rules (:mod:`tfdprobust.per_example`) and the
public-statistics refresh (:mod:`tfdprobust.normalization`) need the same walk but with a
hook at chosen layers: the rules replace a layer's call by their own ``forward`` (so they
can record its input and pre-activation), and the refresh sets a layer's statistics from
its input before calling it. :func:`run` is that walk; residual additions,
concatenations and layers used more than once work because the walk follows Keras'
node list, not the layer list.

A ``tf.keras.Sequential`` built with an ``Input`` is a graph network in Keras 2, so one
walk serves both kinds of model.

Example:
    >>> import tensorflow as tf
    >>> x = tf.keras.Input((3,))
    >>> h = tf.keras.layers.Dense(3)(x)
    >>> net = tf.keras.Model(x, tf.keras.layers.Add()([x, h]))
    >>> z = tf.ones([2, 3])
    >>> bool(tf.reduce_all(run(net, z) == net(z)))
    True
"""

from typing import Callable, Optional

import tensorflow as tf

#: ``hook(layer, args, kwargs) -> outputs or None``; ``None`` means "call the layer as usual".
Hook = Callable[[tf.keras.layers.Layer, tuple, dict], Optional[tf.Tensor]]


def is_graph_network(net: tf.keras.Model) -> bool:
    """Whether ``net`` has a static layer graph :func:`run` can walk."""
    return bool(getattr(net, "_is_graph_network", False)) and hasattr(net, "_nodes_by_depth")


def run(net: tf.keras.Model, inputs: tf.Tensor, hook: Optional[Hook] = None) -> tf.Tensor:
    """Evaluates the single-input, single-output graph network ``net`` on ``inputs``.

    Every layer is called with ``training=False`` (how the train step calls the network:
    no layer may update state or mix examples) unless ``hook`` returns the outputs itself.

    Args:
        net: a graph network (see :func:`is_graph_network`).
        inputs: the input batch.
        hook: optional ``hook(layer, args, kwargs)``; a non-``None`` return value is used
            as the layer's outputs.

    Returns:
        The network's output for ``inputs``.

    Raises:
        ValueError: if ``net`` is not a graph network or has several inputs/outputs.
    """
    if not is_graph_network(net):
        raise ValueError(f"{net.name} is a subclassed model; only Sequential/functional networks can be walked")
    if len(net.inputs) != 1 or len(net.outputs) != 1:
        raise ValueError(f"{net.name} must have one input and one output, has {len(net.inputs)}/{len(net.outputs)}")
    # Keras keeps one copy per consumer and pops it; we keep one value per tensor id,
    # which is enough because values are immutable tensors.
    values = {str(id(net.inputs[0])): inputs}
    for depth in sorted(net._nodes_by_depth, reverse=True):  # noqa: SLF001 - Keras' own graph
        for node in net._nodes_by_depth[depth]:  # noqa: SLF001
            if node.is_input:
                continue
            if any(t not in values for t in node.flat_input_ids):
                continue  # not on the path from the input (Keras skips these too)
            args, kwargs = node.map_arguments(_Fresh(values))
            kwargs = dict(kwargs)
            if "training" in kwargs or _accepts_training(node.layer):
                kwargs["training"] = False
            outputs = hook(node.layer, args, kwargs) if hook is not None else None
            if outputs is None:
                outputs = node.layer(*args, **kwargs)
            for out_id, value in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                values[out_id] = value
    return values[str(id(net.outputs[0]))]


class _Fresh(dict):
    """Keras' ``map_arguments`` pops one copy per use; hand it a fresh copy every time
    (a tensor may feed the same node twice, e.g. ``Add()([x, x])``)."""

    def __getitem__(self, key):
        return [dict.__getitem__(self, key)]


def _accepts_training(layer: tf.keras.layers.Layer) -> bool:
    return bool(getattr(layer, "_expects_training_arg", False))
