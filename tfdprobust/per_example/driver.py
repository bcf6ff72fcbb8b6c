"""The one forward and one backward pass, the per-variable ledger of norms, and the clipped
sum (book-keeping); also the written-out per-example gradients and the generic
``tf.vectorized_map`` path."""

import collections
import dataclasses
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from tfdprobust import clipping, graph
from tfdprobust.errors import require
from tfdprobust.per_example.factors import Piece, _split_copies, _zero_dropped
from tfdprobust.per_example.norms import _norm_of
from tfdprobust.per_example.registry import LayerRule, rule_for
from tfdprobust.per_example.rules import _fallback_rule, _vectorizable, one_example_vjps

METHODS = ("auto", "ghost", "materialized")


def row_losses(logits: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
    """``weights * cross_entropy(labels, logits)`` per row."""
    return weights * tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def stand_in_if_empty(inputs: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor,
                      copies: int = 1) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """The batch, or ``copies`` all-zero rows of weight 0 when it has no rows.

    An empty batch is ordinary under Poisson sampling (probability ``(1 - q)^N`` per step),
    but no kernel may be trusted with one: on CPUs without AVX2, TensorFlow 2.15's oneDNN
    convolution returns a wrong shape for a zero-row input, and a compiled graph with group
    normalization aborts the process (TensorFlow 2.21 fails an eager ``Conv2D`` too). So
    the guard is in the graph, not in a kernel's zero-size behaviour: an empty batch is
    replaced by a data-independent stand-in whose loss weight is 0, so its gradient, norm
    and every sum it enters are exactly zero; the callers slice its rows back off.

    Returns:
        ``(inputs, labels, weights, rows)``: what to compute on, and the real row count.
    """
    rows = tf.shape(inputs)[0]
    if inputs.shape[0] is not None and inputs.shape[0] > 0:  # statically non-empty: no guard
        return inputs, labels, weights, rows

    def stand_in():
        shape = tf.concat([[copies], tf.shape(inputs)[1:]], 0)
        return (tf.zeros(shape, inputs.dtype), tf.zeros([copies], labels.dtype),
                tf.zeros([copies], weights.dtype))

    inputs, labels, weights = tf.cond(rows > 0, lambda: (inputs, labels, weights), stand_in)
    return inputs, labels, weights, rows


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
        pre, out, kept = rule.run(layer, args[0], tap)
        uses.append(_Use(layer, rule, kept, pre))
        return out

    with tf.GradientTape() as tape:
        logits = graph.run(net, inputs, hook)
        total = tf.reduce_sum(row_losses(logits, labels, weights))
    dpres = tape.gradient(total, [u.pre for u in uses], unconnected_gradients=tf.UnconnectedGradients.ZERO)
    for use, dpre in zip(uses, dpres):
        use.dpre = dpre
    return uses, logits


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
        if k in self._done:  # an outer tape differentiating through this pass: the ledger is closed
            return []
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
        net: a network for which :func:`~tfdprobust.per_example.registry.supports` is true.
        inputs, labels, weights: ``copies * B`` rows; example ``i`` owns rows
            ``i, B + i, ...`` (its loss is the sum of theirs).
        method: ``auto`` (per layer by :func:`~tfdprobust.per_example.costs.norm_costs`), or force ``ghost`` /
            ``materialized`` for every factor-form weight (tests).

    Returns:
        ``(squared, logits, methods)``: ``squared[k]`` is ``[B]`` for ``net.trainable_variables[k]``.
    """
    inputs, labels, weights, rows = stand_in_if_empty(inputs, labels, weights, copies)
    book = _Book(net, inputs, labels, weights, copies, method, sums=1)
    return [e.squared[:rows // copies] for e in book.entries], book.logits[:rows], book.methods


def clipped_sum(net: tf.keras.Model, inputs: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor,
                bound, copies: int = 1, clipping_name: str = "flat", gamma: float = 0.01,
                method: str = "auto", unclipped: bool = False, chunk_rows: Optional[int] = None) -> ClippedSum:
    """The clipped gradient sum by book-keeping: one forward pass, one backward pass to the
    pre-activations, per-layer norms (ghost or materialized, by cost), then the sum of the
    clipped gradients from one weight-gradient op (or one weighted row sum) per layer.

    Args:
        net, inputs, labels, weights, copies, method: as in :func:`squared_norms`.
        bound: C (a float or a scalar tensor, e.g. the adaptive bound's value).
        clipping_name: a :data:`tfdprobust.clipping.CLIPPINGS` strategy.
        gamma: automatic clipping's stabilizer.
        unclipped: also return the plain gradient sum (the clipping diagnostics' cosine).
        chunk_rows: at most this many rows (``copies`` per example) per pass: a larger batch
            runs in chunks of whole examples, one after the other, and their sums are added.
            Exact: an example's clip factor depends on its own gradient alone, and chunks share
            no example. It bounds the memory of the activations, output gradients and
            per-example gradients held at once; ``None``: one pass.
    """
    if chunk_rows is not None:
        require(chunk_rows >= copies, f"chunk_rows must be >= copies={copies}, got {chunk_rows}")
        static_rows = inputs.shape[0]
        if static_rows is None or static_rows > chunk_rows:
            return _chunked_clipped_sum(net, inputs, labels, weights, bound, copies, clipping_name, gamma, method,
                                        unclipped, max(chunk_rows // copies, 1))
    inputs, labels, weights, rows = stand_in_if_empty(inputs, labels, weights, copies)
    book = _Book(net, inputs, labels, weights, copies, method, sums=2 if unclipped else 1)
    scales, norms = clipping.clip_factors([e.squared for e in book.entries], bound, clipping_name, gamma)
    keep = tf.math.is_finite(norms)
    sets = [scales, [tf.ones_like(norms)] * len(scales)] if unclipped else [scales]
    sums = book.weighted_sums(sets, keep)
    # A stand-in's rows weigh 0, so its sums are exactly zero already; only its norms and
    # logits (which adaptive clipping and the metrics count) are cut off.
    return ClippedSum(sums[0], norms[:rows // copies], book.logits[:rows], sums[1] if unclipped else None,
                      book.methods)


def _chunked_clipped_sum(net, inputs, labels, weights, bound, copies, clipping_name, gamma, method, unclipped,
                         chunk: int) -> ClippedSum:
    """:func:`clipped_sum` over chunks of ``chunk`` examples (a ``tf.while_loop``, so a batch of
    unknown size is traced once and one chunk's tensors are alive at a time)."""
    examples = tf.shape(inputs)[0] // copies

    def per_copy(t):  # [copies * B, ...] -> [copies, B, ...]
        return tf.reshape(t, tf.concat([[copies, examples], tf.shape(t)[1:]], 0))

    def rows_of(t, start, stop):  # the chunk's rows, still copy-major: rows i, n + i, ...
        part = t[:, start:stop]
        return tf.reshape(part, tf.concat([[-1], tf.shape(t)[2:]], 0))

    grouped = [per_copy(t) for t in (inputs, labels, weights)]
    for g, t in zip(grouped, (inputs, labels, weights)):
        g.set_shape([copies, None, *t.shape[1:]])
    variables = net.trainable_variables
    classes = net.output_shape[-1]
    chunks = (examples + chunk - 1) // chunk
    recorded: Dict[str, Dict[str, str]] = {}

    def body(k, clipped_acc, unclipped_acc, norms_ta, logits_ta):
        start = k * chunk
        stop = tf.minimum(start + chunk, examples)
        x, y, w = (rows_of(g, start, stop) for g in grouped)
        x.set_shape([None, *inputs.shape[1:]])
        out = clipped_sum(net, x, y, w, bound, copies, clipping_name, gamma, method, unclipped)
        recorded["methods"] = out.methods
        clipped_acc = [a + c for a, c in zip(clipped_acc, out.clipped)]
        if unclipped:
            unclipped_acc = [a + c for a, c in zip(unclipped_acc, out.unclipped)]
        logits = tf.transpose(tf.reshape(out.logits, [copies, -1, classes]), [1, 0, 2])  # [n, copies, C]
        return k + 1, clipped_acc, unclipped_acc, norms_ta.write(k, out.norms), logits_ta.write(k, logits)

    zeros = [tf.zeros_like(v) for v in variables]
    dtype = variables[0].dtype
    _, clipped_acc, unclipped_acc, norms_ta, logits_ta = tf.while_loop(
        lambda k, *_: k < chunks, body,
        (tf.constant(0), zeros, list(zeros), tf.TensorArray(dtype, size=chunks, infer_shape=False),
         tf.TensorArray(dtype, size=chunks, infer_shape=False, element_shape=tf.TensorShape([None, copies, classes]))),
        parallel_iterations=1)  # one chunk at a time: the point is the memory
    norms = tf.cond(chunks > 0, norms_ta.concat, lambda: tf.zeros([0], dtype))
    logits = tf.cond(chunks > 0, logits_ta.concat, lambda: tf.zeros([0, copies, classes], logits_ta.dtype))
    logits = tf.reshape(tf.transpose(logits, [1, 0, 2]), [-1, classes])
    norms.set_shape([None])
    return ClippedSum(clipped_acc, norms, logits, unclipped_acc if unclipped else None, recorded.get("methods", {}))


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
        net: a network for which :func:`~tfdprobust.per_example.registry.supports` is true.
        inputs: ``[rows, ...]`` images.
        labels: ``[rows]`` int labels.
        weights: ``[rows]`` loss weights.

    Returns:
        ``(grads, logits)``: ``grads[k]`` is ``[rows, *net.trainable_variables[k].shape]``.
    """
    inputs, labels, weights, rows = stand_in_if_empty(inputs, labels, weights)
    uses, logits = _forward_backward(net, inputs, labels, weights)
    by_var: Dict[int, tf.Tensor] = {}
    for use in uses:
        for weight, grad in zip(use.layer.trainable_weights, use.rule.per_example(use.layer, use.a, use.dpre)):
            by_var[id(weight)] = by_var[id(weight)] + grad if id(weight) in by_var else grad
    return [by_var[id(v)][:rows] if id(v) in by_var else tf.zeros(tf.concat([[rows], v.shape], 0), v.dtype)
            for v in net.trainable_variables], logits[:rows]


def vectorized_map_gradients(
    net: tf.keras.Model, inputs: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor
) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """The generic (slower) path: one-row passes through the whole network, vectorized by
    ``tf.vectorized_map`` (or looped by ``tf.map_fn`` when the network holds a layer the
    vectorizer cannot run, see :func:`~tfdprobust.per_example.rules._vectorizable`).

    Same contract as :func:`per_example_gradients`, for any network.
    """
    inputs, labels, weights, rows = stand_in_if_empty(inputs, labels, weights)
    variables = net.trainable_variables
    logits = net(inputs, training=False)

    def fn(row):
        one_input, one_label, one_weight = row
        return tf.reduce_sum(row_losses(net(one_input, training=False), one_label, one_weight))

    grads = one_example_vjps(fn, variables, (inputs, labels, weights), vectorize=_vectorizable(net))
    return [g[:rows] for g in grads], logits[:rows]


def fold_rows(grads: Sequence[tf.Tensor], copies: int) -> List[tf.Tensor]:
    """Adds the gradients of ``copies`` stacked copies of a batch: rows i, B+i, 2B+i, ...

    Used to combine an example's clean and adversarial rows into its single gradient.
    """
    if copies == 1:
        return list(grads)
    return [tf.add_n(_split_copies(g, copies)) for g in grads]
