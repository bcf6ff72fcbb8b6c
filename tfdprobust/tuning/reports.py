"""What a search publishes: strict JSON, HParams logs, the DP table, the separate table of
non-private references, heatmaps, the Pareto plot, exports and the printed summary."""

import csv
import dataclasses
import io
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfdprobust.tuning.config import NATURAL, ROBUST, WEIGHTS_FILE, TuneConfig

NOT_COVERED = "NOT covered by epsilon: non-private references trained on the private data"


# --------------------------------------------------------------------------- strict JSON
def strict(value: Any, notes: Optional[List[str]] = None, where: str = "") -> Any:
    """``value`` with every non-finite float replaced by ``null`` (noted in ``notes``)."""
    if isinstance(value, dict):
        return {k: strict(v, notes, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v, notes, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        if notes is not None:
            notes.append(f"{where} was {float(value)} (written as null)")
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_json_strict(path: str, payload: Dict[str, Any]) -> None:
    """Atomic, strict JSON (no bare Infinity/NaN: null plus a ``json_notes`` entry)."""
    notes: List[str] = []
    clean = strict(payload, notes)
    if notes:
        clean["json_notes"] = notes
    json.dumps(clean, allow_nan=False)  # raises if anything slipped through
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(clean, f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- HParams
def _hparams_domain(cfg: TuneConfig):
    from tensorboard.plugins.hparams import api as hp

    return {
        "l2_clip": hp.HParam("l2_clip", hp.Discrete(list(cfg.clip_grid)), display_name="R (clip)"),
        "learning_rate": hp.HParam("learning_rate", hp.Discrete(list(cfg.lr_grid)), display_name="eta"),
        "optimizer": hp.HParam("optimizer", display_name="optimizer"),
        "noise_multiplier": hp.HParam("noise_multiplier", display_name="sigma"),
    }


def write_hparams_config(cfg: TuneConfig, logdir: str) -> None:
    """The experiment-level HParams config (DP trials only; references are not logged here)."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    label = "noisy" if cfg.validation == "noisy_count" else "public"
    with tf.summary.create_file_writer(logdir).as_default():
        hp.hparams_config(
            hparams=list(_hparams_domain(cfg).values()),
            metrics=[hp.Metric("epsilon", display_name="epsilon of one training (search: see report)"),
                     hp.Metric(NATURAL, display_name=f"natural acc (val, {label})"),
                     hp.Metric(ROBUST, display_name=f"robust acc (val, {label})")])


def write_trial_hparams(logdir: str, name: str, record: Dict[str, Any]) -> None:
    """One HParams session of a DP trial: R, eta, optimizer, sigma -> epsilon, released accuracies."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp

    values = {"l2_clip": record["l2_clip"], "learning_rate": record["learning_rate"],
              "optimizer": record["optimizer"], "noise_multiplier": record["noise_multiplier"]}
    writer = tf.summary.create_file_writer(os.path.join(logdir, name))
    with writer.as_default():
        hp.hparams(values, trial_id=name)
        tf.summary.scalar("epsilon", record["epsilon"], step=0)
        tf.summary.scalar(NATURAL, record[NATURAL], step=0)
        if record.get(ROBUST) is not None:
            tf.summary.scalar(ROBUST, record[ROBUST], step=0)
    writer.close()


# --------------------------------------------------------------------------- tables
COLUMNS = ("trial_id", "optimizer", "l2_clip", "learning_rate", "noise_multiplier", "epsilon",
           NATURAL, ROBUST, "score", "steps")
# No wall time: it reflects the secret realised batch sizes (trial_dir/timing.NOT_COVERED_BY_EPSILON.json).
REF_COLUMNS = ("trial_id", "optimizer", "learning_rate", NATURAL, ROBUST, "steps")


def collect_trials(cfg: TuneConfig) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    """``(dp_rows, reference_rows)`` from the trial folders and ``reference/``."""
    from tfdprobust.tuning.trial import score

    rows, refs = [], []
    if os.path.isdir(cfg.project_dir):
        for name in sorted(os.listdir(cfg.project_dir)):
            path = os.path.join(cfg.project_dir, name, "result.json")
            if name.startswith("trial_") and os.path.exists(path):
                with open(path) as f:
                    rows.append(json.load(f))
    ref_dir = os.path.join(cfg.project_dir, "reference")
    if os.path.isdir(ref_dir):
        for name in sorted(os.listdir(ref_dir)):
            if name.endswith(".json") and "NOT_COVERED_BY_EPSILON" not in name:
                with open(os.path.join(ref_dir, name)) as f:
                    refs.append(json.load(f))
    for row in rows + refs:
        row["score"] = score(row, cfg.objective)
    return rows, refs


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def write_table(rows: List[Dict[str, Any]], csv_path: str, md_path: str, columns=COLUMNS, head=None,
                preamble: str = "") -> None:
    """Rows as CSV and as a markdown table under ``preamble`` (atomic writes)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    _write_text_atomic(csv_path, buf.getvalue())
    head = head or list(columns)
    lines = ([preamble, ""] if preamble else []) + ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    _write_text_atomic(md_path, "\n".join(lines) + "\n")


DP_HEAD = ["trial", "optimizer", "R", "eta", "sigma", "epsilon (one training)", "natural (val)", "robust (val)",
           "score", "steps"]
REF_HEAD = ["reference", "optimizer", "eta", "natural (val, exact)", "robust (val, exact)", "steps"]


# --------------------------------------------------------------------------- plots
def _save_figure(fig, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}.png"
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    os.replace(tmp, path)


def plot_heatmaps(rows: List[Dict[str, Any]], cfg: TuneConfig, path: str, title: str = "") -> str:
    """Released natural and robust validation accuracy over the (R, eta) grid (DP trials only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clips, lrs = list(cfg.clip_grid), list(cfg.lr_grid)
    kind = "noisy count" if cfg.validation == "noisy_count" else "public set"
    panels = [(NATURAL, f"natural accuracy (validation, {kind})"), (ROBUST, f"robust accuracy (validation, {kind})")]
    fig, axes = plt.subplots(1, 2, figsize=(4.2 + 1.1 * len(lrs) * 2, 1.0 + 0.9 * len(clips)), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        grid = np.full((len(clips), len(lrs)), np.nan)
        for r in rows:
            if r.get(key) is not None:
                grid[clips.index(r["l2_clip"]), lrs.index(r["learning_rate"])] = r[key]
        cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for i in range(len(clips)):
            for j in range(len(lrs)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{100 * grid[i, j]:.1f}%", ha="center", va="center", fontsize=9,
                            color="white" if grid[i, j] < 0.6 else "black")
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(clips)), [f"{v:g}" for v in clips])
        ax.set_xlabel("learning rate $\\eta$")
        ax.set_ylabel("clipping norm $R$")
        ax.set_title(label, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def pareto_front(points: Sequence[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point beats in both coordinates (max, max), by x.

    Example:
        >>> pareto_front([(0.9, 0.1), (0.8, 0.5), (0.7, 0.4), (0.5, 0.6)])
        [3, 1, 0]
    """
    front = [i for i, (x, y) in enumerate(points)
             if not any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for x2, y2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def plot_pareto(rows: List[Dict[str, Any]], refs: List[Dict[str, Any]], path: str, title: str = "") -> str:
    """Natural vs robust validation accuracy of the DP trials (Fig. 6); non-private
    references, if any, are drawn apart and labelled as outside the guarantee."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    groups = [(rows, "DP trials (covered by the search's epsilon)", "tab:blue", "x", True),
              (refs, "non-DP reference: NOT covered by epsilon", "tab:red", "o", False)]
    for sub, label, color, marker, dp in groups:
        sub = [r for r in sub if r.get(ROBUST) is not None]
        if not sub:
            continue
        pts = [(r[NATURAL], r[ROBUST]) for r in sub]
        ax.scatter(*zip(*pts), c=color, marker=marker, s=60, label=label, zorder=3)
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], color=color, lw=1.2, ls="--",
                label="Pareto front", zorder=2)
        for r, (x, y) in [(sub[i], pts[i]) for i in front]:
            text = f"R={r['l2_clip']:g}, $\\eta$={r['learning_rate']:g}" if dp else f"$\\eta$={r['learning_rate']:g}"
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=color)
    ax.set_xlabel("natural accuracy (validation)")
    ax.set_ylabel("robust accuracy (validation, PGD)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- export
# Test-set figures of an export (tuning.trial.winner_robustness), kept on a rerun.
WINNER_KEYS = ("clean_accuracy", "robust_accuracy", "robust_ci95", "robust_preset", "robust_examples",
               "robust_after_each", "robust_standard", "sanity_checks", "sanity_passed")


def export_best(cfg: TuneConfig, rows: List[Dict[str, Any]], sd, guarantee: Dict[str, Any],
                log=print) -> List[str]:
    """Exports the best ``cfg.export_best`` DP trials (by released score). An export that
    already exists (a rerun) is kept; only its metadata is refreshed with the current guarantee."""
    from tfdprobust import export, models, sanity, train_step
    from tfdprobust.tuning.trial import WINNER_PRESET, trial_config, winner_robustness

    paths = []
    ranked = sorted(rows, key=lambda r: (-r["score"], r["trial_id"]))[:cfg.export_best]
    for rank, record in enumerate(ranked, start=1):
        trial_id = record["trial_id"]
        run_cfg = trial_config(cfg, record["l2_clip"], record["learning_rate"])
        out = os.path.join(cfg.project_dir, "best", f"rank{rank}-trial{trial_id}")
        sidecar = out + ".json"
        if os.path.exists(os.path.join(out, export.METADATA_FILE)) and os.path.exists(sidecar):
            with open(sidecar) as f:
                old = json.load(f)
            metrics = {k: old[k] for k in WINNER_KEYS if k in old}
            result = metadata(cfg, run_cfg, sd, record, metrics, guarantee, rank)
            write_json_strict(os.path.join(out, export.METADATA_FILE), result)
            write_json_strict(sidecar, dict(result, export_path=out, results_path=sidecar))
            log(f"best #{rank} (trial {trial_id}) already exported: {out} (metadata refreshed)")
            paths.append(out)
            continue
        model_cfg = dataclasses.replace(run_cfg.model, input_shape=tuple(sd.train.x.shape[1:]))
        net = models.build_model(model_cfg, seed=run_cfg.seed)
        net.load_weights(os.path.join(cfg.project_dir, f"trial_{trial_id}", WEIGHTS_FILE))
        metrics = {"clean_accuracy": train_step.accuracy(net, sd.test.x, sd.test.y)}
        if run_cfg.eval_attack is not None:
            n = len(sd.test) if run_cfg.eval_examples == 0 else min(run_cfg.eval_examples, len(sd.test))
            log(f"evaluating best #{rank} (trial {trial_id}) once: {WINNER_PRESET} ensemble "
                f"({run_cfg.eval_attack.steps} APGD steps) and the gradient-masking checks on {n} test images")
            metrics.update(winner_robustness(net, sd.test.x[:n], sd.test.y[:n], run_cfg.eval_attack))
            log(sanity.format_checks([sanity.Check(**c) for c in metrics["sanity_checks"]],
                                     f"best #{rank} (trial {trial_id})"))
        result = metadata(cfg, run_cfg, sd, record, metrics, guarantee, rank)
        path = export.export_model(net, out, strict(result), overwrite=True)
        write_json_strict(os.path.join(path, export.METADATA_FILE), result)
        write_json_strict(sidecar, dict(result, export_path=path, results_path=sidecar))
        paths.append(path)
    return paths


def metadata(cfg: TuneConfig, run_cfg, sd, record, metrics, guarantee, rank) -> Dict[str, Any]:
    """Configuration, the search's epsilon/delta and guarantee, test-set figures, released
    validation figures. No history, no per-epoch values, no training-batch statistic, no
    exact figure on private validation images."""
    from tfdprobust import run_config, runs, sampling

    dp = run_cfg.train.dp
    sampler = sampling.make_sampler(run_cfg.sampling, len(sd.train), run_cfg.batch_size)
    private = guarantee["epsilon"] is not None
    return {
        "dataset": run_cfg.data.dataset, "model": dataclasses.asdict(run_cfg.model),
        "data": sd.describe, "data_notes": list(sd.notes), "data_config": dataclasses.asdict(run_cfg.data),
        "num_train_examples": len(sd.train), "num_test_examples": len(sd.test),
        "epochs": run_cfg.epochs, "steps": record["steps"], "batch_size": run_cfg.batch_size,
        "sampling": run_cfg.sampling, "dp": True, "private": private,
        "insecure_reproducible_noise": run_cfg.insecure_reproducible_noise,
        "dp_path": dp.path, "noise_multiplier": dp.noise_multiplier, "l2_clip": dp.l2_clip,
        "delta": run_cfg.delta, "accountant": run_cfg.accountant, "adjacency": sampler.adjacency,
        "target_epsilon": None,
        # The model came out of the whole search: the search's guarantee is its guarantee.
        "epsilon": guarantee["epsilon"],
        "epsilon_single_training": record["epsilon"] if private else None,
        "guarantee": guarantee["statement"],
        "unprotected": run_config.unprotected_examples(run_cfg) or None,
        "optimizer": run_cfg.train.optimizer, "learning_rate": run_cfg.train.learning_rate,
        "train_attack": dataclasses.asdict(run_cfg.train.attack) if run_cfg.train.robust else None,
        "adv_weight": run_cfg.train.adv_weight if run_cfg.train.robust else 0.0,
        "eval_attack": dataclasses.asdict(run_cfg.eval_attack) if run_cfg.eval_attack else None,
        "seed": run_cfg.seed, "versions": runs.package_versions(), **metrics,
        "search": {"rank": rank, "trial_id": record["trial_id"], "validation": record["validation"],
                   "num_validation_examples": len(sd.validation),
                   "released_" + NATURAL: record[NATURAL], "released_" + ROBUST: record.get(ROBUST),
                   "guarantee": guarantee},
    }


# --------------------------------------------------------------------------- summary
def winner_lines(path: str) -> List[str]:
    """The exported model's test-set robust accuracy (standard preset, 95% CI) and the
    verdict of the gradient-masking checks, from its metadata sidecar."""
    try:
        with open(path + ".json") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return []
    if meta.get("robust_accuracy") is None:
        return []
    attack = meta.get("eval_attack") or {}
    lo, hi = meta["robust_ci95"]
    bad = [c["name"] for c in meta["sanity_checks"] if c["status"] == "fail"]
    steps = ", ".join(f"{s['attack']} {s['accuracy']:.3f}" for s in meta["robust_after_each"])
    return [f"  test robust acc   : {meta['robust_accuracy']:.4f} [95% CI {lo:.3f}, {hi:.3f}] "
            f"({meta['robust_preset']} ensemble: {steps}; {attack.get('name', '?')[4:]} "
            f"eps={attack.get('eps', float('nan')):g}, {meta['robust_examples']} test images)",
            "  masking checks    : " + (f"all {len(meta['sanity_checks'])} pass" if not bad else
                                         f"FAILED: {', '.join(bad)} (the robust accuracy is NOT trustworthy)")]


def summary(out: Dict[str, Any]) -> str:
    """The printed summary: ONE guarantee for the published table, the validation mechanism,
    the best trial, where the files are; references (if any) in their own block."""
    g, best = out["guarantee"], out["best_trial"]
    rob = best.get(ROBUST)
    lines = [
        f"trials in the table : {len(out['trials'])} DP trials ({out['table_md']})",
        f"validation          : {out['validation_mechanism']}",
        f"best DP trial       : {best['trial_id']}  R={best['l2_clip']:g} eta={best['learning_rate']:g}  "
        f"natural {best[NATURAL]:.4f}  robust {'-' if rob is None else f'{rob:.4f}'} (released validation figures)",
        f"GUARANTEE           : {g['statement']}. It covers everything this search publishes: the table, "
        "heatmap, Pareto plot's DP points, HParams logs, search_results.json and exported models.",
        f"ledger              : {out['ledger']} ({g['dp_trainings']} DP trainings, "
        f"{g['validation_releases']} validation releases, {len(g['searches'])} search folder(s))",
        f"one training alone  : epsilon = {out['per_training_epsilon']:.4g} (sigma={out['config']['noise_multiplier']:g},"
        f" {out['steps_per_trial']} steps, {out['config']['sampling']} sampling, N={out['num_train_examples']}); "
        "not the search's guarantee",
        f"private selection   : epsilon = {out['private_selection']['epsilon']:.4g} -- PLANNING FIGURE ONLY "
        f"(Papernot & Steinke 2022, K ~ Poisson({out['private_selection']['mean_trials']:g}), only the winner "
        "released); it does NOT apply to this search",
    ]
    if out["new_ledger_note"]:
        lines.insert(0, out["new_ledger_note"])
    lines += [f"heatmaps            : {out['heatmap']}", f"Pareto plot         : {out['pareto']}",
              f"TensorBoard HParams : tensorboard --logdir {out['tensorboard_logdir']} --host 127.0.0.1"]
    for path in out["exported"]:
        lines.append(f"SavedModel          : {path} (+ .json; epsilon there = the search's)")
        lines.extend(winner_lines(path))
    if out["references"]:
        lines += ["", f"--- {NOT_COVERED} ---",
                  f"{len(out['references'])} non-DP reference(s) in {out['references_md']}: exact validation "
                  "figures of non-private trainings; the guarantee above does NOT cover them."]
    return "\n".join(lines)
