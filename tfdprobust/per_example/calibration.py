"""Measuring, on the machine that runs, whether a layer's norm is cheaper ghost or materialized.

:func:`~tfdprobust.per_example.costs.norm_costs` counts multiply-adds; what a multiply-add
costs depends on the kernel that runs it. A batched GEMM of the Gram matrices, the per-example
``A^T G`` and a convolution's filter gradient each go to different kernels (Eigen, compiled for
one instruction set at build time; oneDNN, dispatched at run time by the CPU's), so the same
layer can be cheaper ghost on one CPU and materialized on another. The cost model is therefore
trusted only where it is decisive: when one method's count is at least :data:`DECISIVE` times
the other's, it chooses (no measurement would overturn a factor that large). Otherwise the layer
is **probed**: both methods' norm and weighted sums are timed on *synthetic* factors of the
layer's exact shapes (random numbers drawn here, never the training data, so the choice and the
cache reveal nothing about any private example; both methods are exact, so the choice changes
the time, not the result beyond float rounding), and the faster one is used.

The rule, as :func:`choose` applies it:

1. a statically unknown ``T``: materialized (the cost model cannot price ghost);
2. the cost model is decisive (ratio >= :data:`DECISIVE`), or probing is off, or the network is
   being built in a ``tf.compat.v1`` graph (no eager context to run a probe in): the cheaper count;
3. otherwise: the method with the smaller measured CPU time (the minimum over
   :data:`REPEATS` interleaved calls of each, one compiled function per method, after one
   warm-up call).

Probe results are cached per machine (CPU model and instruction-set flags, TensorFlow version,
the oneDNN settings in the environment) and per layer geometry in a JSON file under the user's
cache directory (``$XDG_CACHE_HOME/tfdprobust``, else ``~/.cache/tfdprobust``; or the directory
in ``TFDPROBUST_CACHE_DIR``), written to a temporary file and renamed. Setting
``TFDPROBUST_NORM_PROBE=off`` turns probing off (rule 2 then decides every layer), e.g. for
runs that must choose identically on every machine.
"""

import hashlib
import json
import os
import tempfile
import time
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf

#: Above this ratio of the two multiply-add counts the cost model chooses without a probe.
DECISIVE = 4.0
#: Examples in a probe batch (synthetic): large enough that per-call overheads do not decide.
PROBE_ROWS = 64
#: Timed calls of each method (interleaved); the minimum counts.
REPEATS = 3
PROBE_ENV = "TFDPROBUST_NORM_PROBE"
CACHE_ENV = "TFDPROBUST_CACHE_DIR"
CACHE_FILE = "norm_methods.json"
#: Relevant oneDNN / TensorFlow switches: a different value is a different machine.
_ENV_KEYS = ("ONEDNN_MAX_CPU_ISA", "TF_ENABLE_ONEDNN_OPTS", "DNNL_MAX_CPU_ISA")

_memory: Dict[str, Dict[str, str]] = {}


def probing_enabled() -> bool:
    return os.environ.get(PROBE_ENV, "on").strip().lower() not in ("0", "off", "false", "no")


def machine_key() -> str:
    """CPU model, instruction-set flags, TensorFlow version and the oneDNN environment."""
    from tfdprobust import machine

    cpu = machine.cpu()
    model, flags = cpu["model"], " ".join(cpu["flags"])
    env = ",".join(f"{k}={os.environ.get(k, '')}" for k in _ENV_KEYS)
    text = f"{model}|{flags}|tf {tf.__version__}|{env}"
    return f"{model} / tf {tf.__version__} / {hashlib.sha256(text.encode()).hexdigest()[:16]}"


def cache_path() -> str:
    base = os.environ.get(CACHE_ENV) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "tfdprobust")
    return os.path.join(base, CACHE_FILE)


def _load() -> Dict[str, Dict[str, str]]:
    try:
        with open(cache_path(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _store(machine: str, layer: str, method: str) -> None:
    """Adds one entry, written to a temporary file and renamed (a reader never sees half a file;
    a concurrent writer may lose an entry, which is only probed again)."""
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = _load()
        data.setdefault(machine, {})[layer] = method
        fd, tmp = tempfile.mkstemp(prefix=".norm_methods-", dir=os.path.dirname(path))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs a probe next time


def _cpu_seconds(fn: Callable[[], None]) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def measure(parts, sums: int) -> Dict[str, float]:
    """CPU seconds of each method (norm plus ``sums`` weighted sums) on synthetic factors
    shaped like ``parts`` (:data:`PROBE_ROWS` examples), the minimum of :data:`REPEATS` calls."""
    rng = np.random.default_rng(0)  # synthetic, public: this randomness protects nothing
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # each probe traces two small functions; TensorFlow warns of "retracing"
    try:
        return _measure(parts, sums, rng)
    finally:
        logger.setLevel(level)


def _measure(parts, sums: int, rng) -> Dict[str, float]:
    from tfdprobust.per_example.norms import _norm_of

    with tf.init_scope():  # eager, even when called while a tf.function is being traced
        fakes = [f.synthetic(PROBE_ROWS, rng) for f in parts]
        scales = tf.constant(rng.random((sums, PROBE_ROWS)), fakes[0].dtype)

        def work(method):
            @tf.function
            def run():
                squared, _, blocks = _norm_of(fakes, 1, method, sums)
                if blocks is not None:
                    out = [tf.tensordot(scales, b, axes=1) for b in blocks]
                else:
                    out = [f.weighted_sums(scales) for f in fakes]
                return [squared, *out]

            return lambda: [t.numpy() for t in run()]

        fns = {m: work(m) for m in ("ghost", "materialized")}
        for fn in fns.values():  # tracing and the first call's allocations
            fn()
        times = {m: float("inf") for m in fns}
        for _ in range(REPEATS):
            for m, fn in fns.items():
                times[m] = min(times[m], _cpu_seconds(fn))
    return times


def layer_key(parts, sums: int) -> str:
    return f"sums={sums}|" + "+".join(f.geometry() for f in parts)


def choose(parts: List, positions: Optional[int], d: int, p: int, sums: int) -> str:
    """``ghost`` or ``materialized`` for one weight by the rule in the module docstring."""
    from tfdprobust.per_example.costs import choose_method, norm_costs

    cheaper = choose_method(positions, d, p, sums)  # the cost model's pick (materialized for unknown T)
    if positions is None:
        return cheaper
    costs = norm_costs(positions, d, p, sums)
    ratio = max(costs.values()) / max(min(costs.values()), 1)
    if ratio >= DECISIVE or not probing_enabled() or not all(hasattr(f, "synthetic") for f in parts):
        return cheaper
    with tf.init_scope():
        # A tf.compat.v1 graph being built has no eager context to lift the probe into: the
        # probe cannot run there, so the cost model decides (a tf.function lifts fine).
        eager = tf.executing_eagerly()
    if not eager:
        return cheaper
    machine, layer = machine_key(), layer_key(parts, sums)
    known = _memory.setdefault(machine, {})
    if layer not in known:
        stored = _load().get(machine, {}).get(layer)
        if stored in ("ghost", "materialized"):
            known[layer] = stored
        else:
            times = measure(parts, sums)
            known[layer] = min(times, key=times.get)
            _store(machine, layer, known[layer])
    return known[layer]


def forget() -> None:
    """Drops what this process remembers (the file cache stays)."""
    _memory.clear()
