"""Our DP step against our non-DP step on each supported stack, side by side in one run.

    python -m benchmarks.compare_stacks \\
        --python=reference=/path/to/venv311/bin/python,current=/path/to/venv312/bin/python \\
        --models=cnn,lenet --batch_sizes=250 --attacks=none,pgd --rounds=3 --seconds=4

Each stack is a Python interpreter with tfdprobust's dependencies installed (docs/install.md:
the reference stack, TF 2.15 on Python 3.11; the current stack, the newest TensorFlow with
tf-keras on Python 3.12/3.13). Every configuration (``ours_nondp`` and ``ours_dp`` of
:mod:`benchmarks.peers`, one process with one thread each) runs once per round on every
stack, in the same order, so both stacks meet the same drift of a shared machine; the
report gives each configuration's median round and the DP/non-DP ratio of every round.

Writes ``<out>/<name>.md`` and ``<out>/<name>.json`` (after every measurement, atomically),
with the command, the machine (CPU model, AVX2, cores, load) and the commit.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from benchmarks.stacks import ENTRIES, ROOT, parse_stacks, report, short, stack_line  # noqa: E402

flags.DEFINE_list("python", None, "Stacks to compare, as label=interpreter pairs "
                  "(e.g. reference=venv311/bin/python,current=venv312/bin/python).")
flags.DEFINE_list("models", ["cnn", "lenet"], "Networks: cnn, lenet, resnet20.")
flags.DEFINE_list("batch_sizes", ["250"], "Batch sizes.")
flags.DEFINE_list("attacks", ["none", "pgd"], "none (plain training) and/or pgd (PGD-10 adversarial training).")
flags.DEFINE_float("seconds", 4.0, "Timed CPU-seconds per configuration, after 2 warm-up steps.")
flags.DEFINE_integer("rounds", 3, "Runs of the whole grid on every stack; the report gives the median round.")
flags.DEFINE_float("timeout", 1800.0, "Seconds before a configuration's process is stopped and recorded as failed.")
flags.DEFINE_string("out", "experiments/benchmarks", "Folder of <name>.md and <name>.json.")
flags.DEFINE_string("name", "stacks", "File name (without extension) of the report.")
FLAGS = flags.FLAGS

def _command() -> str:
    parts = ["python -m benchmarks.compare_stacks"]
    for name in ("python", "models", "batch_sizes", "attacks", "seconds", "rounds", "name"):
        if FLAGS[name].present:
            value = FLAGS[name].value
            if name == "python":
                value = [f"{label}={short(path)}" for label, _, path in (v.partition("=") for v in value)]
            parts.append(f"--{name}={','.join(map(str, value)) if isinstance(value, list) else value}")
    return " ".join(parts)


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    from tfdprobust.errors import require
    from tfdprobust.machine import describe as describe_machine
    from tfdprobust.export import write_json_atomic
    from benchmarks.peers import runner

    stacks = parse_stacks(FLAGS.python)
    require(set(FLAGS.attacks) <= {"none", "pgd"} and FLAGS.attacks,
            f"--attacks entries must be none or pgd, got {','.join(FLAGS.attacks)}")
    require(all(b.isdigit() for b in FLAGS.batch_sizes), f"--batch_sizes must be integers, got {FLAGS.batch_sizes}")
    require(FLAGS.rounds >= 1, f"--rounds must be >= 1, got {FLAGS.rounds}")
    timing = dict(seconds=FLAGS.seconds, min_steps=2, max_steps=40)
    specs = runner.grid(list(ENTRIES), FLAGS.models, [int(b) for b in FLAGS.batch_sizes],
                        ["clean" if a == "none" else "pgd" for a in FLAGS.attacks], **timing)
    # The other interpreters import this checkout's tfdprobust and benchmarks.
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    os.chdir(ROOT)
    described = [(label, path, stack_line(path)) for label, path in stacks]
    for label, _, line in described:
        print(f"{label}: {line}", flush=True)
    command, machine = _command(), describe_machine()
    out = os.path.abspath(FLAGS.out) if os.path.isabs(FLAGS.out) else os.path.join(ROOT, FLAGS.out)
    os.makedirs(out, exist_ok=True)
    results = []
    total = FLAGS.rounds * len(specs) * len(stacks)
    for round_ in range(FLAGS.rounds):
        for spec in specs:
            for label, path, _ in described:
                print(f"[{len(results) + 1}/{total}] round {round_ + 1}: {label} {spec.key} ...", flush=True)
                r = runner.run_one(spec, FLAGS.timeout, python=path)
                group = ":".join(spec.key.split(":")[1:])
                results.append({**r, "stack": label, "round": round_, "group": group, "framework": spec.framework})
                print(f"    {r['error']}" if "error" in r else
                      f"    {r['examples_per_cpu_second']:,.1f} examples/CPU-s, load {r['load_before']:.1f}", flush=True)
                text = report(results, described, command, machine)
                write_json_atomic(os.path.join(out, f"{FLAGS.name}.json"),
                                  {"command": command, "machine": machine,
                                   "stacks": [(label, short(path), line) for label, path, line in described],
                                   "results": results})
                tmp = os.path.join(out, f".{FLAGS.name}.md.tmp")
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(text)
                os.replace(tmp, os.path.join(out, f"{FLAGS.name}.md"))
    print(report(results, described, command, machine))
    return 0


if __name__ == "__main__":
    cli.run(main)
