"""Per-example filter gradients of a 2-D convolution: our kernels against the alternatives, side by side.

    python -m benchmarks.conv_per_example --layers=resnet20 --batch_size=64 --seconds=2 --rounds=3
    python -m benchmarks.conv_per_example --layers=resnet20 --batch_size=64 --out=experiments/benchmarks/conv_s12.md

Every method computes each example's squared filter-gradient norm ``||dL_i/dW||^2`` of one
convolution, from the layer's input ``a`` ``[B, H, W, C_in]`` and output gradient ``dz``:

* ``ours``: what the DP step runs when it materializes a convolution's gradient
  (:meth:`tfdprobust.per_example.factors.ConvFactors.blocks`, in the layout its rule picks,
  :meth:`~tfdprobust.per_example.factors.ConvFactors.layout`, named in the report);
* ``unfold``, ``offsets`` and ``filter_op``: each of those layouts forced (the unfolded patches
  and one batched matmul; one batched matmul per kernel offset; the filter-gradient op on one
  example at a time);
* ``ghost``: the Gram-matrix norm (:func:`tfdprobust.per_example.norms._ghost_squared_norm`),
  which never writes the gradient out (Li et al., "Large Language Models Can Be Strong
  Differentially Private Learners");
* ``depthwise``: the batch folded into the channels of one depthwise convolution whose filter
  is ``dz`` (Rochette, Manoel and Tramel, "Efficient Per-Example Gradient Computations in
  Convolutional Neural Networks");
* ``grouped_xla``: the same fold as a grouped convolution (``B`` groups) differentiated with
  respect to its filter. TensorFlow runs grouped convolutions on a CPU only under XLA, so this
  one is XLA-compiled; it is timed only with ``--grouped`` (it took seconds per call here).

Each method's gradient (or norm) is checked against the materialized reference first; a
method that disagrees is reported, not timed. Times are CPU milliseconds of one thread, every
round calls every method once in the same order, and the table gives the median round and
each method's ratio to ``ours`` within the rounds. Layers are the per-layer geometries of the
peer benchmark's networks (:mod:`benchmarks.peers`).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Callable, Dict, List, Tuple  # noqa: E402

from absl import flags  # noqa: E402

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)

#: (name, H = W of the input, C_in, C_out, kernel, stride, padding): the convolutions of each
#: network on the peer benchmark's 28 x 28 x 1 MNIST digits, one row per distinct geometry.
LAYERS: Dict[str, List[Tuple[str, int, int, int, int, int, str]]] = {
    "resnet20": [("stem 28x28x1->16", 28, 1, 16, 3, 1, "SAME"), ("stage 1 28x28x16->16", 28, 16, 16, 3, 1, "SAME"),
                 ("stage 2 in 28x28x16->32 /2", 28, 16, 32, 3, 2, "SAME"),
                 ("stage 2 14x14x32->32", 14, 32, 32, 3, 1, "SAME"),
                 ("stage 3 in 14x14x32->64 /2", 14, 32, 64, 3, 2, "SAME"),
                 ("stage 3 7x7x64->64", 7, 64, 64, 3, 1, "SAME")],
    "cnn": [("conv1 28x28x1->16 8x8 /2", 28, 1, 16, 8, 2, "SAME"),
            ("conv2 13x13x16->32 4x4 /2 valid", 13, 16, 32, 4, 2, "VALID")],
    "lenet": [("conv1 28x28x1->20 5x5 valid", 28, 1, 20, 5, 1, "VALID"),
              ("conv2 12x12x20->50 5x5 valid", 12, 20, 50, 5, 1, "VALID")],
}
LAYOUTS = ("unfold", "offsets", "filter_op")
METHODS = ("ours", *LAYOUTS, "ghost", "depthwise", "grouped_xla")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as a program: absl has
    one global flag namespace, and the tests import this module beside the training CLI,
    whose --batch_size it would clash with."""
    flags.DEFINE_list("layers", ["resnet20"], f"Networks whose convolutions to measure: {', '.join(LAYERS)}.")
    flags.DEFINE_integer("batch_size", 64, "Examples per call.")
    flags.DEFINE_float("seconds", 2.0, "Minimum CPU seconds per method per round.")
    flags.DEFINE_integer("rounds", 3, "Rounds (each calls every method once, in the same order).")
    flags.DEFINE_boolean("grouped", False, "Also time the XLA grouped convolution (seconds per call on a CPU).")
    flags.DEFINE_string("out", None, "Also write the report (markdown) here.")


def depthwise_grads(a, dz, kernel: int, stride: int, padding: str = "SAME"):
    """Per-example filter gradients ``[B, k, k, C_in, C_out]`` of a convolution as one
    depthwise convolution: the input ``[C_in, H, W, B]`` (the batch as channels) filtered by
    ``dz`` ``[H_out, W_out, B, C_out]`` (each example's output gradient is its own channel's
    filter, ``C_out`` outputs per channel); the stride becomes the filter's dilation."""
    import tensorflow as tf

    batch, height, width, channels = a.shape
    _, out_h, out_w, out_c = dz.shape
    if padding == "SAME":  # TensorFlow's SAME: the odd pixel goes after
        pad_h = max((out_h - 1) * stride + kernel - height, 0)
        pad_w = max((out_w - 1) * stride + kernel - width, 0)
        a = tf.pad(a, [[0, 0], [pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]])
    out = tf.nn.depthwise_conv2d(tf.transpose(a, [3, 1, 2, 0]), tf.transpose(dz, [1, 2, 0, 3]), [1, 1, 1, 1],
                                 "VALID", dilations=[stride, stride])[:, :kernel, :kernel]
    return tf.transpose(tf.reshape(out, [channels, kernel, kernel, batch, out_c]), [3, 1, 2, 0, 4])


def grouped_grads(a, dz, kernel: int, stride: int, padding: str = "SAME"):
    """The same per-example gradients as the filter gradient of one grouped convolution: the
    batch folded into the channels of a single image, ``B`` groups."""
    import tensorflow as tf

    batch, height, width, channels = a.shape
    out_c = dz.shape[-1]
    x = tf.reshape(tf.transpose(a, [1, 2, 0, 3]), [1, height, width, batch * channels])
    g = tf.reshape(tf.transpose(dz, [1, 2, 0, 3]), [1, dz.shape[1], dz.shape[2], batch * out_c])
    filt = tf.zeros([kernel, kernel, channels, batch * out_c])
    with tf.GradientTape() as tape:
        tape.watch(filt)
        y = tf.nn.conv2d(x, filt, stride, padding)
    grad = tape.gradient(y, filt, output_gradients=g)
    return tf.transpose(tf.reshape(grad, [kernel, kernel, channels, batch, out_c]), [3, 0, 1, 2, 4])


def methods_for(a, dz, kernel: int, stride: int, padding: str, grouped: bool) -> Dict[str, Callable]:
    """Compiled functions, one per method, each returning the per-example squared norms."""
    import tensorflow as tf

    from tfdprobust.per_example.factors import ConvFactors
    from tfdprobust.per_example.norms import _ghost_squared_norm, _sum_squares

    factors = ConvFactors(a, dz, (kernel, kernel), (stride, stride), (1, 1), padding)

    def forced(layout):
        class Forced(ConvFactors):
            def layout(self):
                return layout

        f = Forced(a, dz, (kernel, kernel), (stride, stride), (1, 1), padding)
        return tf.function(lambda: tf.add_n([_sum_squares(b) for b in f.blocks()]))

    fns = {
        "ours": tf.function(lambda: tf.add_n([_sum_squares(b) for b in factors.blocks()])),
        **{layout: forced(layout) for layout in LAYOUTS},
        "ghost": tf.function(lambda: _ghost_squared_norm([factors])),
        "depthwise": tf.function(lambda: _sum_squares(depthwise_grads(a, dz, kernel, stride, padding))),
    }
    if grouped:
        fns["grouped_xla"] = tf.function(lambda: _sum_squares(grouped_grads(a, dz, kernel, stride, padding)),
                                         jit_compile=True)
    return fns


def reference_norms(a, dz, kernel: int, stride: int, padding: str = "SAME"):
    """Each example's squared filter-gradient norm, one example at a time through autodiff of
    ``tf.nn.conv2d`` (independent of every method above)."""
    import numpy as np
    import tensorflow as tf

    out = []
    for i in range(a.shape[0]):
        filt = tf.zeros([kernel, kernel, a.shape[-1], dz.shape[-1]])
        with tf.GradientTape() as tape:
            tape.watch(filt)
            y = tf.nn.conv2d(a[i:i + 1], filt, stride, padding)
        out.append(float(tf.reduce_sum(tf.square(tape.gradient(y, filt, output_gradients=dz[i:i + 1])))))
    return np.array(out)


def cpu_ms(fn: Callable, seconds: float) -> float:
    start, calls = time.process_time(), 0
    while True:
        fn()
        calls += 1
        spent = time.process_time() - start
        if spent >= seconds:
            return spent / calls * 1e3


def measure(layer, batch: int, seconds: float, rounds: int, grouped: bool, log=print) -> Dict:
    """One layer: agreement with the reference, then ``rounds`` rounds of every method."""
    import numpy as np
    import tensorflow as tf

    from tfdprobust.per_example.factors import ConvFactors

    name, size, c_in, c_out, kernel, stride, padding = layer
    rng = np.random.default_rng(0)
    out_size = -(-size // stride) if padding == "SAME" else (size - kernel) // stride + 1
    a = tf.constant(rng.standard_normal((batch, size, size, c_in)), tf.float32)
    dz = tf.constant(rng.standard_normal((batch, out_size, out_size, c_out)), tf.float32)
    ref = reference_norms(a, dz, kernel, stride, padding)
    fns = methods_for(a, dz, kernel, stride, padding, grouped)
    agree = {}
    for method, fn in fns.items():
        try:
            got = fn().numpy()
            agree[method] = float(np.max(np.abs(got - ref) / np.maximum(np.abs(ref), 1e-12)))
        except tf.errors.OpError as e:  # e.g. an op with no CPU kernel
            agree[method] = f"fails: {type(e).__name__}"
    ok = [m for m in fns if isinstance(agree[m], float) and agree[m] < 1e-3]
    times: Dict[str, List[float]] = {m: [] for m in ok}
    for _ in range(rounds):
        for method in ok:
            times[method].append(cpu_ms(fns[method], seconds))
    ratios = {m: statistics.median(t / o for t, o in zip(times[m], times["ours"])) if "ours" in ok else None
              for m in ok}
    layout = ConvFactors(a, dz, (kernel, kernel), (stride, stride), (1, 1), padding).layout()
    row = {"layer": name, "batch": batch, "layout": layout, "agree": agree,
           "ms": {m: statistics.median(v) for m, v in times.items()}, "ratio_to_ours": ratios}
    log(f"{name}, B = {batch}, ours = {layout}: " + ", ".join(f"{m} {row['ms'][m]:.1f} ms ({ratios[m]:.2f}x ours)" for m in ok)
        + "".join(f"; {m}: {agree[m]}" for m in fns if m not in ok))
    return row


def report(rows: List[Dict], command: str, machine_line: str) -> str:
    methods = [m for m in METHODS if any(m in r["agree"] for r in rows)]
    lines = ["# Per-example convolution filter gradients: our kernels against the alternatives", "",
             f"Command: `{command}`", "", f"Machine: {machine_line}", "",
             "CPU milliseconds of one thread per call (median round) and, in brackets, the median of the "
             "per-round ratios to `ours` (below 1: faster than ours). Max relative error of each method's "
             "per-example squared norms against one-example-at-a-time autodiff is under the table.", "",
             "| layer | B | ours is | " + " | ".join(methods) + " |", "|---|---:|---|" + "---:|" * len(methods)]
    for r in rows:
        cells = []
        for m in methods:
            if m in r["ms"]:
                cells.append(f"{r['ms'][m]:.1f} ({r['ratio_to_ours'][m]:.2f}x)")
            elif m in r["agree"]:
                cells.append(f"not timed: {r['agree'][m]}" if isinstance(r["agree"][m], str)
                             else f"not timed: error {r['agree'][m]:.1e}")
            else:
                cells.append("not run")
        lines.append(f"| {r['layer']} | {r['batch']} | {r['layout']} | " + " | ".join(cells) + " |")
    lines += ["", "Max relative error against the reference:", ""]
    for r in rows:
        lines.append(f"- {r['layer']}: " + ", ".join(
            f"{m} {v:.1e}" if isinstance(v, float) else f"{m} {v}" for m, v in r["agree"].items()))
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    from tfdprobust import flagcheck as fc

    fc.list_choices(FLAGS, "layers", tuple(LAYERS))
    fc.ranges(FLAGS, {"batch_size": ">=1", "seconds": ">0", "rounds": ">=1"})
    if FLAGS.out:
        fc.writable_dir(os.path.dirname(os.path.abspath(FLAGS.out)), "--out")

    import tensorflow as tf

    from benchmarks.peers.runner import describe_machine, machine

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    machine_line = f"{describe_machine(machine())}; load average {', '.join(f'{v:.2f}' for v in os.getloadavg())}"
    print(machine_line, flush=True)
    rows = [measure(layer, FLAGS.batch_size, FLAGS.seconds, FLAGS.rounds, FLAGS.grouped)
            for net in FLAGS.layers for layer in LAYERS[net]]
    text = report(rows, "python -m benchmarks.conv_per_example " + " ".join(sys.argv[1:]),
                  machine_line + f" at the start; {', '.join(f'{v:.2f}' for v in os.getloadavg())} at the end")
    if FLAGS.out:
        tmp = FLAGS.out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, FLAGS.out)
    print(text)
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
