"""Zhang and Bu, "To be private and robust" (seed 001, Section 4) without adversarial training.

    python -m tfdprobust.experiments.private_robust           # writes experiments/private_robust/

At a fixed privacy budget (``--target_epsilon`` at ``--delta``; sigma is calibrated once
for the fixed batch size, epochs and data size, so every trial has the same epsilon),
it runs one Keras Tuner grid search over clipping norm R x learning rate eta per DP
optimizer (DP-SGD, DP-heavy-ball, DP-Adam, DP-RMSprop) **through the tuner's CLI**
(``python -m tfdprobust.tune``, one subprocess per optimizer, ``--adv_weight=0``), then
draws from the searches' ``search_results.json``:

* ``landscapes.png``: natural and PGD robust validation accuracy over (R, eta), one
  column per optimizer (the paper's Fig. 4/5 landscapes);
* ``pareto.png``: natural vs robust accuracy of every trial, per optimizer, with the
  non-DP references (the paper's Fig. 6);
* ``table.md``: best natural and best robust trial per optimizer (Table 1/2 analogue);
* ``results.json``: every trial, the calibrated sigma, the command, wall times.
"""

import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from absl import flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "mnist", "Private dataset.")
flags.DEFINE_string("data_dir", None, "Folder with raw files (default ../shared/data).")
flags.DEFINE_list("optimizers", ["sgd", "momentum", "adam", "rmsprop"], "DP optimizers, one search each.")
flags.DEFINE_string("clip_grid", "logspace:0.1:10:5", "R grid (tuner syntax).")
flags.DEFINE_string("lr_grid", "logspace:0.01:10:5", "eta grid for sgd/momentum (tuner syntax).")
flags.DEFINE_string("adaptive_lr_grid", "logspace:0.0001:0.1:5", "eta grid for adam/rmsprop.")
flags.DEFINE_float("target_epsilon", 2.0, "Privacy budget of every trial.")
flags.DEFINE_float("delta", 1e-5, "Target delta.")
flags.DEFINE_integer("epochs", 1, "Epochs per trial.")
flags.DEFINE_integer("batch_size", 250, "Expected batch size.")
flags.DEFINE_integer("max_train", 0, "Training images before the validation split (0 = all).")
flags.DEFINE_integer("validation_examples", 500, "Validation images that score the trials.")
flags.DEFINE_float("eps", 0.1, "l_inf radius of the validation PGD.")
flags.DEFINE_integer("val_steps", 20, "PGD iterations of the robust validation accuracy (the paper: PGD-20).")
flags.DEFINE_string("norm", "public_bn", "Normalization of the network.")
flags.DEFINE_boolean("nondp_reference", True, "Non-DP reference runs for the Pareto figure.")
flags.DEFINE_string("out", "experiments/private_robust", "Output folder (must be new unless --overwrite).")
flags.DEFINE_boolean("overwrite", False, "Regenerate into an existing --out folder.")
flags.DEFINE_boolean("report_only", False, "Only redraw from the searches already in --out.")
flags.DEFINE_integer("seed", 0, "Seed of the searches.")


def calibrated_sigma(num_examples: int) -> float:
    from tfdprobust import accounting
    spec = accounting.AccountingSpec(num_examples=num_examples, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
                                     noise_multiplier=1.0, delta=FLAGS.delta, sampling="poisson", accountant="rdp")
    return accounting.calibrate_noise(FLAGS.target_epsilon, spec)


def train_size(data_dir: str) -> int:
    from tfdprobust import data
    exp = data.load_experiment_data(data.DataConfig(dataset=FLAGS.dataset, public_examples=0, data_dir=data_dir,
                                                    max_train=FLAGS.max_train, seed=FLAGS.seed), log=lambda m: None)
    return len(exp.train) - FLAGS.validation_examples


def run_searches(out: str, data_dir: str, sigma: float):
    wall = {}
    for opt in FLAGS.optimizers:
        lr_grid = FLAGS.adaptive_lr_grid if opt in ("adam", "rmsprop", "adagrad") else FLAGS.lr_grid
        cmd = [sys.executable, "-m", "tfdprobust.tune", f"--dataset={FLAGS.dataset}", f"--data_dir={data_dir}",
               f"--optimizer={opt}", f"--clip_grid={FLAGS.clip_grid}", f"--lr_grid={lr_grid}",
               f"--noise={sigma:.6g}", f"--delta={FLAGS.delta}", f"--epochs={FLAGS.epochs}",
               f"--batch_size={FLAGS.batch_size}", f"--max_train={FLAGS.max_train}",
               f"--validation_examples={FLAGS.validation_examples}", f"--eps={FLAGS.eps}", "--adv_weight=0",
               f"--val_steps={FLAGS.val_steps}", "--objective=both", f"--norm={FLAGS.norm}",
               f"--nondp_reference={str(FLAGS.nondp_reference).lower()}", "--export_best=0",
               f"--tuning_dir={out}", f"--project={opt}", "--overwrite", f"--seed={FLAGS.seed}"]
        print(f"search {opt}: {' '.join(cmd[1:])}", flush=True)
        t = time.time()
        proc = subprocess.run(cmd)
        wall[opt] = round(time.time() - t, 1)
        if proc.returncode != 0:
            raise RuntimeError(f"the {opt} search failed (exit {proc.returncode})")
    return wall


def write_report(out: str, results):
    import json

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    searches = {}
    for opt in results["optimizers"]:
        with open(os.path.join(out, opt, "search_results.json")) as f:
            searches[opt] = json.load(f)
    nat, rob = "val_natural_accuracy", "val_robust_accuracy"
    opts = list(searches)
    fig, axes = plt.subplots(2, len(opts), figsize=(3.6 * len(opts) + 1, 6.4), squeeze=False)
    for j, opt in enumerate(opts):
        rows = [r for r in searches[opt]["trials"] if r["dp"]]
        clips = sorted({r["l2_clip"] for r in rows})
        lrs = sorted({r["learning_rate"] for r in rows})
        for i, (metric, name) in enumerate(((nat, "natural"), (rob, f"PGD-{FLAGS.val_steps} robust"))):
            g = np.full((len(clips), len(lrs)), np.nan)
            for r in rows:
                g[clips.index(r["l2_clip"]), lrs.index(r["learning_rate"])] = r[metric]
            ax = axes[i][j]
            im = ax.imshow(g, vmin=0, vmax=1, origin="lower", aspect="auto", cmap="viridis")
            for (a, b), v in np.ndenumerate(g):
                if np.isfinite(v):
                    ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < 0.6 else "k")
            ax.set_xticks(range(len(lrs)), [f"{v:.2g}" for v in lrs], fontsize=7)
            ax.set_yticks(range(len(clips)), [f"{v:.2g}" for v in clips], fontsize=7)
            ax.set_xlabel("learning rate $\\eta$")
            ax.set_ylabel("clipping norm R")
            ax.set_title(f"DP-{opt}: {name}", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), label="validation accuracy")
    fig.suptitle(f"(R, eta) landscapes at epsilon={FLAGS.target_epsilon:g}, delta={FLAGS.delta:g} "
                 f"(sigma={results['sigma']:.3g}), no adversarial training, eps={FLAGS.eps:g}", fontsize=10)
    fig.savefig(os.path.join(out, "landscapes.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for k, opt in enumerate(opts):
        rows = searches[opt]["trials"]
        d = [r for r in rows if r["dp"]]
        ax.scatter([r[nat] for r in d], [r[rob] for r in d], s=16, color=f"C{k}", label=f"DP-{opt}")
        ref = [r for r in rows if not r["dp"]]
        if ref:
            ax.scatter([r[nat] for r in ref], [r[rob] for r in ref], s=30, marker="x", color=f"C{k}",
                       label=f"non-DP {opt} (reference)")
    ax.set_xlabel("natural validation accuracy")
    ax.set_ylabel(f"PGD-{FLAGS.val_steps} robust validation accuracy (eps={FLAGS.eps:g})")
    ax.set_title("Fig. 6 analogue: every trial, natural vs robust", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(os.path.join(out, "pareto.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)

    lines = [f"Command: `{results['command']}`", "",
             f"Every DP trial: epsilon={FLAGS.target_epsilon:g} at delta={FLAGS.delta:g} (sigma={results['sigma']:.4g}).",
             "", "| optimizer | best natural (R, eta) | natural | its robust | best robust (R, eta) | robust | its natural |",
             "|---|---|---|---|---|---|---|"]
    for opt in opts:
        d = [r for r in searches[opt]["trials"] if r["dp"]]
        bn, br = max(d, key=lambda r: r[nat]), max(d, key=lambda r: r[rob])
        lines.append(f"| DP-{opt} | ({bn['l2_clip']:.3g}, {bn['learning_rate']:.3g}) | {bn[nat]:.4f} | {bn[rob]:.4f} | "
                     f"({br['l2_clip']:.3g}, {br['learning_rate']:.3g}) | {br[rob]:.4f} | {br[nat]:.4f} |")
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    results["searches"] = {o: {"trials": s["trials"], "privacy": s["privacy"]} for o, s in searches.items()}
    return results


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    import json

    from tfdprobust.experiments import common

    out = FLAGS.out
    if FLAGS.report_only:
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)
    else:
        try:
            common.fresh_out(out, FLAGS.overwrite)
        except FileExistsError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        data_dir = FLAGS.data_dir or common.SHARED_DATA
        n = train_size(data_dir)
        sigma = calibrated_sigma(n)
        print(f"sigma={sigma:.4g} gives epsilon={FLAGS.target_epsilon:g} at delta={FLAGS.delta:g} for N={n}, "
              f"batch {FLAGS.batch_size}, {FLAGS.epochs} epoch(s)", flush=True)
        start = time.time()
        results = {"command": common.command_line(), "sigma": sigma, "num_train_examples": n,
                   "optimizers": list(FLAGS.optimizers)}
        results["search_wall_seconds"] = run_searches(out, data_dir, sigma)
        results["wall_seconds"] = round(time.time() - start, 1)
    results = write_report(out, results)
    common.write_json(os.path.join(out, "results.json"), results)
    print(open(os.path.join(out, "table.md")).read())
    return 0


if __name__ == "__main__":
    cli.run(main)
