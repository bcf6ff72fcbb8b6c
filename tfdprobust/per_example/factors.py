"""Per-example weight gradients in factor form ``g_i = A_i^T G_i`` (see :mod:`tfdprobust.per_example`),
and the row helpers the rules and the driver share."""

import math
from typing import List, Optional, Tuple, Union

import tensorflow as tf


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

    def geometry(self) -> str:
        """What decides the cost of this factor form's two norm methods, as a cache key."""
        raise NotImplementedError

    def synthetic(self, rows: int, rng) -> "Factors":
        """Factors of the same kind and per-example shapes over ``rows`` rows of random numbers
        (for :mod:`~tfdprobust.per_example.calibration`; no data of the caller's)."""
        raise NotImplementedError


class DenseFactors(Factors):
    """``A`` ``[rows, T, d]`` and ``G`` ``[rows, T, p]`` given explicitly."""

    def __init__(self, activations: tf.Tensor, output_grads: tf.Tensor):
        self.activations, self.output_grads = activations, output_grads
        self.dims = (activations.shape[1], activations.shape[2], output_grads.shape[2])

    @property
    def dtype(self):
        return self.activations.dtype

    def geometry(self):
        return f"dense:{self.dims}:{self.dtype.name}"

    def synthetic(self, rows, rng):
        t, d, p = self.dims
        return DenseFactors(_random(rng, (rows, t, d), self.dtype), _random(rng, (rows, t, p), self.dtype))

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

    @property
    def dtype(self):
        return self.a.dtype

    def geometry(self):
        return (f"conv:{self.a.shape[1:]}:{self.dz.shape[1:]}:{self.kernel_size}:{self.strides}:"
                f"{self.dilation_rate}:{self.padding}:{self.dtype.name}")

    def synthetic(self, rows, rng):
        return ConvFactors(_random(rng, (rows, *self.a.shape[1:]), self.dtype),
                           _random(rng, (rows, *self.dz.shape[1:]), self.dtype),
                           self.kernel_size, self.strides, self.dilation_rate, self.padding)

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
        layout = self.layout()
        if layout == "filter_op":  # the framework's own filter-gradient op, one example at a time
            positions, d, p = self.dims
            return [tf.reshape(self._filter_grads(), [-1, d, p])]
        g = self._g()
        if layout == "unfold":  # one batched matmul on the stacked offsets
            return [tf.matmul(self._unfolded_t(), g)]
        # one batched matmul per kernel offset, [C_in x T] x [T x p] per example
        positions = self.dims[0] if self.dims[0] is not None else -1
        return [tf.matmul(tf.reshape(o, [-1, self.a.shape[-1], positions]), g) for o in self._offsets()]

    def _filter_grads(self) -> tf.Tensor:
        """``[rows, kh, kw, C_in, C_out]``: each row's filter gradient by the convolution's own
        filter-gradient op (oneDNN's backward-weights kernel on a CPU) on a batch of one, in a
        loop over the rows (``tf.map_fn``: the graph stays one op whatever the batch)."""
        shape = [*self.kernel_size, self.a.shape[-1], self.dz.shape[-1]]

        def one(pair):
            a, dz = pair
            return tf.raw_ops.Conv2DBackpropFilter(input=a[None], filter_sizes=shape, out_backprop=dz[None],
                                                   strides=[1, *self.strides, 1], padding=self.padding)

        return tf.map_fn(one, (self.a, self.dz), fn_output_signature=tf.TensorSpec(shape, self.a.dtype))

    def layout(self) -> str:
        """How :meth:`blocks` writes out the per-example gradients:

        * ``"unfold"``: the unfolded patches ``A^T`` (``T d`` floats per example), then one
          batched matmul. It pays when the per-offset matmuls are tiny: few channels (< 8), or
          few positions and channels (``T <= 64``, ``C_in <= 32``: LeNet's second convolution,
          64 positions x 20 channels, took 31 against 42 ms at B = 250 per offset; the CNN's
          second, 7.5 against 8.8);
        * ``"filter_op"``: many positions (``T > 64``), undilated: the convolution's own
          filter-gradient op on one example at a time. ResNet-20's first stage on MNIST
          (784 positions, 16 channels) took 0.55 to 0.87 times as long as per kernel offset
          (B = 64 and 250), its second stage (196 positions) 0.46 to 0.85 times;
        * ``"offsets"``: otherwise (few positions and many channels, or dilated: that op's CPU
          kernel has no dilation), one batched matmul ``[C_in x T] x [T x p]`` per kernel
          offset. ResNet-20's last stage (49 positions, 64 channels) took 0.59 to 0.80 times
          as long as with the filter-gradient op in two of three runs (1.11 in the third).

        Measured one thread, CPU time, on a 2-core AMD EPYC with AVX2 and FMA, TensorFlow
        2.15 and 2.21 (``benchmarks/conv_per_example.py``; the unfold figures in
        ``experiments/benchmarks/profile_s10.md``, the others in
        ``experiments/benchmarks/conv_s12.md``).
        """
        channels, positions = self.a.shape[-1], self.dims[0]
        few_positions = positions is not None and positions <= 64
        if channels < 8 or (few_positions and channels <= 32):
            return "unfold"
        return "filter_op" if not few_positions and self.dilation_rate == (1, 1) else "offsets"

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


def _positions(t: tf.Tensor) -> tf.Tensor:
    """``[rows, ..., c] -> [rows, T, c]`` with ``T`` the product of the middle axes."""
    middle = t.shape[1:-1]
    positions = math.prod(middle) if all(m is not None for m in middle) else -1
    return tf.reshape(t, [tf.shape(t)[0], positions, t.shape[-1]])


def _random(rng, shape, dtype) -> tf.Tensor:
    return tf.constant(rng.standard_normal(shape), dtype)


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


def _zero_dropped(t: tf.Tensor, keep: tf.Tensor, all_kept: tf.Tensor) -> tf.Tensor:
    """``t`` with the rows of dropped (non-finite) examples set to exactly zero."""
    def masked():
        # A broadcast scalar zero, not tf.zeros_like(t): with a static shape, Grappler folds
        # zeros_like into a constant as large as t and keeps it for the model's lifetime, for a
        # branch that runs only when an example's gradient is not finite (LeNet at B = 32: an
        # 800,000-float constant for one layer; tests/test_ghost_clipping.py checks the graph).
        shape = [-1] + [1] * (t.shape.rank - 1)
        return tf.where(tf.reshape(keep, shape), t, tf.zeros([], t.dtype))

    return tf.cond(all_kept, lambda: tf.identity(t), masked)
