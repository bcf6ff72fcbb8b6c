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
from tfdprobust.experiments.private_robust_report import NAT, ROB, table_picks  # noqa: E402

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
    common.check_out(FLAGS)
    if FLAGS.report_only:
        return
    # Last: the data folder (its default needs `apt-get install dataset-fashion-mnist`).
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


def table_runs(out: str, data_dir: str, picks, log=print):
    """Retrains the picks on the whole training split at each table epsilon; exports them."""
    from tfdprobust import attacks, data, export, run_config, runs
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
        cfg = run_config.RunConfig.make(
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


def table_event(run):
    """The ``DpEvent`` of one DP table run, from the steps it actually ran."""
    from tfdprobust import accounting

    return accounting.dp_event(accounting.AccountingSpec(
        num_examples=run["train_examples"], batch_size=run["batch_size"], epochs=run["epochs"],
        noise_multiplier=run["noise_multiplier"], delta=FLAGS.delta, sampling="poisson", steps=run["steps"]))


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
    from tfdprobust.experiments.private_robust_report import write_figures, write_landscape_table, write_tables
    from tfdprobust.tuning import privacy

    # every search in the folder, also those run by an earlier command (--stages=search)
    searches = load_searches(out, list(dict.fromkeys(list(FLAGS.optimizers) + results["optimizers"])))
    # One guarantee for everything the folder publishes: every search's ledger lines and the
    # DP table runs, which retrain an (R, eta) those searches chose.
    table = [r for r in results.get("table_runs") or [] if r["dp"]]
    results["guarantee"] = privacy.folder_guarantee(out, [table_event(r) for r in table], FLAGS.delta, "rdp",
                                                    f"and {len(table)} DP table trainings")
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
