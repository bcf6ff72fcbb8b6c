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
``accuracy_vs_epsilon.png`` are rewritten after each cell, atomically.

Privacy: each training run is recorded in the data set's ledger (:mod:`tfdprobust.ledger`)
by the training CLI; the figures are test-set scores of the released models (covered by
their epsilon, the test set is not the private training data). Wall times are NOT
covered by epsilon (they depend on the realised Poisson batch sizes) and are published
as measurements of the machine, outside the guarantee.
"""

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags

from tfdprobust import cli

FLAGS = flags.FLAGS
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data"))

def define_flags() -> None:
    """The command line's flags. Defined only when this module runs as a program: absl has one
    global flag namespace, and the table's helpers (:func:`summarize`, :func:`t_interval`) are
    imported beside the training CLI, whose --dataset, --data_dir and --epochs it shares."""
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
    flags.DEFINE_float("nodp_learning_rate", 0.1, "Learning rate of every non-DP reference, recipes' included (a "
                       "DP learning rate such as 4 is sized for clipped gradients and diverges without clipping).")
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
            f"--data_dir={data}", *([f"--batch_size={FLAGS.batch_size}"] if given("batch_size") else []),
            f"--seed={seed}", f"--export_dir={models}", f"--run_name={run_name}", "--checkpoint_every=0",
            "--verbose=0", *method.flags]
    if epsilon is None:
        argv += ["--nodp", f"--learning_rate={FLAGS.nodp_learning_rate:g}"]
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
        report = json.load(f)["models"][0]
    linf, linf_ci = _at(report["ensemble"]["linf"], FLAGS.eps_linf)
    l2, l2_ci = _at(report["ensemble"]["l2"], FLAGS.eps_l2)
    cell = {
        "key": key, "method": method.name, "target_epsilon": epsilon, "seed": seed, "run_name": name,
        "train_command": shown(train), "eval_command": shown(evaluate),
        "train_wall_seconds": round(train_seconds, 1), "eval_wall_seconds": round(eval_seconds, 1),
        "epsilon": run.get("epsilon"), "delta": run.get("delta"), "noise_multiplier": run.get("noise_multiplier"),
        "steps": run.get("steps"), "guarantee": run.get("guarantee"), "num_train_examples": run["num_train_examples"],
        "num_test_examples": run["num_test_examples"], "clean_accuracy": run["clean_accuracy"],
        "eval_examples": report["examples"], "eval_clean_accuracy": report["clean_accuracy"],
        "robust_linf": linf, "robust_linf_ci95": linf_ci, "robust_l2": l2, "robust_l2_ci95": l2_ci,
        "masking_checks": [{k: c[k] for k in ("name", "status")} for c in report["sanity"]],
        "masking_checks_passed": report["sanity_passed"],
        "public_pretraining": run.get("public_pretraining"), "data": run.get("data"),
        "machine": {**before, "load_average_after": machine()["load_average"]},
    }
    os.makedirs(os.path.join(out, "cells"), exist_ok=True)
    common.write_json(os.path.join(out, "cells", key + ".json"), cell)
    return cell


def load_cells(out: str) -> List[Dict[str, Any]]:
    folder = os.path.join(out, "cells")
    if not os.path.isdir(folder):
        return []
    cells = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name)) as f:
                cells.append(json.load(f))
    return cells


def t_interval(values: Sequence[float]) -> Optional[Tuple[float, float]]:
    """The 95% Student-t interval of the mean over seeds (``None`` below 2 values)."""
    from scipy import stats

    v = [x for x in values if x is not None]
    if len(v) < 2:
        return None
    mean = sum(v) / len(v)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1))
    half = stats.t.ppf(0.975, len(v) - 1) * sd / math.sqrt(len(v))
    return mean - half, mean + half


def public_source(cell: Dict[str, Any]) -> str:
    """The public data a cell's normalization statistics came from, in short (``kmnist test``):
    the training CLI falls back to another public set when the asked one is missing, so a row
    whose seeds differ in it is marked in the table."""
    public = (cell.get("data") or {}).get("public")
    return public.split(" (")[0].split(",")[0] if public else "none"


def summarize(cells: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (method, target epsilon): mean ± sd over its seeds."""
    from tfdprobust.experiments import common

    groups: Dict[Tuple[str, Optional[float]], List[Dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["method"], c["target_epsilon"]), []).append(c)
    order = list(METHODS)
    rows = []
    for (method, eps), group in sorted(groups.items(), key=lambda kv: (order.index(kv[0][0]) if kv[0][0] in order
                                                                       else 99, kv[0][1] is None, kv[0][1] or 0)):
        row = {"method": method, "target_epsilon": eps, "seeds": sorted(c["seed"] for c in group),
               "cells": [c["key"] for c in group]}
        for field in ("clean_accuracy", "robust_linf", "robust_l2", "epsilon", "train_wall_seconds",
                      "eval_wall_seconds"):
            row[field] = common.mean_std([c[field] for c in group])
        row["robust_linf_t95"] = t_interval([c["robust_linf"] for c in group])
        row["robust_linf_ci95_each"] = [c["robust_linf_ci95"] for c in group]
        row["failed_checks"] = sorted({k["name"] for c in group for k in c["masking_checks"] if k["status"] == "fail"})
        row["sizes"] = sorted({(c["num_train_examples"], c["num_test_examples"], c["eval_examples"]) for c in group})
        row["public_data"] = sorted({public_source(c) for c in group})
        rows.append(row)
    return rows


def _ms(d: Dict[str, float], digits: int = 3) -> str:
    if not d or not d.get("n"):
        return "n/a"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}" if d["n"] > 1 else f"{d['mean']:.{digits}f}"


def write_table(out: str, rows: List[Dict[str, Any]], cells: List[Dict[str, Any]]) -> str:
    """``table.md``: the summary table, the 95% intervals and every cell's commands."""
    from tfdprobust.experiments import common

    lines = [f"# epsilon x robustness ({len(cells)} cells)", "",
             f"Robust accuracy: the `standard` ensemble (APGD-CE, APGD-T, FAB-T, Square) at l_inf {FLAGS.eps_linf:g} "
             f"and l2 {FLAGS.eps_l2:g}; mean ± sd over the seeds (n). Wall times are not covered by epsilon.", "",
             "| method | target eps | eps reached | seeds | clean acc | robust l_inf | robust l2 | masking checks "
             "| train s | eval s | private train / test / attacked | public data (normalization) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eps = "non-DP" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
        checks = "FAIL: " + ", ".join(r["failed_checks"]) if r["failed_checks"] else "pass"
        sizes = "; ".join(f"{a} / {b} / {c}" for a, b, c in r["sizes"])
        lines.append(f"| {METHODS[r['method']].title if r['method'] in METHODS else r['method']} | {eps} | "
                     f"{_ms(r['epsilon'], 2)} | {len(r['seeds'])} | {_ms(r['clean_accuracy'])} | "
                     f"{_ms(r['robust_linf'])} | {_ms(r['robust_l2'])} | {checks} | {_ms(r['train_wall_seconds'], 0)} "
                     f"| {_ms(r['eval_wall_seconds'], 0)} | {sizes} | "
                     f"{('MIXED: ' if len(r['public_data']) > 1 else '') + '; '.join(r['public_data'])} |")
    lines += ["", "## 95% intervals of the robust accuracy (l_inf)", "",
              "Over seeds: Student t on the seeds' means (n - 1 degrees of freedom). Per model: the evaluation's "
              "binomial interval over its attacked images.", ""]
    for r in rows:
        if r["method"] == "dpsgd_pgd" and r["target_epsilon"] in (3.0, None):
            t = r["robust_linf_t95"]
            each = ", ".join(f"[{lo:.3f}, {hi:.3f}]" for lo, hi in (x for x in r["robust_linf_ci95_each"] if x))
            lines.append(f"- DP-SGD + PGD, {'non-DP' if r['target_epsilon'] is None else 'eps 3'}: "
                         f"{_ms(r['robust_linf'])}; over seeds "
                         + (f"[{t[0]:.3f}, {t[1]:.3f}]" if t else "n/a (fewer than 2 seeds)")
                         + f"; per model {each}")
    machines = [c["machine"] for c in cells if c.get("machine")]
    if machines:
        loads = [v for m in machines for v in (m["load_average"][0], m["load_average_after"][0])]
        lines += ["", "## Machine", "",
                  f"CPU {', '.join(sorted({m['cpu'] for m in machines}))}; {', '.join(sorted({str(m['cores']) for m in machines}))} "
                  f"cores; 1-minute load average {min(loads):.1f}-{max(loads):.1f} at the cells' starts and ends "
                  f"(shared machine); code at commit(s) {', '.join(sorted({str(m['commit']) for m in machines}))}."]
    lines += ["", "## Cells", "", "| cell | train command | eval command |", "|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['key']} | `{c['train_command']}` | `{c['eval_command']}` |")
    text = "\n".join(lines) + "\n"
    tmp = os.path.join(out, ".table.md.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(out, "table.md"))
    common.write_json(os.path.join(out, "results.json"), {"rows": rows, "cells": cells})
    return text


def write_plot(out: str, rows: List[Dict[str, Any]]) -> Optional[str]:
    """``accuracy_vs_epsilon.png``: clean and robust (l_inf) accuracy vs epsilon, per method,
    the non-DP references dashed. Written under a temporary name, then renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = {m: f"C{k}" for k, m in enumerate(METHODS)}
    for ax, field, title in ((axes[0], "clean_accuracy", "clean accuracy"),
                             (axes[1], "robust_linf", f"robust accuracy (standard, l_inf {FLAGS.eps_linf:g})")):
        for method in METHODS:
            dp = [r for r in rows if r["method"] == method and r["target_epsilon"] is not None and r[field]["n"]]
            if dp:
                ax.errorbar([r["target_epsilon"] for r in dp], [r[field]["mean"] for r in dp],
                            yerr=[r[field]["std"] for r in dp], marker="o", capsize=3, color=colors[method],
                            label=METHODS[method].title)
            ref = [r for r in rows if r["method"] == method and r["target_epsilon"] is None and r[field]["n"]]
            if ref:
                ax.axhline(ref[0][field]["mean"], ls="--", color=colors[method], alpha=0.7,
                           label=f"{METHODS[method].title}, non-DP")
        ax.set_xscale("log")
        ax.set_xlabel("epsilon (delta 1e-5)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=7)
    path = os.path.join(out, "accuracy_vs_epsilon.png")
    tmp = os.path.join(out, ".accuracy_vs_epsilon.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def report(out: str) -> str:
    cells = load_cells(out)
    rows = summarize(cells)
    text = write_table(out, rows, cells)
    write_plot(out, rows)
    return text


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
                      "nodp_learning_rate": "(0,1e6]",
                      "l2_clip": ">0", "delta": "(0,1)", "max_train": ">=0", "max_test": ">=0",
                      "train_attack_steps": ">=1", "train_eps": "(0,1]", "pretrain_epochs": ">=1",
                      "eval_examples": ">=1", "check_examples": ">=1", "square_queries": ">=1", "eps_linf": "(0,1]",
                      "eps_l2": ">0", "verbose": ">=0"})
    fc.choice(FLAGS, "pretrain_source", tuple(pretrain.SOURCES))
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
    fc.writable_dir(FLAGS.ledger_dir, "--ledger_dir")


def main(argv):
    if len(argv) > 1:
        cli.fail(f"unexpected argument {argv[1]!r}; flags look like --name=value (see --helpshort)")
    check_flags()
    out = FLAGS.out
    if FLAGS.report_only:
        print(report(out))
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
        report(out)
    print(report(out))
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
