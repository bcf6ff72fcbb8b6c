"""DP training throughput and memory against the peers, side by side in one run.

    python -m benchmarks.benchmark_peers                       # the full grid
    python -m benchmarks.benchmark_peers --models=cnn,lenet --batch_sizes=250 \\
        --label="reduced grid" --name=peers

Entries (:mod:`benchmarks.peers`): plain Keras fit; our train step without and
with DP; tensorflow-privacy's ``DPKerasSGDOptimizer`` and ``DPSequential``; PyTorch,
Opacus hooks and Opacus ghost clipping; JAX non-private and ``vmap(grad)`` DP-SGD. Each
without and with PGD-10, at every batch size and on every network, one process per
configuration with one thread (:mod:`benchmarks.peers.runner`). The peers are
the optional ``bench`` extra (``pip install .[bench]``); an entry whose framework is
missing is recorded as failed, with the reason.

Writes ``<out>/<name>.md`` and ``<out>/<name>.json`` (after every configuration, so an
interrupted run keeps what it measured), with the command and the load average.
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)

flags.DEFINE_list("frameworks", None, "Entries to run (default: all of benchmarks.peers.FRAMEWORKS).")
flags.DEFINE_list("models", ["cnn", "lenet", "resnet20"], "Networks: cnn, lenet, resnet20.")
flags.DEFINE_list("batch_sizes", ["64", "250", "1000"], "Batch sizes.")
flags.DEFINE_list("attacks", ["none", "pgd"], "none (plain training) and/or pgd (PGD-10 adversarial training).")
flags.DEFINE_float("seconds", 10.0, "Timed CPU-seconds per configuration, after 2 warm-up steps.")
flags.DEFINE_integer("min_steps", 2, "Fewest timed steps per configuration.")
flags.DEFINE_integer("max_steps", 40, "Most timed steps per configuration.")
flags.DEFINE_integer("rounds", 3, "Runs of the whole grid; the report gives each configuration's median round "
                     "(CPU time drifts 10-30% between runs on a shared virtual machine).")
flags.DEFINE_float("timeout", 1800.0, "Seconds before a configuration's process is stopped and recorded as failed.")
flags.DEFINE_string("out", "experiments/benchmarks", "Folder of <name>.md and <name>.json.")
flags.DEFINE_string("name", "peers", "File name (without extension) of the report.")
flags.DEFINE_string("label", "full grid", "What the run covers, printed in the report's title.")
flags.DEFINE_string("note", "", "A paragraph printed under the report's title (e.g. what a reduced grid left out).")
flags.DEFINE_list("combine", None, "Write <out>/<name>.md and .json from earlier reports <out>/<each>.json "
                  "(with all their commands) instead of running anything.")
flags.DEFINE_string("only", None, "Internal: measure one configuration (framework:model:batch:none|pgd), print JSON.")
FLAGS = flags.FLAGS


def _command() -> str:
    parts = ["python -m benchmarks.benchmark_peers"]
    for name in ("frameworks", "models", "batch_sizes", "attacks", "seconds", "min_steps", "max_steps", "rounds", "name",
                 "label", "note"):
        if FLAGS[name].present:
            value = FLAGS[name].value
            value = ",".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"--{name}={value!r}" if name in ("label", "note") else f"--{name}={value}")
    return " ".join(parts)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    from tfdprobust.errors import require
    from benchmarks import peers

    timing = dict(seconds=FLAGS.seconds, min_steps=FLAGS.min_steps, max_steps=FLAGS.max_steps)
    if FLAGS.only:
        framework, model, batch, attack = (FLAGS.only.split(":") + [""] * 4)[:4]
        require(attack in ("clean", "pgd") and batch.isdigit(),
                f"--only must look like framework:model:batch:clean|pgd, got {FLAGS.only!r}")
        print(json.dumps(peers.measure(peers.Spec(framework, model, int(batch), attack == "pgd", **timing))))
        return 0
    from benchmarks.peers import runner

    if FLAGS.combine:
        results, commands = runner.combine(FLAGS.combine, FLAGS.out)
        runner.write(results, commands, FLAGS.label, FLAGS.out, FLAGS.name, FLAGS.note)
        print(runner.report(results, commands, FLAGS.label, FLAGS.note))
        return 0
    require(set(FLAGS.attacks) <= {"none", "pgd"} and FLAGS.attacks,
            f"--attacks entries must be none or pgd, got {','.join(FLAGS.attacks)}")
    require(all(b.isdigit() for b in FLAGS.batch_sizes), f"--batch_sizes must be integers, got {FLAGS.batch_sizes}")
    frameworks = FLAGS.frameworks or list(peers.FRAMEWORKS.names())
    specs = runner.grid(frameworks, FLAGS.models, [int(b) for b in FLAGS.batch_sizes],
                        ["clean" if a == "none" else "pgd" for a in FLAGS.attacks], **timing)
    command = _command()
    results = runner.run_grid(specs, FLAGS.timeout, rounds=FLAGS.rounds, on_result=lambda results: runner.write(
        results, command, FLAGS.label, FLAGS.out, FLAGS.name, FLAGS.note))
    print(runner.report(results, command, FLAGS.label, FLAGS.note))
    return 0


if __name__ == "__main__":
    cli.run(main)
