"""Our DP step against our non-DP step on several stacks: the stacks, their description and
the side-by-side report (the command line is :mod:`benchmarks.compare_stacks`)."""

import os
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
