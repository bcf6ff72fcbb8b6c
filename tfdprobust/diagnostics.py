"""What clipping and noise do to each step: diagnostics for the researcher's eyes only.

Computed by the train step on every private batch (:func:`clipping_diagnostics`) and
logged per step to TensorBoard and summarized in the run JSON by
:class:`DiagnosticsLogger`:

* ``diag_clipped_fraction``: fraction of the batch whose gradient norm exceeds the current C;
* ``diag_norm_p10`` / ``_p50`` / ``_p90``: quantiles of the unclipped per-example norms;
* ``diag_clip_bias_cosine``: cosine between the clipped sum and the unclipped sum of the
  per-example gradients (1 = clipping keeps the direction; the clipping bias of Chen, Wu
  and Hong, "Understanding Gradient Clipping in Private SGD: A Geometric Perspective", and
  of Xiao et al.). Only with ``--clip_bias_cosine`` (``DPConfig.clip_bias_cosine``): the
  unclipped sum is a second weighted sum per layer, which the other keys do not need;
* ``diag_snr``: signal-to-noise ratio ``||clipped mean|| / (sigma C / B * sqrt(P))``, i.e.
  ``||clipped sum|| / (sigma C sqrt(P))`` for P parameters: the norm of the signal over the
  expected norm of the noise;
* ``clip_bound``: the C this step used (moves under adaptive clipping, Andrew et al.).

**These are statistics of private data and are NOT covered by epsilon** (except
``clip_bound``, which is a post-processing of noised releases). They never go into an
export's ``metadata.json``; the run JSON beside it holds them under
:data:`RESULT_KEY`, whose name says so.
"""

import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

#: Key of the run JSON section holding the diagnostics summary.
RESULT_KEY = "diagnostics_not_covered_by_epsilon"
#: Per-step keys the train step returns (prefix ``diag_`` marks private-batch statistics).
KEYS = ("diag_clipped_fraction", "diag_norm_p10", "diag_norm_p50", "diag_norm_p90",
        "diag_clip_bias_cosine", "diag_snr", "clip_bound")
PRIVATE_KEYS = tuple(k for k in KEYS if k.startswith("diag_"))


def _quantile(sorted_values: tf.Tensor, q: float) -> tf.Tensor:
    """Nearest-rank quantile of a sorted vector; NaN when it is empty (an empty batch)."""
    n = tf.shape(sorted_values)[0]
    index = tf.cast(tf.math.ceil(q * tf.cast(n, tf.float32)), tf.int32) - 1
    index = tf.clip_by_value(index, 0, tf.maximum(n - 1, 0))
    return tf.cond(n > 0, lambda: tf.gather(sorted_values, index), lambda: tf.constant(math.nan))


def _flat_norm(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(t)) for t in tensors]))


def unclipped_sum(per_example_grads: Sequence[tf.Tensor], norms: tf.Tensor) -> List[tf.Tensor]:
    """The plain sum of the per-example gradients over the examples that were not dropped."""
    finite = tf.math.is_finite(norms)
    out = []
    for g in per_example_grads:
        shape = tf.concat([tf.shape(g)[:1], tf.ones([tf.rank(g) - 1], tf.int32)], 0)
        out.append(tf.reduce_sum(tf.where(tf.reshape(finite, shape), g, tf.zeros_like(g)), axis=0))
    return out


def clipping_diagnostics(per_example_grads: Sequence[tf.Tensor], clipped_sum: Sequence[tf.Tensor],
                         norms: tf.Tensor, bound: tf.Tensor, noise_multiplier: float) -> Dict[str, tf.Tensor]:
    """This step's diagnostics (see the module docstring); all float32 scalars.

    Args:
        per_example_grads: the unclipped per-example gradients.
        clipped_sum: the sum of the clipped gradients (before noise).
        norms: the unclipped global norms (non-finite for dropped examples).
        bound: the C this step clipped to.
        noise_multiplier: sigma.
    """
    return sum_diagnostics(clipped_sum, unclipped_sum(per_example_grads, norms), norms, bound, noise_multiplier)


def sum_diagnostics(clipped_sum: Sequence[tf.Tensor], unclipped: Optional[Sequence[tf.Tensor]],
                    norms: tf.Tensor, bound: tf.Tensor, noise_multiplier: float) -> Dict[str, tf.Tensor]:
    """:func:`clipping_diagnostics` from the two sums alone (what the book-keeping path of
    :mod:`tfdprobust.per_example` has: it never writes out per-example gradients).

    Args:
        unclipped: the plain gradient sum over the examples that were not dropped, or
            ``None`` (``--noclip_bias_cosine``): then ``diag_clip_bias_cosine`` is left out.
    """
    finite = tf.math.is_finite(norms)
    kept = tf.boolean_mask(norms, finite)
    count = tf.cast(tf.size(kept), tf.float32)
    bound32 = tf.cast(bound, tf.float32)
    clipped_fraction = tf.math.divide_no_nan(
        tf.reduce_sum(tf.cast(tf.cast(kept, tf.float32) > bound32, tf.float32)), count)
    ordered = tf.cast(tf.sort(kept), tf.float32)
    clipped_norm = _flat_norm(clipped_sum)
    parameters = float(sum(int(np.prod(g.shape)) for g in clipped_sum))
    noise_norm = noise_multiplier * tf.cast(bound, clipped_norm.dtype) * math.sqrt(parameters)
    snr = clipped_norm / noise_norm if noise_multiplier > 0 else tf.constant(math.inf)
    out = {
        "diag_clipped_fraction": clipped_fraction,
        "diag_norm_p10": _quantile(ordered, 0.1),
        "diag_norm_p50": _quantile(ordered, 0.5),
        "diag_norm_p90": _quantile(ordered, 0.9),
        "diag_snr": tf.cast(snr, tf.float32),
        "clip_bound": bound32,
    }
    if unclipped is not None:
        dot = tf.add_n([tf.reduce_sum(a * b) for a, b in zip(clipped_sum, unclipped)])
        out["diag_clip_bias_cosine"] = tf.cast(tf.math.divide_no_nan(dot, clipped_norm * _flat_norm(unclipped)),
                                               tf.float32)
    return out


#: Every TensorBoard tag of the diagnostics starts with this: they are statistics of the
#: private batches (a realised Poisson batch size, single examples' gradient norms).
TAG_PREFIX = "not_covered_by_epsilon/clipping/"
README = "README.txt"
README_TEXT = (
    "NOT COVERED BY EPSILON. The TensorBoard scalars in this folder (tags {prefix}*) are per-step\n"
    "statistics of the private training batches (clipped fraction, gradient-norm quantiles, ...):\n"
    "they can reveal a realised batch size or one example's gradient norm. The run's DP guarantee\n"
    "does not cover them. For the researcher; do not publish.\n")
ABORTED_TEXT = ("NOT COVERED BY EPSILON. The run that wrote here was aborted; its diagnostics (statistics of\n"
                "the private training batches) were deleted.\n")


def _write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class DiagnosticsLogger(tf.keras.callbacks.Callback):
    """Writes each step's diagnostics to TensorBoard (``log_dir``) and keeps them for the
    run JSON's summary (:meth:`summary`).

    The folder gets a ``README.txt`` saying that nothing in it is covered by epsilon, and
    every tag starts with :data:`TAG_PREFIX`. :meth:`abort` (a run that stopped before
    exporting) deletes the event files and leaves a README saying so.

    Args:
        log_dir: TensorBoard folder; ``None`` keeps the values without writing summaries.
    """

    def __init__(self, log_dir: Optional[str] = None):
        super().__init__()
        self.log_dir = log_dir
        self.values: Dict[str, List[float]] = {k: [] for k in KEYS}
        self._writer = None
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            _write_text(os.path.join(log_dir, README), README_TEXT.format(prefix=TAG_PREFIX))
            self._writer = tf.summary.create_file_writer(log_dir)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        present = {k: float(logs[k]) for k in KEYS if k in logs}
        if not present:
            return
        step = int(self.model.optimizer.iterations.numpy())
        for key, value in present.items():
            self.values[key].append(value)
        if self._writer is not None:
            with self._writer.as_default(step=step):
                for key, value in present.items():
                    tf.summary.scalar(f"{TAG_PREFIX}{key}", value)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def abort(self) -> None:
        """The run stopped before exporting: delete what this logger wrote, say so in the README."""
        if self._writer is None:
            return
        self._writer.close()
        self._writer = None
        for name in os.listdir(self.log_dir):
            if name.startswith("events.out.tfevents"):
                os.remove(os.path.join(self.log_dir, name))
        _write_text(os.path.join(self.log_dir, README), ABORTED_TEXT)

    def summary(self) -> Dict[str, object]:
        """Per-key mean over steps (NaN steps, i.e. empty batches, skipped), first and last value."""
        out: Dict[str, object] = {
            "note": ("statistics of the private training batches: NOT covered by epsilon (clip_bound "
                     "excepted: it is computed from noised releases); for the researcher, not for publication"),
            "steps": max((len(v) for v in self.values.values()), default=0),
            "tensorboard_dir": self.log_dir,
        }
        for key, values in self.values.items():
            if not values:
                continue
            arr = np.asarray(values, np.float64)
            finite = arr[np.isfinite(arr)]
            out[key] = {"mean": float(finite.mean()) if finite.size else None,
                        "first": values[0], "last": values[-1]}
        return out
