"""How long each refusal of bad input takes: the cases of tests/test_bad_input.py, timed.

    python -m tfdprobust.experiments.time_refusals                      # every case
    python -m tfdprobust.experiments.time_refusals --only=training,tune --out=refusals.md

The bad-input suite asserts what a refusal is (exit 2, one ``error:`` line naming the
flag and a fix, nothing written) but no wall time: under load any bound fails. This
script runs the same cases, each in a fresh temporary folder with the suite's own
contract checks, and prints a markdown table of the seconds each took, with the machine
(CPU model, AVX2, cores, load) and the commit. Cases refused before TensorFlow loads are
marked ``before TF``; their target is well under 2 s on an idle machine.

It needs a checkout (it reads the cases from ``tests/test_bad_input.py``) and pytest.
"""

import importlib.util
import os
import pathlib
import sys
import tempfile

from absl import flags

from tfdprobust import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("only", None, "Suites to run (default: all): training, tune, evaluate, audit, experiments.")
flags.DEFINE_boolean("slow", False, "Also the cases the suite marks slow (they import TensorFlow).")
flags.DEFINE_string("out", None, "Also write the table (markdown) to this file.")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUITE = os.path.join(ROOT, "tests", "test_bad_input.py")


def _suite():
    """The bad-input suite as a module (its cases and ``run_case``)."""
    sys.path.insert(0, os.path.dirname(SUITE))
    spec = importlib.util.spec_from_file_location("test_bad_input", SUITE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def machine() -> str:
    """CPU model, AVX2, cores, load and commit, as the benchmarks record them."""
    from tfdprobust import machine as machine_lib

    return machine_lib.describe()


def cases(suite, only, slow):
    """``(suite name, module, extra argv, Case)`` of every parametrized case."""
    tables = [("training", "tfdprobust.experiments.mnist", ("--export_dir={tmp}/out", "--verbose=0"), suite.TRAINING),
              ("tune", "tfdprobust.tune", ("--tuning_dir={tmp}/tuning", "--max_train=700", "--validation_examples=100",
                                           "--batch_size=100"), suite.TUNE),
              ("evaluate", "tfdprobust.evaluate", (), suite.EVALUATE),
              ("audit", "tfdprobust.audit", (), suite.AUDIT),
              ("experiments", None, (), suite.EXPERIMENTS)]
    for name, module, extra, params in tables:
        if only and name not in only:
            continue
        for param in params:
            if not slow and any(m.name == "slow" for m in param.marks):
                continue
            (c,) = param.values
            if module is None:  # the experiments' module is the first word
                yield name, c.argv[0], extra, suite.dataclasses.replace(c, argv=c.argv[1:])
            else:
                yield name, module, extra, c


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    from tfdprobust import flagcheck

    if not os.path.isfile(SUITE):
        cli.fail(f"{SUITE} not found: run from a checkout of tfdprobust (the cases live in its tests)")
    known = ("training", "tune", "evaluate", "audit", "experiments")
    flagcheck.list_choices(FLAGS, "only", known)
    if FLAGS.out:
        flagcheck.writable_parent(FLAGS.out, "--out")
    suite = _suite()
    rows, failed = [], 0
    before = machine()
    print(f"machine: {before}", flush=True)
    for name, module, extra, c in cases(suite, FLAGS.only, FLAGS.slow):
        with tempfile.TemporaryDirectory(prefix="refusal-") as tmp:
            try:
                line, seconds = suite.run_case(module, c, pathlib.Path(tmp), extra)
                status = "ok"
            except BaseException as err:  # noqa: BLE001 - an assertion or a skip of the suite's contract
                if isinstance(err, KeyboardInterrupt):
                    raise
                line, seconds, status = str(err).splitlines()[0][:120], float("nan"), type(err).__name__
                failed += status != "Skipped"
        rows.append((name, c.id, "before TF" if c.fast else "after TF", seconds, status))
        print(f"{name:<12} {c.id:<48} {seconds:6.2f} s  {status}", flush=True)
    table = ["| suite | case | refused | seconds | contract |", "|---|---|---|---:|---|"]
    table += [f"| {n} | {i} | {k} | {s:.2f} | {st} |" for n, i, k, s, st in rows]
    fast = sorted(s for _, _, k, s, st in rows if k == "before TF" and st == "ok")
    summary = (f"{len(rows)} cases; refused before TensorFlow: {len(fast)}, median {fast[len(fast) // 2]:.2f} s, "
               f"max {fast[-1]:.2f} s" if fast else f"{len(rows)} cases")
    text = "\n".join([f"Machine at the start: {before}", "", f"At the end: {machine()}", "", summary, "", *table,
                      ""])
    print("\n" + text)
    if FLAGS.out:
        with open(FLAGS.out + ".tmp", "w") as f:
            f.write(text)
        os.replace(FLAGS.out + ".tmp", FLAGS.out)
    return 1 if failed else 0


if __name__ == "__main__":
    cli.run(main)
