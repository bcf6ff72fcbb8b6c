"""Zhang and Bu, "To be private and robust" (seed 001, Section 4) without adversarial training.

    python -m tfdprobust.experiments.private_robust --out=/tmp/private_robust   # recorded: experiments/private_robust

(full Fashion-MNIST: ``apt-get install dataset-fashion-mnist``). Three stages, each a
composition of library calls:

1. **Landscapes** (``--stages=search``): at a fixed privacy budget (``--target_epsilon``
   at ``--delta``; sigma is calibrated once for the fixed batch size, epochs and data
   size, so every trial has the same epsilon), one Keras Tuner grid search over clipping
   norm R x learning rate eta per DP optimizer (DP-SGD, DP-heavy-ball, DP-Adam,
   DP-RMSprop) **through the tuner's CLI** (``python -m tfdprobust.tune``, one subprocess
   per optimizer, ``--adv_weight=0``). Draws ``landscapes.png`` (natural and PGD-20 robust
   validation accuracy over (R, eta): the paper's Figs. 5, 7, 11-13).
2. **Tables** (``--stages=tables``): the most robust and the most accurate (R, eta) of the
   ``--table_optimizer`` search, retrained on the whole training split at every
   epsilon of ``--table_epsilons`` (sigma recalibrated), and the most robust / most
   accurate non-DP references; all exported and attacked with
   :func:`tfdprobust.evaluate.evaluate_models` (FGSM, BIM, PGD and APGD in l_inf and l2,
   and the ``standard`` AutoAttack-style ensemble): ``table1_pgd.md`` (PGD-20 l_inf
   accuracy over attack sizes, the paper's Table 1) and ``table2_attacks.md`` (every attack
   at one size, Table 2).
3. **Pareto** (Fig. 6): natural vs PGD-20 robust test accuracy every
   ``--trajectory_every`` steps of those runs, DP and non-DP, with the front marked:
   ``pareto.png``.

``results.json`` holds every trial, every run, the calibrated sigmas, the command and
the wall times.
"""

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tfdprobust import cli  # noqa: E402  (one-line errors, exit 2)
from absl import flags, logging

from tfdprobust.errors import require  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "fashion_mnist", "Private dataset.")
flags.DEFINE_string("data_dir", None, "Folder with the private dataset's raw files (default for fashion_mnist: "
                    "/usr/share/datasets/fashion-mnist, from apt-get install dataset-fashion-mnist).")
flags.DEFINE_string("public_dataset", "kmnist", "Public dataset of the normalization batch (a disjoint source).")
flags.DEFINE_string("public_data_dir", None, "Folder with the public dataset's files (default ../shared/data).")
flags.DEFINE_list("stages", ["search", "tables"], "Stages to run: search (landscapes), tables (tables + Pareto).")
flags.DEFINE_list("optimizers", ["sgd", "momentum", "adam", "rmsprop"], "DP optimizers, one search each.")
flags.DEFINE_string("clip_grid", "logspace:0.1:10:5", "R grid (tuner syntax).")
flags.DEFINE_string("lr_grid", "logspace:0.01:10:5", "eta grid for sgd/momentum (tuner syntax).")
flags.DEFINE_string("adaptive_lr_grid", "logspace:0.0001:0.1:5", "eta grid for adam/rmsprop.")
flags.DEFINE_float("target_epsilon", 2.0, "Privacy budget of every search trial.")
flags.DEFINE_list("table_epsilons", ["2", "4", "8"], "Privacy budgets of the table runs.")
flags.DEFINE_string("table_optimizer", "sgd", "Optimizer whose most robust / most accurate (R, eta) the tables "
                    "retrain.")
flags.DEFINE_float("delta", 1e-5, "Target delta.")
flags.DEFINE_integer("epochs", 1, "Epochs per trial and per table run.")
flags.DEFINE_integer("batch_size", 250, "Expected batch size.")
flags.DEFINE_integer("max_train", 0, "Training images before the validation split (0 = all).")
flags.DEFINE_integer("validation_examples", 1000, "Validation images that score the trials (noisy counts).")
flags.DEFINE_float("eps", 0.1, "l_inf radius of the validation PGD and of the Pareto trajectory.")
flags.DEFINE_integer("val_steps", 20, "Attack iterations of the robust validation accuracy (the tuner's quick "
                     "APGD ensemble) and of the tables' and trajectories' PGD (the paper: PGD-20).")
flags.DEFINE_list("table_eps_linf", ["0", "0.02", "0.05", "0.1", "0.2"], "l_inf attack sizes of the tables.")
flags.DEFINE_list("table_eps_l2", ["0", "0.5", "1", "2"], "l2 attack sizes of the tables.")
flags.DEFINE_float("table2_eps_l2", 1.0, "The l2 size of Table 2 (its l_inf size is --eps).")
flags.DEFINE_integer("eval_examples", 500, "Test images attacked in the tables and the trajectories.")
flags.DEFINE_integer("trajectory_every", 20, "Steps between two points of the Pareto trajectories.")
flags.DEFINE_string("norm", "public_bn", "Normalization of the network.")
flags.DEFINE_boolean("nondp_reference", True, "Non-DP reference runs (one per eta) in the --table_optimizer search.")
flags.DEFINE_string("out", "experiments/private_robust", "Output folder (must be new unless --overwrite: "
                    "regenerating the recorded results is explicit).")
flags.DEFINE_boolean("overwrite", False, "Regenerate into an existing --out folder.")
flags.DEFINE_boolean("report_only", False, "Only redraw from --out/results.json and the searches in --out.")
flags.DEFINE_integer("seed", 0, "Seed of the searches (initialization and splits; never noise or sampling).")
flags.DEFINE_integer("verbose", 0, "Progress output of the evaluation.")

ADAPTIVE = ("adam", "rmsprop", "adagrad")
TABLE2_ATTACKS = ("fgsm", "bim", "pgd_linf", "apgd_linf", "pgd_l2", "apgd_l2")
NAT, ROB = "val_natural_accuracy", "val_robust_accuracy"


def check_flags():
    """Every flag problem in the first second, before TensorFlow loads."""
    from tfdprobust.experiments import common

    for s in FLAGS.stages:
        require(s in ("search", "tables"), f"--stages: unknown stage {s!r}; choose search and/or tables")
    require(FLAGS.table_optimizer in FLAGS.optimizers,
            f"--table_optimizer={FLAGS.table_optimizer} must be one of --optimizers ({','.join(FLAGS.optimizers)})")
    for e in common.floats(FLAGS.table_epsilons) + [FLAGS.target_epsilon]:
        require(0 < e < float("inf"), f"--table_epsilons / --target_epsilon must be finite and > 0, got {e}")
    require(FLAGS.trajectory_every >= 1, f"--trajectory_every must be >= 1, got {FLAGS.trajectory_every}")
    if FLAGS.dataset == "fashion_mnist" and FLAGS.data_dir is None:
        require(os.path.isdir(common.FASHION_DIR),
                f"full Fashion-MNIST not found at {common.FASHION_DIR}: run `apt-get install dataset-fashion-mnist` "
                "or pass --data_dir")


def data_dirs():
    """(private+public combined folder, the private folder, the public folder)."""
    from tfdprobust.experiments import common

    private = FLAGS.data_dir or (common.FASHION_DIR if FLAGS.dataset == "fashion_mnist" else common.SHARED_DATA)
    public = common.public_source_dir(FLAGS.public_dataset, FLAGS.public_data_dir)
    return common.combined_data_dir({FLAGS.dataset: private, FLAGS.public_dataset: public}), private, public


def sigma_for(epsilon: float, num_examples: int) -> float:
    from tfdprobust import accounting
    spec = accounting.AccountingSpec(num_examples=num_examples, batch_size=FLAGS.batch_size, epochs=FLAGS.epochs,
                                     noise_multiplier=1.0, delta=FLAGS.delta, sampling="poisson", accountant="rdp")
    return accounting.calibrate_noise(epsilon, spec)


def data_config(data_dir: str):
    from tfdprobust.data import DataConfig
    return DataConfig(dataset=FLAGS.dataset, public_dataset=FLAGS.public_dataset, data_dir=data_dir,
                      max_train=FLAGS.max_train, seed=FLAGS.seed,
                      public_examples=128 if FLAGS.norm == "public_bn" else 0)


def run_searches(out: str, private_dir: str, public_dir, sigma: float):
    # The tuner stores --data_dir with the search and resumes only under the same one, so
    # it gets the two real folders (searched in order), not the per-run temporary folder.
    data_dir = ",".join(d for d in (private_dir, public_dir) if d)
    wall = {}
    for opt in FLAGS.optimizers:
        lr_grid = FLAGS.adaptive_lr_grid if opt in ADAPTIVE else FLAGS.lr_grid
        cmd = [sys.executable, "-m", "tfdprobust.tune", f"--dataset={FLAGS.dataset}", f"--data_dir={data_dir}",
               f"--public_dataset={FLAGS.public_dataset}",
               f"--optimizer={opt}", f"--clip_grid={FLAGS.clip_grid}", f"--lr_grid={lr_grid}",
               f"--noise={sigma:.6g}", f"--delta={FLAGS.delta}", f"--epochs={FLAGS.epochs}",
               f"--batch_size={FLAGS.batch_size}", f"--max_train={FLAGS.max_train}",
               f"--validation_examples={FLAGS.validation_examples}", f"--eps={FLAGS.eps}", "--adv_weight=0",
               f"--val_steps={FLAGS.val_steps}", "--objective=both", f"--norm={FLAGS.norm}",
               # non-DP references only where the tables need them (they cost a trial each)
               f"--nondp_reference={str(FLAGS.nondp_reference and opt == FLAGS.table_optimizer).lower()}",
               "--export_best=0",
               f"--tuning_dir={out}", f"--project={opt}", f"--seed={FLAGS.seed}"]
        if FLAGS.overwrite:  # regenerate: the tuner retrains, and its ledger keeps every earlier training
            cmd.append("--overwrite")
        print(f"search {opt}: {' '.join(cmd[1:])}", flush=True)
        t = time.time()
        proc = subprocess.run(cmd)
        wall[opt] = round(time.time() - t, 1)
        if proc.returncode != 0:
            raise RuntimeError(f"the {opt} search failed (exit {proc.returncode})")
    return wall


def load_searches(out: str, optimizers):
    """Each search's ``search_results.json``, with its non-DP references (``references.csv``,
    exact validation figures, outside the guarantee) as rows with ``dp: False``."""
    import csv
    searches = {}
    for opt in optimizers:
        path = os.path.join(out, opt, "search_results.json")
        if os.path.exists(path):
            with open(path) as f:
                searches[opt] = json.load(f)
            refs = os.path.join(out, opt, "references.csv")
            rows = []
            if os.path.exists(refs):
                with open(refs) as f:
                    for r in csv.DictReader(f):
                        rows.append({"dp": False, "trial_id": r["trial_id"], "optimizer": r["optimizer"],
                                     "learning_rate": float(r["learning_rate"]), "l2_clip": None,
                                     NAT: float(r[NAT]), ROB: float(r[ROB]) if r[ROB] not in ("", "None") else None})
            searches[opt]["reference_rows"] = rows
    return searches


def table_picks(search):
    """The most robust and most accurate DP (R, eta), and the same among non-DP references."""
    dp = [r for r in search["trials"] if r["dp"]]
    ref = search.get("reference_rows", [])
    picks = {"robust": max(dp, key=lambda r: r[ROB]), "accurate": max(dp, key=lambda r: r[NAT])}
    if ref:
        picks["nondp_robust"] = max(ref, key=lambda r: r[ROB])
        picks["nondp_accurate"] = max(ref, key=lambda r: r[NAT])
    return picks


def table_runs(out: str, data_dir: str, picks, log=print):
    """Retrains the picks on the whole training split at each table epsilon; exports them."""
    from tfdprobust import attacks, data, export, training
    from tfdprobust.experiments import common
    from tfdprobust.models import ModelConfig
    from tfdprobust.train_step import DPConfig, TrainConfig

    experiment = data.load_experiment_data(data_config(data_dir), log=log)
    for role, source in experiment.describe().items():
        log(f"data: {role:<6} {source}")
    n = len(experiment.train)
    model_dir = os.path.join(out, "models")
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, ".gitignore"), "w") as f:
        f.write("*\n")
    attack = attacks.AttackConfig("pgd_linf", eps=FLAGS.eps, steps=FLAGS.val_steps)
    plan = []  # (name, dp, sigma, R, eta, kinds)
    for e in common.floats(FLAGS.table_epsilons):
        sigma = sigma_for(e, n)
        same = (picks["robust"]["l2_clip"], picks["robust"]["learning_rate"]) == (
            picks["accurate"]["l2_clip"], picks["accurate"]["learning_rate"])
        for kind in (("robust",) if same else ("robust", "accurate")):
            p = picks[kind]
            plan.append((f"dp_eps{e:g}_{kind}", e, sigma, p["l2_clip"], p["learning_rate"],
                         ["robust", "accurate"] if same else [kind]))
    if "nondp_robust" in picks:
        same = picks["nondp_robust"]["learning_rate"] == picks["nondp_accurate"]["learning_rate"]
        for kind in (("robust",) if same else ("robust", "accurate")):
            p = picks[f"nondp_{kind}"]
            plan.append((f"nondp_{kind}", None, 0.0, None, p["learning_rate"], ["robust", "accurate"] if same else [kind]))
    runs = []
    for name, eps_dp, sigma, clip, lr, kinds in plan:
        dp = eps_dp is not None
        train = TrainConfig(optimizer=FLAGS.table_optimizer, learning_rate=lr, attack=None, adv_weight=0.0,
                            dp=DPConfig(enabled=dp, l2_clip=clip or 1.0, noise_multiplier=sigma if dp else 0.0))
        cfg = training.RunConfig.make(
            train=train, batch_size=FLAGS.batch_size, data=data_config(data_dir),
            model=ModelConfig(norm=FLAGS.norm), epochs=FLAGS.epochs, delta=FLAGS.delta, eval_attack=None,
            export_dir=None, seed=FLAGS.seed, verbose=0)
        log(f"table run {name}: " + (f"epsilon={eps_dp:g} sigma={sigma:.4g} R={clip:.3g}" if dp else "non-DP")
            + f" eta={lr:.3g} ({FLAGS.table_optimizer})")
        r = common.dp_run(cfg, experiment, FLAGS.trajectory_every, FLAGS.eval_examples, log=lambda m: None,
                          robust_attack=attack)
        net = r.pop("_trainer").net
        meta = {k: v for k, v in r.items() if k not in ("trajectory",)}
        meta.update(name=name, kinds=kinds, target_epsilon=eps_dp, trajectory_examples=FLAGS.eval_examples)
        export.export_model(net, os.path.join(model_dir, name), meta, overwrite=True)
        r.update(name=name, kinds=kinds, target_epsilon=eps_dp)
        log(f"    clean test accuracy {r['clean_accuracy']:.4f}, epsilon {r['epsilon']}, {r['train_seconds']:.0f} s")
        runs.append(r)
        del net
    return runs, model_dir


def evaluate_runs(out: str, data_dir: str, runs, model_dir: str):
    """Every attack of Tables 1-2, through tfdprobust.evaluate.evaluate_models only."""
    from tfdprobust import evaluate
    from tfdprobust.experiments import common

    names = [r["name"] for r in runs]
    paths = [os.path.join(model_dir, n) for n in names]
    common_cfg = dict(num_examples=FLAGS.eval_examples, seed=FLAGS.seed, steps=FLAGS.val_steps)
    # Both calls run the gradient-masking checks (tfdprobust.sanity); the sweep call runs them
    # on 50 examples, the ensemble call (which also checks black-box vs white-box) on 20, so
    # the checks do not cost more than the attacks they check.
    sweeps = evaluate.SuiteConfig(sections=("sweeps",), sweep_attacks=TABLE2_ATTACKS,
                                  eps_linf=tuple(common.floats(FLAGS.table_eps_linf)),
                                  eps_l2=tuple(common.floats(FLAGS.table_eps_l2)), check_examples=50, **common_cfg)
    ens = evaluate.SuiteConfig(sections=("ensemble",), preset="standard", eps_linf=(0.0, FLAGS.eps),
                               eps_l2=(0.0, FLAGS.table2_eps_l2), check_examples=20, square_queries=300,
                               **common_cfg)
    return {
        "sweeps": evaluate.evaluate_models(paths, data_dir, os.path.join(out, "eval_sweeps"), sweeps, FLAGS.dataset,
                                           names, FLAGS.verbose, overwrite=True),
        "ensemble": evaluate.evaluate_models(paths, data_dir, os.path.join(out, "eval_ensemble"), ens, FLAGS.dataset,
                                             names, FLAGS.verbose, overwrite=True),
    }


def _at(sweep, eps):
    i = [round(v, 4) for v in sweep["eps"]].index(round(eps, 4))
    return sweep["accuracy"][i]


def write_tables(out: str, results) -> None:
    from tfdprobust import ensemble
    from tfdprobust.experiments import common

    sweeps = {r["name"]: r["sweeps"] for r in results["evaluation"]["sweeps"]}
    ens = {r["name"]: r["ensemble"] for r in results["evaluation"]["ensemble"]}
    sanity = {}  # every gradient-masking check of both evaluations, per model
    for section in ("sweeps", "ensemble"):
        for r in results["evaluation"][section]:
            sanity.setdefault(r["name"], []).extend(r.get("sanity") or [])
    runs = results["table_runs"]

    def label(r):
        head = f"DP eps={r['target_epsilon']:g}" if r["dp"] else "non-DP"
        return f"{head} {'/'.join(r['kinds'])} (R={r['l2_clip']:.3g}, eta={r['learning_rate']:.3g})" if r["dp"] \
            else f"{head} {'/'.join(r['kinds'])} (eta={r['learning_rate']:.3g})"

    linf = common.floats(FLAGS.table_eps_linf)
    lines = [f"Command: `{results['command']}`", "",
             f"PGD-{FLAGS.val_steps} l_inf accuracy on {FLAGS.eval_examples} {FLAGS.dataset} test images "
             f"(the paper's Table 1; sizes scaled from CIFAR-10's 2/255..16/255 to [0, 1] grey images). "
             f"DP-{results['table_optimizer']}, one epoch, batch {FLAGS.batch_size}; R and eta picked on noisy "
             f"validation counts at epsilon={FLAGS.target_epsilon:g} and reused at every epsilon.", "",
             *_guarantee_lines(results),
             "| model | " + " | ".join(f"gamma={e:g}" for e in linf) + " |", "|---" * (len(linf) + 1) + "|"]
    for r in runs:
        s = sweeps[r["name"]]["pgd_linf"]
        lines.append(f"| {label(r)} | " + " | ".join(f"{_at(s, e):.4f}" for e in linf) + " |")
    with open(os.path.join(out, "table1_pgd.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    e2 = FLAGS.table2_eps_l2
    head = ["natural", f"FGSM {FLAGS.eps:g}", f"BIM {FLAGS.eps:g}", f"PGD-l_inf {FLAGS.eps:g}",
            f"APGD-l_inf {FLAGS.eps:g}", f"PGD-l2 {e2:g}", f"APGD-l2 {e2:g}",
            f"standard ensemble l_inf {FLAGS.eps:g}", f"standard ensemble l2 {e2:g}", "masking checks"]
    lines = [f"Command: `{results['command']}`", "",
             f"Every attack on the same {FLAGS.eval_examples} test images (the paper's Table 2; it attacks the "
             f"robust picks). The standard ensemble is {ensemble.get_preset('standard').description} "
             "(tfdprobust.ensemble), per-example minimum over its attacks. \"masking checks\" are "
             "tfdprobust.sanity's gradient-masking checks of both evaluations: where one fails, the white-box "
             "columns overstate the robustness and the ensemble column is the figure to trust.", "",
             *_guarantee_lines(results),
             "| model | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for r in runs:
        s, en = sweeps[r["name"]], ens[r["name"]]
        vals = [r_ for r_ in (
            _at(s["fgsm"], 0.0), _at(s["fgsm"], FLAGS.eps), _at(s["bim"], FLAGS.eps), _at(s["pgd_linf"], FLAGS.eps),
            _at(s["apgd_linf"], FLAGS.eps), _at(s["pgd_l2"], e2), _at(s["apgd_l2"], e2),
            _ensemble_at(en, "linf", FLAGS.eps), _ensemble_at(en, "l2", e2))]
        lines.append(f"| {label(r)} | " + " | ".join("n/a" if v is None else f"{v:.4f}" for v in vals)
                     + f" | {_checks(sanity[r['name']])} |")
    with open(os.path.join(out, "table2_attacks.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _checks(checks) -> str:
    """``pass`` or the failed gradient-masking checks: a failed one means the white-box
    figures of that row overstate its robustness (trust the ensemble, which includes Square)."""
    failed = sorted({c["name"] for c in checks if c["status"] == "fail"})
    return "FAIL: " + ", ".join(failed) if failed else ("pass" if checks else "n/a")


def _ensemble_at(en, norm, eps):
    block = (en or {}).get(norm)
    if not block:
        return None
    for e, acc in zip(block["eps"], block["robust_accuracy"]):
        if abs(e - eps) < 1e-9:
            return acc
    return None


def write_figures(out: str, results, searches) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if searches:
        opts = list(searches)
        fig, axes = plt.subplots(2, len(opts), figsize=(3.8 * len(opts) + 2, 7.6), squeeze=False,
                                 gridspec_kw={"hspace": 0.45, "wspace": 0.25})
        for j, opt in enumerate(opts):
            rows = [r for r in searches[opt]["trials"] if r["dp"]]
            clips = sorted({r["l2_clip"] for r in rows})
            lrs = sorted({r["learning_rate"] for r in rows})
            rob = f"robust\n(APGD-CE + APGD-T, {FLAGS.val_steps} steps)"  # the tuner's quick ensemble
            for i, (metric, name) in enumerate(((NAT, "natural"), (ROB, rob))):
                g = np.full((len(clips), len(lrs)), np.nan)
                for r in rows:
                    g[clips.index(r["l2_clip"]), lrs.index(r["learning_rate"])] = r[metric]
                ax = axes[i][j]
                im = ax.imshow(g, vmin=0, vmax=1, origin="lower", aspect="auto", cmap="viridis")
                for (a, b), v in np.ndenumerate(g):
                    if np.isfinite(v):
                        ax.text(b, a, f"{v:.2f}", ha="center", va="center", fontsize=7,
                                color="w" if v < 0.6 else "k")
                ax.set_xticks(range(len(lrs)), [f"{v:.2g}" for v in lrs], fontsize=7)
                ax.set_yticks(range(len(clips)), [f"{v:.2g}" for v in clips], fontsize=7)
                ax.set_xlabel("learning rate $\\eta$")
                if j == 0:  # one label per row: a second one would run into the left panel's ticks
                    ax.set_ylabel("clipping norm R")
                ax.set_title(f"DP-{opt}: {name}", fontsize=9)
        fig.colorbar(im, ax=axes.ravel().tolist(), label="validation accuracy (noisy counts)")
        fig.suptitle(f"(R, eta) landscapes, {FLAGS.dataset}, epsilon={FLAGS.target_epsilon:g}, delta={FLAGS.delta:g} "
                     f"(sigma={results['sigma']:.3g}), no adversarial training, PGD eps={FLAGS.eps:g}", fontsize=10)
        fig.savefig(os.path.join(out, "landscapes.png"), dpi=110, bbox_inches="tight")
        plt.close(fig)

    runs = results.get("table_runs") or []
    if runs:
        fig, ax = plt.subplots(figsize=(6.4, 4.8))
        points, owners = [], []
        for k, r in enumerate(runs):
            t = r["trajectory"]
            nat, rob = t["accuracy"], t["robust_accuracy"]
            style = dict(color=f"C{k}", marker="o" if r["dp"] else "x", ms=3.5, lw=0.8, alpha=0.9)
            lab = (f"DP eps={r['target_epsilon']:g} {'/'.join(r['kinds'])}" if r["dp"]
                   else f"non-DP {'/'.join(r['kinds'])}")
            ax.plot(nat, rob, label=lab, **style)
            points += list(zip(nat, rob))
            owners += [r["dp"]] * len(nat)
        from tfdprobust.experiments.common import pareto_front

        front = pareto_front(points)
        fx = sorted((points[i] for i in front))
        ax.plot([p[0] for p in fx], [p[1] for p in fx], "k--", lw=1, label="Pareto front (all points)")
        n_dp = sum(owners[i] for i in front)
        ax.set_xlabel(f"natural test accuracy ({FLAGS.eval_examples} images)")
        ax.set_ylabel(f"PGD-{FLAGS.val_steps} robust test accuracy (l_inf eps={FLAGS.eps:g})")
        ax.set_title(f"Fig. 6 analogue: every {FLAGS.trajectory_every} steps of training; "
                     f"{n_dp} of {len(front)} front points are DP", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.savefig(os.path.join(out, "pareto.png"), dpi=110, bbox_inches="tight")
        plt.close(fig)
        results["pareto_front"] = {"points": len(points), "front": len(front), "front_dp": int(n_dp)}


def _guarantee_lines(results):
    g = results.get("guarantee")
    return [f"Guarantee: {g['statement']}.", ""] if g else []


def write_landscape_table(out: str, results, searches) -> None:
    lines = [f"Command: `{results['command']}`", "",
             f"Every DP trial: epsilon={FLAGS.target_epsilon:g} at delta={FLAGS.delta:g} "
             f"(sigma={results['sigma']:.4g}, N={results['num_train_examples']}); scores are noisy validation counts "
             f"on {FLAGS.validation_examples} held-out training images; robust = the tuner's quick ensemble "
             f"(APGD-CE + APGD-T, {FLAGS.val_steps} steps) at l_inf eps={FLAGS.eps:g}.", "",
             *_guarantee_lines(results),
             "| optimizer | best natural (R, eta) | natural | its robust | best robust (R, eta) | robust | its natural |",
             "|---|---|---|---|---|---|---|"]
    for opt, s in searches.items():
        p = table_picks(s)
        bn, br = p["accurate"], p["robust"]
        lines.append(f"| DP-{opt} | ({bn['l2_clip']:.3g}, {bn['learning_rate']:.3g}) | {bn[NAT]:.4f} | {bn[ROB]:.4f} | "
                     f"({br['l2_clip']:.3g}, {br['learning_rate']:.3g}) | {br[ROB]:.4f} | {br[NAT]:.4f} |")
        if "nondp_robust" in p:
            a, b = p["nondp_accurate"], p["nondp_robust"]
            lines.append(f"| non-DP {opt} (reference) | eta={a['learning_rate']:.3g} | {a[NAT]:.4f} | {a[ROB]:.4f} | "
                         f"eta={b['learning_rate']:.3g} | {b[ROB]:.4f} | {b[NAT]:.4f} |")
    with open(os.path.join(out, "landscape_table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def experiment_guarantee(out: str, runs) -> dict:
    """Epsilon of everything this folder publishes about the private data: every ledger
    line of its searches (DP trainings and noisy validation counts, on every data set the
    folder's ledgers name) composed with every DP table run, which retrains an (R, eta)
    those searches chose. Each table run's own epsilon is the guarantee of its model alone."""
    import glob

    import dp_accounting

    from tfdprobust import accounting
    from tfdprobust.tuning import privacy

    entries = []
    for path in sorted(glob.glob(os.path.join(out, privacy.LEDGER_DIR, "*.jsonl"))):
        if ".retired-" not in path:
            with open(path) as f:
                entries += [json.loads(line) for line in f if line.strip()]
    events = [privacy.entry_event(e) for e in entries if e["kind"] in (privacy.DP_TRAINING, privacy.VALIDATION)]
    table = [r for r in runs or [] if r["dp"]]
    for r in table:
        spec = accounting.AccountingSpec(num_examples=r["train_examples"], batch_size=r["batch_size"],
                                         epochs=r["epochs"], noise_multiplier=r["noise_multiplier"],
                                         delta=FLAGS.delta, sampling="poisson", steps=r["steps"])
        events.append(accounting.dp_event(spec))
    if not events:
        return {}
    relation = privacy.relation_of(entries)
    eps = accounting.epsilon_of_event(dp_accounting.ComposedDpEvent(events), FLAGS.delta, "rdp", relation)
    trainings = sum(e["kind"] == privacy.DP_TRAINING for e in entries)
    releases = sum(e["releases"] for e in entries if e["kind"] == privacy.VALIDATION)
    return {"epsilon": eps, "delta": FLAGS.delta, "search_trainings": trainings, "validation_releases": releases,
            "table_trainings": len(table),
            "statement": f"({eps:.4g}, {FLAGS.delta:g})-DP ({sampling_name(relation)} adjacency, RDP) for everything "
                         f"this folder publishes: {trainings} search trainings, {releases} noisy validation counts "
                         f"and {len(table)} DP table trainings composed; non-DP references are outside it"}


def sampling_name(relation) -> str:
    from tfdprobust import sampling
    return sampling.ADJACENCY_NAMES[relation]


def compute(out: str):
    """Runs the chosen stages; returns the results dict (written by the caller)."""
    from tfdprobust import data
    from tfdprobust.experiments import common

    data_dir, private_dir, public_dir = data_dirs()
    exp = data.load_experiment_data(data_config(data_dir), log=lambda m: None)
    n_search = len(exp.train) - FLAGS.validation_examples
    sigma = sigma_for(FLAGS.target_epsilon, n_search)
    print(f"sigma={sigma:.4g} gives epsilon={FLAGS.target_epsilon:g} at delta={FLAGS.delta:g} for N={n_search}, "
          f"batch {FLAGS.batch_size}, {FLAGS.epochs} epoch(s)", flush=True)
    start = time.time()
    results = {"command": common.command_line(), "sigma": sigma, "num_train_examples": n_search,
               "data": exp.describe(), "private_data_dir": private_dir,
               "optimizers": list(FLAGS.optimizers), "table_optimizer": FLAGS.table_optimizer}
    if "search" in FLAGS.stages:
        results["search_wall_seconds"] = run_searches(out, private_dir, public_dir, sigma)
    else:  # keep the record of the searches run earlier into this folder
        previous = os.path.join(out, "results.json")
        if os.path.exists(previous):
            with open(previous) as f:
                earlier = json.load(f)
            results["search_command"] = earlier.get("command")
            results["search_wall_seconds"] = earlier.get("search_wall_seconds")
    searches = load_searches(out, FLAGS.optimizers)
    if "tables" in FLAGS.stages:
        require(FLAGS.table_optimizer in searches,
                f"no {FLAGS.table_optimizer} search in {out}: run --stages=search first")
        t = time.time()
        picks = table_picks(searches[FLAGS.table_optimizer])
        runs, model_dir = table_runs(out, data_dir, picks)
        results["table_runs"] = runs
        results["table_train_wall_seconds"] = round(time.time() - t, 1)
        t = time.time()
        ev = evaluate_runs(out, data_dir, runs, model_dir)
        results["evaluation"] = {k: [{kk: vv for kk, vv in r.items() if kk != "metadata"} for r in v]
                                 for k, v in ev.items()}
        results["eval_wall_seconds"] = round(time.time() - t, 1)
    results["wall_seconds"] = round(time.time() - start, 1)
    common.cleanup_dir(data_dir)
    return results


def report(out: str, results) -> None:
    # every search in the folder, also those run by an earlier command (--stages=search)
    searches = load_searches(out, list(dict.fromkeys(list(FLAGS.optimizers) + results["optimizers"])))
    results["guarantee"] = experiment_guarantee(out, results.get("table_runs"))
    if searches:
        write_landscape_table(out, results, searches)
        results["searches"] = {o: {k: s[k] for k in ("trials", "reference_rows", "guarantee", "per_training_epsilon",
                                                     "validation_mechanism", "num_train_examples", "steps_per_trial")}
                               for o, s in searches.items()}
    write_figures(out, results, searches)
    if results.get("evaluation"):
        write_tables(out, results)
    for name in ("landscape_table.md", "table1_pgd.md", "table2_attacks.md"):
        p = os.path.join(out, name)
        if os.path.exists(p):
            print(f"\n{name}:\n" + open(p).read())


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)
    from tfdprobust.experiments import common

    check_flags()
    return common.run_entry_point(FLAGS.out, FLAGS.overwrite, FLAGS.report_only, compute, report)


if __name__ == "__main__":
    cli.run(main)
