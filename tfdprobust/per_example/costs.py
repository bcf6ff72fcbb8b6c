"""The per-layer cost model that picks ghost or materialized norms (Bu et al., "Scalable and
efficient training of large convolutional neural networks with differential privacy",
mixed ghost clipping)."""

from typing import Dict, Optional


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


def written_out_floats(net) -> int:
    """Floats per example that the clipped sum writes out and holds until the clip factors
    are known: an estimate from the network's shape alone (no tracing, no probe).

    A convolution over many positions takes materialized norms (ghost norms would cost
    ``T^2`` per example), and its per-example gradient, as large as its weights, stays
    alive until every layer's norm is known. A dense layer over one position takes ghost
    norms and holds nothing per example. So the estimate is the number of trainable
    weights in the network's convolutions (nested layers included); ResNet-20: 267,408
    of its 269,434, about 1 MB per example in float32.
    """
    import tensorflow as tf  # here: the cost model above stays importable without TensorFlow

    convs = (tf.keras.layers.Conv1D, tf.keras.layers.Conv2D, tf.keras.layers.Conv3D)
    layers = [m for m in [net, *net.submodules] if isinstance(m, convs)]
    return sum(int(w.shape.num_elements()) for layer in layers for w in layer.trainable_weights)
