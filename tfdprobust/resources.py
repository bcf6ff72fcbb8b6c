"""Time and memory of a training run (seed 002 §4.3: tracked for every run).

:class:`ResourceMonitor` records the wall time of each epoch, the throughput and the peak
memory: host RSS (``getrusage``'s high-water mark of the process) and, on a GPU, the peak
of TensorFlow's allocator.

Throughput is the *expected* number of examples per epoch (steps x B) over the epoch's
wall time: the realised Poisson batch sizes are private, so they are not counted.
Wall time itself depends weakly on them (bigger batches take longer), so these figures
go to the run JSON and the printed summary, not into the exported model's metadata.

Example:
    >>> peak_host_rss_mb() > 0
    True
"""

import resource
import sys
import time
from typing import Dict, List, Optional

import tensorflow as tf


def peak_host_rss_mb() -> float:
    """The process' peak resident set size in MB (``ru_maxrss`` is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def peak_gpu_memory_mb() -> Optional[float]:
    """Peak memory TensorFlow allocated on the first GPU, or ``None`` without a GPU."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / (1024.0 * 1024.0)


class ResourceMonitor(tf.keras.callbacks.Callback):
    """Wall time per epoch, examples/s and peak memory of a ``fit``.

    Args:
        examples_per_epoch: expected examples per epoch (steps per epoch x batch size).
    """

    def __init__(self, examples_per_epoch: int):
        super().__init__()
        self.examples_per_epoch = examples_per_epoch
        self.epoch_seconds: List[float] = []
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_seconds.append(time.perf_counter() - self._start)

    def summary(self) -> Dict[str, object]:
        total = sum(self.epoch_seconds)
        return {
            "epoch_seconds": [round(s, 3) for s in self.epoch_seconds],
            "examples_per_second": (self.examples_per_epoch * len(self.epoch_seconds) / total) if total else None,
            "expected_examples_per_epoch": self.examples_per_epoch,
            "peak_host_rss_mb": round(peak_host_rss_mb(), 1),
            "peak_gpu_memory_mb": peak_gpu_memory_mb(),
        }
