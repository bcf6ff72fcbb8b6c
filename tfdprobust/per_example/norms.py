"""One weight's per-example squared norm over its uses and an example's copies: ghost (Gram
matrices) or materialized, by the rule of :mod:`~tfdprobust.per_example.calibration` (the cost
model of :mod:`~tfdprobust.per_example.costs`, and a probe where it is not decisive)."""

import math
from typing import List

import tensorflow as tf

from tfdprobust.per_example import calibration
from tfdprobust.per_example.factors import Factors, Piece, _split_copies


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
        chosen = calibration.choose(parts, positions, d, p, sums) if method == "auto" else method
        if chosen == "ghost":
            return _ghost_squared_norm(parts), "ghost", None
        blocks = [tf.add_n(list(same)) for same in zip(*[f.blocks() for f in parts])]
    else:
        blocks = [tf.add_n([r for piece in pieces
                            for r in _split_copies(piece.materialize() if isinstance(piece, Factors) else piece,
                                                   copies)])]
    return tf.add_n([_sum_squares(b) for b in blocks]), "materialized", blocks
