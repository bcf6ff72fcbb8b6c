"""The epsilon x robustness table: clean and robust accuracy at fixed epsilon, per method.

    python -m tfdprobust.experiments.eps_table --out=experiments/eps_table      # full Fashion-MNIST
    python -m tfdprobust.experiments.eps_table --dataset=mnist --data_dir=../shared/data \\
        --max_train=500 --max_test=200 --epochs=1 --eval_examples=20 --out=/tmp/mini   # a miniature

For every epsilon of ``--epsilons`` (and a non-DP reference, ``--nodp_reference``) and every
method of ``--methods`` it trains ``--seeds`` models with ``python -m
tfdprobust.experiments.mnist`` (noise calibrated to the epsilon by dp_accounting), then
evaluates each exported model with ``python -m tfdprobust.evaluate`` under the
``standard`` attack ensemble at l_inf ``--eps_linf`` and l2 ``--eps_l2``, with the
gradient-masking checks. Methods (a registry, :data:`METHODS`):

* ``dpsgd``: DP-SGD, no adversarial training;
* ``dpsgd_pgd``: DP-SGD + PGD-l_inf adversarial training (clean and adversarial loss
  combined per example before clipping);
* ``pretrain_finetune``: non-private pre-training on public data (``--pretrain_source``,
  never the private set), then DP fine-tuning with ``--freeze``;
* ``scatternet``: the ``scatternet_fmnist_eps3`` recipe (ScatterNet features + a small CNN,
  Tramèr and Boneh, "Differentially Private Learning Needs Better Features (or Much More
  Data)"), at each ``--epsilons`` value: the recipe's batch, learning rate, clipping norm,
  optimizer and epochs; of the table's ``--batch_size``, ``--learning_rate``, ``--l2_clip``
  and ``--epochs``, only those given on the command line override them (the training
  command shows every override, the target epsilon and delta always).

Every cell (method, epsilon, seed) is written atomically to ``<out>/cells/<key>.json``
with its two commands and wall times as soon as it is done; a rerun skips the cells that
are there (resume), so rows can be added later (``--methods``, ``--epsilons``,
``--seeds`` pick what runs now; the table shows every cell found). ``table.md`` (mean ±
sd over seeds, the 95% interval of the robust accuracy over seeds) and
``accuracy_vs_epsilon.png`` are rewritten after each cell, atomically
(:mod:`tfdprobust.experiments.eps_report`).

Privacy: each training run is recorded in the data set's ledger (:mod:`tfdprobust.ledger`)
by the training CLI; the figures are test-set scores of the released models (covered by
their epsilon, the test set is not the private training data). Wall times are NOT
covered by epsilon (they depend on the realised Poisson batch sizes) and are published
as measurements of the machine, outside the guarantee.
"""

import dataclasses
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags

from tfdprobust import cli
from tfdprobust.experiments.eps_report import load_cells, report

FLAGS = flags.FLAGS
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))

def define_flags() -> None:
    """The command line's flags. Defined only when this module runs as a program: absl has one
    global flag namespace, and this module is imported beside the training CLI (by the report,
    :mod:`tfdprobust.experiments.eps_report`, and the tests), whose --dataset, --data_dir and
    --epochs it shares."""
    flags.DEFINE_string("out", "experiments/eps_table", "Output folder (cells/, models/, eval/, logs/, table.md, plot).")
    flags.DEFINE_string("dataset", "fashion_mnist", "Private data set: fashion_mnist (full size) or mnist (offline "
                        "miniature).")
    flags.DEFINE_string("data_dir", None, "Comma-separated folders with the raw files of the private data set and of "
                        f"the public ones (default: {FASHION_DIR} and ../shared/data).")
    flags.DEFINE_list("methods", ["dpsgd", "dpsgd_pgd", "pretrain_finetune"], "Methods to run now (see METHODS).")
    flags.DEFINE_list("epsilons", ["1", "3", "8"], "Target epsilons (delta --delta).")
    flags.DEFINE_boolean("nodp_reference", True, "Also train each method without DP (the non-DP reference).")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (model initialization and public choices; never the DP "
                      "noise, the batch sampling or the private data roles, which come from OS entropy).")
    flags.DEFINE_integer("epochs", 3, "DP training epochs.")
    flags.DEFINE_integer("nodp_epochs", None, "Epochs of the non-DP reference (default --epochs).")
    flags.DEFINE_integer("batch_size", 1000, "Expected batch size.")
    flags.DEFINE_float("learning_rate", 4.0, "DP-SGD learning rate (C = --l2_clip).")
    # The non-DP references have their own optimizer, learning rate and batch: a DP learning rate
    # such as 4 is sized for clipped gradients and diverges without clipping, and the large
    # batches that keep DP noise small only cost a non-private run steps. Plain SGD at 0.5 on
    # batches of 1000 left the PGD ceiling at clean 0.48 after 5 epochs; Adam at 1e-3 on batches
    # of 250 reached 0.75 after 2 (experiments/eps_table/README.md).
    flags.DEFINE_string("nodp_optimizer", "adam", "Optimizer of every non-DP reference, recipes' included "
                        "(a name of tfdprobust.optimizers.OPTIMIZERS).")
    flags.DEFINE_float("nodp_learning_rate", 1e-3, "Learning rate of every non-DP reference, recipes' included.")
    flags.DEFINE_integer("nodp_batch_size", 250, "Batch size of every non-DP reference, recipes' included.")
    flags.DEFINE_float("l2_clip", 1.0, "Clipping norm C.")
    flags.DEFINE_float("delta", 1e-5, "delta of every epsilon.")
    flags.DEFINE_integer("max_train", 0, "Size reduction: about this many private training examples (0 = all).")
    flags.DEFINE_integer("max_test", 0, "Size reduction: test images for the clean accuracy (0 = all).")
    flags.DEFINE_integer("train_attack_steps", 10, "PGD steps of the adversarial training (dpsgd_pgd).")
    flags.DEFINE_float("train_eps", 0.1, "l_inf radius of the PGD adversarial training.")
    flags.DEFINE_string("pretrain_source", "kmnist", "Public pre-training source of pretrain_finetune "
                        "(tfdprobust.pretrain.SOURCES; never the private --dataset).")
    flags.DEFINE_integer("pretrain_epochs", 5, "Epochs of the public pre-training.")
    flags.DEFINE_string("freeze", "none", "Layers pretrain_finetune keeps frozen under DP (see --freeze of "
                        "the training CLI).")
    flags.DEFINE_integer("eval_examples", 200, "Size reduction: test images attacked by the standard ensemble.")
    flags.DEFINE_integer("check_examples", 20, "Images re-attacked by the gradient-masking checks.")
    flags.DEFINE_integer("square_queries", 300, "Queries of the black-box masking check.")
    flags.DEFINE_float("eps_linf", 0.1, "l_inf radius of the robust accuracy.")
    flags.DEFINE_float("eps_l2", 1.5, "l2 radius of the robust accuracy.")
    flags.DEFINE_string("ledger_dir", None, "The privacy ledger store passed to every training run (default: the "
                        "user-level one).")
    flags.DEFINE_boolean("report_only", False, "Only rewrite table.md and the plot from the cells found.")
    flags.DEFINE_integer("verbose", 1, "0: quiet; 1: one line per cell.")


@dataclasses.dataclass(frozen=True)
class Method:
    """One row family: its title and the training-CLI flags it adds."""

    name: str
    title: str
    flags: Tuple[str, ...]
    pretrains: bool = False
    recipe: Optional[str] = None  # a tfdprobust.recipes name: its own batch, learning rate, C and epochs


def _methods() -> Dict[str, Method]:
    return {m.name: m for m in (
        Method("dpsgd", "DP-SGD", ("--attack=none", "--eps=0")),
        Method("dpsgd_pgd", "DP-SGD + PGD", ("--attack=pgd_linf",)),
        Method("pretrain_finetune", "public pre-training + DP fine-tuning", ("--attack=none", "--eps=0"),
               pretrains=True),
        Method("scatternet", "ScatterNet + CNN (recipe scatternet_fmnist_eps3)", ("--attack=none", "--eps=0"),
               recipe="scatternet_fmnist_eps3"),
    )}


METHODS = _methods()
NODP = "nodp"


def data_dir() -> str:
    """The ``--data_dir`` the training and evaluation commands get."""
    if FLAGS.data_dir:
        return FLAGS.data_dir
    return ",".join(d for d in (FASHION_DIR, SHARED_DATA) if os.path.isdir(d))


def combined_data_dir(out: str) -> str:
    """``<out>/data/<name> -> folder`` symlinks, so one ``--data_dir`` serves the private set
    and the public ones (Fashion-MNIST's IDX files are named like MNIST's: a folder holding
    them directly would answer for ``mnist`` too). Stays in ``out`` so the recorded
    commands can be rerun."""
    root = os.path.join(out, "data")
    os.makedirs(root, exist_ok=True)
    for name in ("fashion_mnist", "mnist", "kmnist"):
        link = os.path.join(root, name)
        if os.path.lexists(link):
            continue
        for folder in data_dir().split(","):
            folder = os.path.abspath(folder)
            sub = os.path.join(folder, name)
            if os.path.isdir(sub):
                os.symlink(sub, link)
                break
            if name == "fashion_mnist" and os.path.basename(folder) == "fashion-mnist":
                os.symlink(folder, link)
                break
    return root


def cell_key(method: str, epsilon: Optional[float], seed: int) -> str:
    return f"{method}_{'nodp' if epsilon is None else f'eps{epsilon:g}'}_s{seed}"


def train_command(method: Method, epsilon: Optional[float], seed: int, data: str, models: str, run_name: str):
    """The training CLI command of one cell."""
    def given(name: str) -> bool:  # a recipe keeps its own value unless the flag is on the command line
        return not method.recipe or FLAGS[name].present

    argv = [sys.executable, "-m", "tfdprobust.experiments.mnist",
            *([f"--recipe={method.recipe}"] if method.recipe else []), f"--dataset={FLAGS.dataset}",
            f"--data_dir={data}",
            *([f"--batch_size={FLAGS.batch_size}"] if given("batch_size") and epsilon is not None else []),
            f"--seed={seed}", f"--export_dir={models}", f"--run_name={run_name}", "--checkpoint_every=0",
            "--verbose=0", *method.flags]
    if epsilon is None:
        argv += ["--nodp", f"--optimizer={FLAGS.nodp_optimizer}", f"--learning_rate={FLAGS.nodp_learning_rate:g}",
                 f"--batch_size={FLAGS.nodp_batch_size}"]  # after --recipe, so it overrides the recipe's batch
        if FLAGS.nodp_epochs or given("epochs"):
            argv.append(f"--epochs={FLAGS.nodp_epochs or FLAGS.epochs}")
    else:
        argv += [f"--target_epsilon={epsilon:g}", f"--delta={FLAGS.delta:g}"]
        argv += [f"--{name}={FLAGS[name].value:g}" for name in ("epochs", "learning_rate", "l2_clip") if given(name)]
    if method.name == "dpsgd_pgd":
        # the CLI's own quick check of the robust accuracy is kept small: the table's is the evaluation's
        argv += [f"--eps={FLAGS.train_eps:g}", f"--steps={FLAGS.train_attack_steps}", "--eval_examples=50",
                 "--eval_steps=20"]
    if method.pretrains:
        argv += [f"--public_pretrain={FLAGS.pretrain_source}", f"--pretrain_epochs={FLAGS.pretrain_epochs}",
                 f"--freeze={FLAGS.freeze}"]
    if FLAGS.max_train:
        argv.append(f"--max_train={FLAGS.max_train}")
    if FLAGS.max_test:
        argv.append(f"--max_test={FLAGS.max_test}")
    if FLAGS.ledger_dir:
        argv.append(f"--ledger_dir={FLAGS.ledger_dir}")
    return argv


def eval_command(model: str, data: str, report: str):
    """The evaluation CLI command of one exported model."""
    return [sys.executable, "-m", "tfdprobust.evaluate", f"--model={model}", f"--dataset={FLAGS.dataset}",
            f"--data_dir={data}", f"--out={report}", "--sections=ensemble", "--preset=standard",
            f"--eps_linf=0,{FLAGS.eps_linf:g}", f"--eps_l2=0,{FLAGS.eps_l2:g}",
            f"--num_examples={FLAGS.eval_examples}", f"--check_examples={FLAGS.check_examples}",
            f"--square_queries={FLAGS.square_queries}", "--allow_sanity_failures", "--verbose=0"]


def shown(argv: Sequence[str]) -> str:
    """A command as a user types it (``python``, not this interpreter's path)."""
    return " ".join(["python", *argv[1:]])


def _run(argv: Sequence[str], log_path: str) -> float:
    """Runs ``argv`` with its output in ``log_path``; its wall time. Raises on failure."""
    start = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(list(argv), stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-1500:]
        raise RuntimeError(f"{shown(argv)} failed (exit {proc.returncode}); see {log_path}:\n{tail}")
    return time.time() - start


def _at(block: Dict[str, Any], eps: float) -> Tuple[Optional[float], Optional[List[float]]]:
    for k, e in enumerate(block["eps"]):
        if abs(e - eps) < 1e-9:
            return block["robust_accuracy"][k], block["ci95"][k]
    return None, None


def machine() -> Dict[str, Any]:
    """CPU model, cores, load average and the code's commit: what a wall time was measured on."""
    from tfdprobust import machine as machine_lib

    commit = machine_lib.commit(short=False)
    return {"cpu": machine_lib.cpu()["model"], "cores": os.cpu_count(),
            "load_average": [round(v, 2) for v in os.getloadavg()], "commit": None if commit == "unknown" else commit}


def run_cell(out: str, method: Method, epsilon: Optional[float], seed: int, log=print) -> Dict[str, Any]:
    """Trains and evaluates one cell; writes ``cells/<key>.json`` atomically."""
    from tfdprobust.experiments import common

    key = cell_key(method.name, epsilon, seed)
    data = combined_data_dir(out)
    data = data if os.path.relpath(data).startswith("..") else os.path.relpath(data)  # portable when below cwd
    models, reports, logs = (os.path.join(out, d) for d in ("models", "eval", "logs"))
    for d in (models, reports, logs):
        os.makedirs(d, exist_ok=True)
    attempt = 1  # an interrupted attempt's folders are left alone: the next one takes a new name
    while any(os.path.lexists(os.path.join(models, f"{key}-a{attempt}{ext}")) for ext in ("", ".json")) or \
            os.path.lexists(os.path.join(reports, f"{key}-a{attempt}")):
        attempt += 1
    name = f"{key}-a{attempt}"
    train = train_command(method, epsilon, seed, data, models, name)
    before = machine()
    train_seconds = _run(train, os.path.join(logs, f"{name}.train.log"))
    with open(os.path.join(models, name + ".json")) as f:
        run = json.load(f)
    evaluate = eval_command(os.path.join(models, name), data, os.path.join(reports, name))
    eval_seconds = _run(evaluate, os.path.join(logs, f"{name}.eval.log"))
    with open(os.path.join(reports, name, "results.json")) as f:
        evaluation = json.load(f)["models"][0]
    linf, linf_ci = _at(evaluation["ensemble"]["linf"], FLAGS.eps_linf)
    l2, l2_ci = _at(evaluation["ensemble"]["l2"], FLAGS.eps_l2)
    cell = {
        "key": key, "method": method.name, "target_epsilon": epsilon, "seed": seed, "run_name": name,
        "train_command": shown(train), "eval_command": shown(evaluate),
        "train_wall_seconds": round(train_seconds, 1), "eval_wall_seconds": round(eval_seconds, 1),
        "epsilon": run.get("epsilon"), "delta": run.get("delta"), "noise_multiplier": run.get("noise_multiplier"),
        "steps": run.get("steps"), "guarantee": run.get("guarantee"), "num_train_examples": run["num_train_examples"],
        "num_test_examples": run["num_test_examples"], "clean_accuracy": run["clean_accuracy"],
        "eval_examples": evaluation["examples"], "eval_clean_accuracy": evaluation["clean_accuracy"],
        "robust_linf": linf, "robust_linf_ci95": linf_ci, "robust_l2": l2, "robust_l2_ci95": l2_ci,
        "masking_checks": [{k: c[k] for k in ("name", "status")} for c in evaluation["sanity"]],
        "masking_checks_passed": evaluation["sanity_passed"],
        "public_pretraining": run.get("public_pretraining"), "data": run.get("data"),
        "machine": {**before, "load_average_after": machine()["load_average"]},
    }
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    common.write_json(os.path.join(out, "cells", key + ".json"), cell)
    return cell


def planned_cells() -> List[Tuple[Method, Optional[float], int]]:
    """Cells in the order they run: every method at each epsilon (then the non-DP
    reference), seed by seed, so the first rows fill before the next start."""
    epsilons: List[Optional[float]] = [float(e) for e in FLAGS.epsilons]
    if FLAGS.nodp_reference:
        epsilons.append(None)
    return [(METHODS[m], e, int(s)) for e in epsilons for m in FLAGS.methods for s in FLAGS.seeds]


def check_flags() -> None:
    """Every check that needs neither TensorFlow nor data, before anything is written."""
    from tfdprobust import flagcheck as fc, pretrain
    from tfdprobust.errors import require

    fc.finite_floats(FLAGS)
    fc.writable_dir(FLAGS.out, "--out")
    if FLAGS.report_only:
        require(os.path.isdir(os.path.join(FLAGS.out, "cells")),
                f"--report_only: --out={FLAGS.out} holds no cells/; run without --report_only first")
        return
    fc.choice(FLAGS, "dataset", ("fashion_mnist", "mnist"))
    fc.list_choices(FLAGS, "methods", tuple(METHODS))
    fc.list_numbers(FLAGS, "epsilons", ">0")
    fc.list_numbers(FLAGS, "seeds", ">=0", int)
    fc.ranges(FLAGS, {"epochs": ">=1", "nodp_epochs": ">=1", "batch_size": ">=1", "learning_rate": "(0,1e6]",
                      "nodp_learning_rate": "(0,1e6]", "nodp_batch_size": ">=1",
                      "l2_clip": ">0", "delta": "(0,1)", "max_train": ">=0", "max_test": ">=0",
                      "train_attack_steps": ">=1", "train_eps": "(0,1]", "pretrain_epochs": ">=1",
                      "eval_examples": ">=1", "check_examples": ">=1", "square_queries": ">=1", "eps_linf": "(0,1]",
                      "eps_l2": ">0", "verbose": ">=0"})
    fc.choice(FLAGS, "pretrain_source", tuple(pretrain.SOURCES))
    fc.choice(FLAGS, "nodp_optimizer", fc.registered_names("tfdprobust.optimizers", "OPTIMIZERS"))
    pretrain.parse_freeze(FLAGS.freeze)
    if "pretrain_finetune" in FLAGS.methods:
        others = [n for n, s in pretrain.SOURCES.items() if s.dataset != FLAGS.dataset]
        require(pretrain.SOURCES[FLAGS.pretrain_source].dataset != FLAGS.dataset,
                f"--pretrain_source={FLAGS.pretrain_source} is the private --dataset itself: its images are not "
                f"public; choose another source ({', '.join(others)})")
    for folder in data_dir().split(","):
        fc.existing_dir(folder or None, "--data_dir", "a folder with the raw data files")
    require(bool(data_dir()), f"--data_dir: none of the default folders ({FASHION_DIR}, {SHARED_DATA}) exists; "
            "pass --data_dir with the raw data files")
    # Every cell normalizes with KMNIST statistics; without kmnist/ the training CLI would fall
    # back to scikit-learn's digits (as it does offline), and rows would mix unlike models.
    require(any(os.path.isdir(os.path.join(folder, "kmnist")) for folder in data_dir().split(",")),
            f"--data_dir={data_dir()}: no kmnist/ folder in it, and every cell takes its public normalization "
            "statistics from KMNIST; pass --data_dir with a folder holding kmnist/ (e.g. ../shared/data)")
    fc.writable_dir(FLAGS.ledger_dir, "--ledger_dir")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    check_flags()
    out = FLAGS.out
    if FLAGS.report_only:
        print(report(out, FLAGS.eps_linf, FLAGS.eps_l2))
        return 0
    os.makedirs(out, exist_ok=True)
    done = {c["key"] for c in load_cells(out)}
    plan = planned_cells()
    for k, (method, eps, seed) in enumerate(plan, 1):
        key = cell_key(method.name, eps, seed)
        if key in done:
            if FLAGS.verbose:
                print(f"[{k}/{len(plan)}] {key}: done before, skipped", flush=True)
            continue
        start = time.time()
        cell = run_cell(out, method, eps, seed)
        if FLAGS.verbose:
            print(f"[{k}/{len(plan)}] {key}: clean {cell['clean_accuracy']:.4f}, robust l_inf "
                  f"{cell['robust_linf']}, l2 {cell['robust_l2']}, epsilon {cell['epsilon']}, "
                  f"{time.time() - start:.0f} s", flush=True)
        report(out, FLAGS.eps_linf, FLAGS.eps_l2)
    print(report(out, FLAGS.eps_linf, FLAGS.eps_l2))
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
