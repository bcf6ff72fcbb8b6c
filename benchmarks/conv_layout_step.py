"""The DP clipped sum of a whole network under each convolution layout, side by side in one process.

    python -m benchmarks.conv_layout_step --model=resnet20 --batch_size=64 --rounds=7

:meth:`tfdprobust.per_example.factors.ConvFactors.layout` picks how a convolution's
per-example gradients are written out. This times the network's whole clipped sum
(:func:`tfdprobust.per_example.clipped_sum` through the DP model, no attack) with the rule,
with the per-offset matmuls wherever the rule picks the filter-gradient op (the rule before
it), and with the filter-gradient op wherever a layer has 8 or more input channels, beside the
non-DP gradient of the same rows. Each variant is a compiled function traced under its layout;
all share the per-layer ghost/materialized choices of the machine's probe cache. One thread,
CPU milliseconds per call, median of ``--rounds`` rounds (every round calls every variant once,
in the same order). For whole training steps and memory use :mod:`benchmarks.benchmark_peers`
(its ``ours_dp_offsets`` entry).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import statistics  # noqa: E402
import time  # noqa: E402

from absl import flags  # noqa: E402

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags, defined only when this module runs as a program: absl has
    one global flag namespace, and the tests import this module beside the training CLI,
    whose --batch_size it would clash with."""
    flags.DEFINE_enum("model", "resnet20", ["cnn", "lenet", "resnet20"], "Network (the peer benchmark's).")
    flags.DEFINE_integer("batch_size", 64, "Examples per call.")
    flags.DEFINE_integer("rounds", 7, "Timed rounds after one warm-up call of every variant.")


def variants(rule):
    return {
        "rule": rule,
        "offsets where the rule says filter_op": lambda self: "offsets" if rule(self) == "filter_op" else rule(self),
        "filter_op from 8 channels": lambda self: ("filter_op" if self.a.shape[-1] >= 8 and self.dilation_rate == (1, 1)
                                                   else rule(self)),
    }


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    from tfdprobust import flagcheck as fc

    fc.ranges(FLAGS, {"batch_size": ">=1", "rounds": ">=1"})
    import tensorflow as tf

    from benchmarks.peers import common, tf_peers
    from benchmarks.peers.runner import describe_machine, machine
    from tfdprobust.per_example.factors import ConvFactors

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    load = os.getloadavg()
    x, y = (tf.constant(t) for t in common.batch(FLAGS.batch_size))
    plain, private = (tf_peers.our_model(FLAGS.model, FLAGS.batch_size, False, dp) for dp in (False, True))
    private.net.set_weights(plain.net.get_weights())

    @tf.function
    def nondp_gradient():
        with tf.GradientTape() as tape:
            losses, _ = plain.example_losses(x, x, y)
            objective = tf.reduce_mean(losses)
        return tape.gradient(objective, plain.net.trainable_variables)

    fns = {"non-DP gradient": nondp_gradient}
    rule = ConvFactors.layout
    try:
        for name, layout in variants(rule).items():
            ConvFactors.layout = layout
            fn = tf.function(lambda: private.clipped_sum(x, x, y)[0])
            fn()  # traced now, under this layout
            fns[f"DP clipped sum, {name}"] = fn
    finally:
        ConvFactors.layout = rule
    times = {name: [] for name in fns}
    for _ in range(FLAGS.rounds):
        for name, fn in fns.items():
            start = time.process_time()
            [g.numpy() for g in fn()]
            times[name].append(1000 * (time.process_time() - start))
    base = statistics.median(times["non-DP gradient"])
    print(f"{FLAGS.model}, B = {FLAGS.batch_size}, no attack; {describe_machine(machine())}; load average "
          f"{load[0]:.2f} at the start, {os.getloadavg()[0]:.2f} at the end\n")
    print("| piece | CPU ms (median) | speed / the non-DP gradient's |\n|---|---:|---:|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.1f} | {base / median:.2f}x |")
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
