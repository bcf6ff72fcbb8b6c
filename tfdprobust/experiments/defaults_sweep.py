"""Measure the training CLI's defaults: a DP grid over (optimizer, batch, learning rate, C).

    python -m tfdprobust.experiments.defaults_sweep --out=experiments/defaults/prune \\
        --attack=none --optimizers=sgd,momentum --batch_sizes=250,1000 \\
        --learning_rates=0.25,1,4 --l2_clips=0.1,1
    python -m tfdprobust.experiments.defaults_sweep --out=experiments/defaults/confirm \\
        --attack=pgd_linf --optimizers=sgd --batch_sizes=1000 --learning_rates=1,4 --l2_clips=1 --seeds=0,1

Each grid point is one epoch of DP training (noise multiplier ``--noise``, Poisson
batches) on the full private set (Fashion-MNIST from ``--data_dir`` by default), with the
public normalization batch drawn from a disjoint public dataset (KMNIST from
``--public_data_dir``). It records clean and PGD test accuracy, epsilon, wall time and a
held-out loss trajectory, writes ``results.json`` after every point (a killed sweep keeps
what finished), then ``table.md``, ``heatmap.png`` (clean accuracy over learning rate x C,
one panel per optimizer and batch size) and ``trajectories.png``.
"""

import itertools
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from absl import flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "fashion_mnist", "Private dataset.")
flags.DEFINE_string("data_dir", "/usr/share/datasets/fashion-mnist", "Folder with the private dataset's raw files.")
flags.DEFINE_string("public_dataset", "kmnist", "Public dataset of the normalization batch (disjoint source).")
flags.DEFINE_string("public_data_dir", None, "Folder with the public dataset's raw files (default ../shared/data).")
flags.DEFINE_integer("public_examples", 128, "Size of the public normalization batch.")
flags.DEFINE_integer("max_train", 0, "Use at most this many training examples (0 = all).")
flags.DEFINE_integer("max_test", 0, "Evaluate on at most this many test examples (0 = all).")
flags.DEFINE_integer("max_robust_test", 1000, "PGD-evaluate on the first this many test images (cost).")
flags.DEFINE_string("model", "cnn", "Network.")
flags.DEFINE_string("norm", "public_bn", "Normalization.")
flags.DEFINE_integer("epochs", 1, "Passes over the private data.")
flags.DEFINE_float("noise", 7.1, "Noise multiplier sigma.")
flags.DEFINE_float("delta", 1e-5, "Target delta.")
flags.DEFINE_list("optimizers", ["sgd", "momentum"], "Optimizers to sweep.")
flags.DEFINE_list("batch_sizes", ["250", "1000"], "Expected batch sizes to sweep.")
flags.DEFINE_list("learning_rates", ["0.25", "1", "4"], "Learning rates to sweep.")
flags.DEFINE_list("l2_clips", ["0.1", "1"], "Clipping norms C to sweep.")
flags.DEFINE_list("adv_weights", ["0.5"], "adv_weight values to sweep (with an attack).")
flags.DEFINE_list("seeds", ["0"], "Seeds (initialization and data roles; DP noise is always fresh).")
flags.DEFINE_string("attack", "pgd_linf", "Training attack: none or pgd_linf.")
flags.DEFINE_float("eps", 0.1, "Attack radius (training and evaluation).")
flags.DEFINE_integer("steps", 10, "Training attack iterations.")
flags.DEFINE_integer("eval_steps", 20, "PGD iterations of the reported robust accuracy.")
flags.DEFINE_integer("trajectory_every", 20, "Record held-out loss every this many steps.")
flags.DEFINE_string("out", "experiments/defaults/sweep", "Output folder (must be new unless --overwrite).")
flags.DEFINE_boolean("overwrite", False, "Regenerate into an existing --out folder.")
flags.DEFINE_boolean("resume", False, "Keep the points already in --out/results.json and run the rest.")
flags.DEFINE_boolean("report_only", False, "Only rebuild table and figures from --out/results.json.")


def grid():
    from tfdprobust.experiments.common import floats, ints
    return list(itertools.product(FLAGS.optimizers, ints(FLAGS.batch_sizes), floats(FLAGS.learning_rates),
                                  floats(FLAGS.l2_clips), floats(FLAGS.adv_weights), ints(FLAGS.seeds)))


def make_config(optimizer, batch_size, lr, clip, adv_weight, seed, data_dir):
    from tfdprobust import attacks, run_config
    from tfdprobust.data import DataConfig
    from tfdprobust.models import ModelConfig
    from tfdprobust.train_step import DPConfig, TrainConfig

    attack = None
    if FLAGS.attack != "none":
        attack = attacks.AttackConfig(name=FLAGS.attack, eps=FLAGS.eps, steps=FLAGS.steps, random_start=True)
    train = TrainConfig(optimizer=optimizer, learning_rate=lr,
                        dp=DPConfig(enabled=True, l2_clip=clip, noise_multiplier=FLAGS.noise),
                        attack=attack, adv_weight=adv_weight if attack else 0.0)
    return run_config.RunConfig.make(
        train=train, batch_size=batch_size,
        data=DataConfig(dataset=FLAGS.dataset, public_dataset=FLAGS.public_dataset,
                        public_examples=FLAGS.public_examples if FLAGS.norm == "public_bn" else 0,
                        data_dir=data_dir, max_train=FLAGS.max_train, max_test=FLAGS.max_test, seed=seed),
        model=ModelConfig(name=FLAGS.model, norm=FLAGS.norm), epochs=FLAGS.epochs, delta=FLAGS.delta,
        eval_attack=None, export_dir=None, seed=seed, verbose=0)


def key(r):
    return (r["optimizer"], r["batch_size"], r["learning_rate"], r["l2_clip"], r["adv_weight"], r["seed"])


def run_grid(out, data_dir, command):
    from tfdprobust import attacks, data, train_step
    from tfdprobust.experiments import common

    path = os.path.join(out, "results.json")
    results = {"command": command, "rows": []}
    if FLAGS.resume and os.path.exists(path):
        import json
        with open(path) as f:
            results = json.load(f)
    done = {key(r) for r in results["rows"]}
    points = grid()
    loaded = {}
    robust_attack = attacks.AttackConfig(name="pgd_linf", eps=FLAGS.eps, steps=FLAGS.eval_steps, random_start=True)
    for i, (opt, bs, lr, clip, w, seed) in enumerate(points):
        w = w if FLAGS.attack != "none" else 0.0
        if (opt, bs, lr, clip, w, seed) in done:
            continue
        cfg = make_config(opt, bs, lr, clip, w, seed, data_dir)
        if seed not in loaded:
            loaded[seed] = data.load_experiment_data(cfg.data, log=lambda m: None)
        exp = loaded[seed]
        t0 = time.time()
        print(f"[{i + 1}/{len(points)}] {opt} B={bs} lr={lr:g} C={clip:g} attack={FLAGS.attack} w={w:g} seed={seed}",
              flush=True)
        row = common.dp_run(cfg, exp, trajectory_every=FLAGS.trajectory_every, log=lambda m: None)
        n_rob = min(FLAGS.max_robust_test, len(exp.test))
        row["robust_accuracy"] = train_step.accuracy(row["_trainer"].net, exp.test.x[:n_rob], exp.test.y[:n_rob],
                                                     robust_attack)
        row["robust_eval"] = f"pgd_linf eps={FLAGS.eps:g} x{FLAGS.eval_steps}, first {n_rob} test images"
        row.pop("_trainer")
        row["wall_seconds"] = round(time.time() - t0, 1)
        traj = row["trajectory"]["loss"]
        print(f"    clean={row['clean_accuracy']:.4f} pgd={row['robust_accuracy']:.4f} eps={row['epsilon']:.3g} "
              f"held-out loss {traj[0]:.3f} -> {traj[-1]:.3f}{' DIVERGED' if row['diverged'] else ''} "
              f"({row['wall_seconds']:.0f} s)", flush=True)
        results["rows"].append(row)
        common.write_json(path, results)
    return results


def _diverged(r):
    """The held-out loss did not fall over the run (non-finite, or not below its start)."""
    import math
    loss = r["trajectory"]["loss"]
    return not (loss and loss[-1] is not None and math.isfinite(loss[-1]) and loss[-1] < loss[0])


def aggregate(rows):
    from tfdprobust.experiments.common import mean_std
    groups = {}
    for r in rows:
        groups.setdefault(key(r)[:5] + (r["attack"],), []).append(r)
    agg = []
    for k, rs in groups.items():
        agg.append({"optimizer": k[0], "batch_size": k[1], "learning_rate": k[2], "l2_clip": k[3],
                    "adv_weight": k[4], "attack": k[5], "steps": rs[0]["steps"], "epsilon": rs[0]["epsilon"],
                    "clean": mean_std([r["clean_accuracy"] for r in rs]),
                    "robust": mean_std([r["robust_accuracy"] for r in rs]),
                    "final_loss": mean_std([r["trajectory"]["loss"][-1] for r in rs]),
                    "diverged": sum(_diverged(r) for r in rs), "seeds": [r["seed"] for r in rs],
                    "wall_seconds": mean_std([r["wall_seconds"] for r in rs])["mean"]})
    agg.sort(key=lambda a: -a["clean"]["mean"])
    return agg


def write_table(results, out):
    agg = aggregate(results["rows"])
    lines = [f"Command: `{results['command']}`", "",
             "| rank | optimizer | batch | lr | C | attack | adv_w | steps | epsilon | clean acc | PGD acc | "
             "held-out loss (end) | loss did not fall | seeds | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, a in enumerate(agg):
        def ms(d):
            return f"{d['mean']:.4f}" + (f" ± {d['std']:.4f}" if d["n"] > 1 else "")
        lines.append(f"| {i + 1} | {a['optimizer']} | {a['batch_size']} | {a['learning_rate']:g} | {a['l2_clip']:g} | "
                     f"{a['attack']} | {a['adv_weight']:g} | {a['steps']} | {a['epsilon']:.3g} | {ms(a['clean'])} | "
                     f"{ms(a['robust'])} | {ms(a['final_loss'])} | {a['diverged']}/{len(a['seeds'])} | "
                     f"{','.join(map(str, a['seeds']))} | {a['wall_seconds']:.0f} |")
    lines.append("")
    lines.append("± is the sample standard deviation over seeds (DP noise and batches are fresh in every run).")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return agg


def write_figures(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    agg = aggregate(results["rows"])
    panels = sorted({(a["optimizer"], a["batch_size"], a["adv_weight"]) for a in agg})
    lrs = sorted({a["learning_rate"] for a in agg})
    clips = sorted({a["l2_clip"] for a in agg})
    attack = agg[0]["attack"] if agg else "none"
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1, 3.4), squeeze=False,
                             gridspec_kw={"wspace": 0.15})
    for ax, (opt, bs, w) in zip(axes[0], panels):
        grid_ = np.full((len(clips), len(lrs)), np.nan)
        for a in agg:
            if (a["optimizer"], a["batch_size"], a["adv_weight"]) == (opt, bs, w):
                grid_[clips.index(a["l2_clip"]), lrs.index(a["learning_rate"])] = a["clean"]["mean"]
        im = ax.imshow(grid_, vmin=0.0, vmax=1.0, cmap="viridis", origin="lower", aspect="auto")
        for (ci, li), v in np.ndenumerate(grid_):
            if np.isfinite(v):
                ax.text(li, ci, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=9)
            else:
                ax.text(li, ci, "not run", ha="center", va="center", color="0.5", fontsize=8)
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(clips)), [f"{v:g}" for v in clips])
        ax.set_xlabel("learning rate $\\eta$")
        if ax is axes[0][0]:
            ax.set_ylabel("clipping norm C")
        ax.set_title(f"{opt}, batch {bs}" + (f", w={w:g}" if attack != "none" else ""), fontsize=10)
    fig.colorbar(im, ax=axes[0].tolist(), label="clean test accuracy")
    fig.suptitle(f"One DP epoch, sigma={FLAGS.noise:g}, attack={attack}: clean accuracy (mean over seeds)",
                 fontsize=10)
    fig.savefig(os.path.join(out, "heatmap.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    best = {(a["optimizer"], a["batch_size"], a["learning_rate"], a["l2_clip"], a["adv_weight"]) for a in agg[:6]}
    for r in results["rows"]:
        k = key(r)[:5]
        t = r["trajectory"]
        lab = f"{k[0]} B={k[1]} lr={k[2]:g} C={k[3]:g} s{r['seed']}"
        if k in best:
            ax.plot(t["steps"], t["loss"], label=lab, lw=1.5)
        else:
            ax.plot(t["steps"], t["loss"], color="0.75", lw=0.7)
    ax.set_yscale("log")
    ax.set_xlabel("DP-SGD step")
    ax.set_ylabel("held-out cross-entropy (1,000 test images)")
    ax.set_title("Held-out loss during the epoch (colour: the 6 best settings; grey: the rest)", fontsize=10)
    ax.legend(fontsize=7)
    fig.savefig(os.path.join(out, "trajectories.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)


def check_flags():
    """Every check that needs neither TensorFlow nor data, before anything is written."""
    from tfdprobust import flagcheck as fc
    from tfdprobust.experiments import common

    common.check_out(FLAGS)
    if FLAGS.report_only:
        return
    fc.ranges(FLAGS, {"public_examples": ">=0", "max_train": ">=0", "max_test": ">=0", "max_robust_test": ">=1",
                      "epochs": ">=1", "noise": ">=0", "delta": "(0,1)", "eps": "[0,1]", "steps": ">=1",
                      "eval_steps": ">=1", "trajectory_every": ">=1"})
    fc.list_choices(FLAGS, "optimizers", fc.registered_names("tfdprobust.optimizers", "OPTIMIZERS"))
    fc.list_numbers(FLAGS, "batch_sizes", ">=1", int)
    fc.list_numbers(FLAGS, "learning_rates", "(0,1e6]")
    fc.list_numbers(FLAGS, "l2_clips", ">0")
    fc.list_numbers(FLAGS, "adv_weights", "[0,1]")
    fc.list_numbers(FLAGS, "seeds", ">=0", int)
    fc.choice(FLAGS, "model", fc.registered_names("tfdprobust.models", "MODELS"))
    fc.choice(FLAGS, "norm", fc.constant("tfdprobust.models", "NORMS"))
    fc.choice(FLAGS, "attack", ("none", "pgd_linf"))
    # Last: the data folder (its default needs `apt-get install dataset-fashion-mnist`), so a
    # bad flag value is named first wherever the data is.
    common.check_data_flags(FLAGS)


def main(argv):
    del argv
    check_flags()
    logging.set_verbosity(logging.ERROR)
    from tfdprobust.experiments import common

    def compute(out):
        data_dir = common.combined_data_dir({
            FLAGS.dataset: FLAGS.data_dir,
            FLAGS.public_dataset: common.public_source_dir(FLAGS.public_dataset, FLAGS.public_data_dir)})
        start = time.time()
        try:
            results = run_grid(out, data_dir, common.command_line())
        finally:
            common.cleanup_dir(data_dir)
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
