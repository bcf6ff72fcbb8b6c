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
* Conv2D: ``A_i`` = patches of ``a_i`` (strides, 'same' or 'valid' padding and dilation), ``G_i = dz_i`` over the ``T = H_out W_out`` positions;
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

The package: :mod:`~tfdprobust.per_example.factors` (factor forms),
:mod:`~tfdprobust.per_example.costs` (the per-layer chooser), :mod:`~tfdprobust.per_example.norms`,
:mod:`~tfdprobust.per_example.registry` (rules, supported networks, the default-deny layer
list), :mod:`~tfdprobust.per_example.rules` (the registered rules and the per-layer
fallback) and :mod:`~tfdprobust.per_example.driver` (the passes and the clipped sum).
"""

from tfdprobust.per_example.costs import MATERIALIZED_ELEMENT_COST, choose_method, norm_costs
from tfdprobust.per_example.driver import (METHODS, ClippedSum, clipped_sum, fold_rows, per_example_gradients,
                                           row_losses, squared_norms, stand_in_if_empty,
                                           vectorized_map_gradients)
from tfdprobust.per_example.factors import ConvFactors, DenseFactors, Factors, Piece
from tfdprobust.per_example.registry import (REGISTRY, LayerRule, RuleRegistry, register_per_example_layer,
                                             register_rule, rule_for, supports, validate_network)
from tfdprobust.per_example.rules import one_example_vjps

__all__ = [
    "MATERIALIZED_ELEMENT_COST", "METHODS", "REGISTRY", "ClippedSum", "ConvFactors", "DenseFactors", "Factors",
    "LayerRule", "Piece", "RuleRegistry", "choose_method", "clipped_sum", "fold_rows", "norm_costs",
    "one_example_vjps", "per_example_gradients", "register_per_example_layer", "register_rule", "row_losses",
    "rule_for", "squared_norms", "stand_in_if_empty", "supports", "validate_network", "vectorized_map_gradients",
]
