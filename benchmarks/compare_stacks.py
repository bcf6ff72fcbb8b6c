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
import statistics
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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

ENTRIES = ("ours_nondp", "ours_dp")


def parse_stacks(values):
    """``["label=path", ...]`` -> ``[(label, path), ...]``, checked before anything runs."""
    from tfdprobust.errors import require

    require(values and len(values) >= 1, "--python is required: label=interpreter pairs, e.g. "
            "--python=reference=venv311/bin/python,current=venv312/bin/python")
    stacks = []
    for value in values:
        label, sep, path = value.partition("=")
        require(sep and label and path, f"--python entries look like label=/path/to/python, got {value!r}")
        require(os.path.isfile(path) and os.access(path, os.X_OK),
                f"--python: {path!r} (stack {label!r}) is not an executable interpreter")
        stacks.append((label, path))
    require(len({label for label, _ in stacks}) == len(stacks), "--python labels must be distinct")
    return stacks


def short(path: str) -> str:
    """An interpreter's path without the machine's own folders (``venv312/bin/python``): reports
    are committed, and a path of this machine would mean nothing on another."""
    return os.path.join(*os.path.normpath(path).split(os.sep)[-3:])


def stack_line(python: str) -> str:
    """The interpreter's own description of its stack (tfdprobust.compat.stack_name)."""
    proc = subprocess.run([python, "-c", "import tfdprobust.compat as c; print(c.stack_name())"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if proc.returncode == 0 and lines else f"unknown ({python}: exit {proc.returncode})"


def report(results, stacks, command, machine) -> str:
    """Markdown: per (model, batch, attack), each stack's non-DP and DP examples per
    CPU-second (median round) and the DP/non-DP ratio (of the medians, and round by round)."""
    groups = []
    for r in results:
        if r["group"] not in groups:
            groups.append(r["group"])
    lines = ["# Our DP step vs our non-DP step on each stack", "", f"Command: `{command}`", "",
             f"Machine: {machine}", "", "Stacks:", *[f"- {label}: {line} (`{short(path)}`)" for label, path, line in stacks],
             "", "One process with one thread per measurement; *examples/CPU-s* is the median round's "
             "(the process's CPU time over the timed steps, after 2 warm-up steps); every round ran every "
             "configuration on every stack in the same order.", "",
             "| network | B | attack | " + " | ".join(f"{label}: non-DP | {label}: DP | {label}: DP/non-DP"
                                                     for label, _, _ in stacks) + " |",
             "|---|---:|---|" + "---:|---:|---:|" * len(stacks)]
    rounds_lines = []
    for group in groups:
        model, batch, attack = group.split(":")
        cells = []
        for label, _, _ in stacks:
            per = {}
            for entry in ENTRIES:
                runs = [r for r in results if r["group"] == group and r["stack"] == label and r["framework"] == entry]
                figures = [r["examples_per_cpu_second"] for r in runs if "error" not in r]
                per[entry] = (f"{statistics.median_low(figures):,.0f}" if figures else "failed" if runs else "not run",
                              statistics.median_low(figures) if figures else None)
            ratio = per["ours_dp"][1] / per["ours_nondp"][1] if per["ours_dp"][1] and per["ours_nondp"][1] else None
            cells += [per["ours_nondp"][0], per["ours_dp"][0], f"**{ratio:.2f}x**" if ratio else "n/a"]
            by_round = {}
            for r in results:
                if r["group"] == group and r["stack"] == label and "error" not in r:
                    by_round.setdefault(r["round"], {})[r["framework"]] = r["examples_per_cpu_second"]
            ratios = [f"{got['ours_dp'] / got['ours_nondp']:.2f}" for _, got in sorted(by_round.items())
                      if len(got) == 2]
            rounds_lines.append(f"- {model}, B = {batch}, {attack}, {label}: {', '.join(ratios) or 'none'}")
        lines.append(f"| {model} | {batch} | {'PGD-10' if attack == 'pgd' else 'none'} | " + " | ".join(cells) + " |")
    errors = [f"- {r['stack']} {r['key']}: {r['error']}" for r in results if "error" in r]
    lines += ["", "DP/non-DP round by round:", *rounds_lines]
    if errors:
        lines += ["", "Failed measurements:", *errors]
    return "\n".join(lines) + "\n"


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
