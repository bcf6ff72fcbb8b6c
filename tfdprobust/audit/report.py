"""Audit outputs: strict JSON, the ROC figure, a markdown report and the printed table.

Everything is written into a temporary sibling folder that is renamed into place, so an
interrupted audit never leaves a half-written report (and never destroys an old one).
"""

import json
import math
import os
import shutil
import tempfile
from typing import Dict, List, Sequence

AUDIT_FILE = "audit.json"
FILES = (AUDIT_FILE, "roc.png", "report.md")
ATTACK_LABELS = {"loss_threshold": "loss threshold", "trained_attacker": "trained attacker"}

CAVEAT = ("The implied epsilon is a LOWER bound from a weak auditor (black-box, average-case, "
          "natural examples, one model): a small value does NOT certify privacy; only a value "
          "above the claimed epsilon would refute the claim.")


def strict(value):
    """``value`` with non-finite floats replaced by None, so ``json.dump(allow_nan=False)`` works."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return strict(value.item())
    return value


def _fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isinf(x):
            return "inf"
        return f"{x:.{digits}f}"
    return str(x)


def table_rows(results: Sequence[Dict]) -> List[List[str]]:
    """One row per (model, attack), shared by the printed table and report.md."""
    rows = [["model", "claimed eps", "attack", "AUC (95% CI)", "advantage", "TPR@1%FPR",
             "implied eps >=", "max certifiable", "members/non-members"]]
    for r in results:
        for attack, a in r["attacks"].items():
            ci = a["auc_ci95"]
            rows.append([
                r["name"], _fmt(r["claimed_epsilon"], 2) if r["claimed_epsilon"] is not None else "none",
                ATTACK_LABELS.get(attack, attack),
                f"{a['auc']:.3f} ({ci[0]:.3f}-{ci[1]:.3f})", f"{a['advantage']:.3f}",
                f"{a['tpr_at_fpr']['0.01']:.3f}", f"{a['bound']['epsilon_lower_bound']:.3f}",
                f"{r['max_certifiable_epsilon']:.3f}",
                f"{r['num_members']}/{r['num_nonmembers']}"])
    return rows


def text_table(results: Sequence[Dict]) -> str:
    rows = table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def markdown_report(payload: Dict) -> str:
    results = payload["models"]
    rows = table_rows(results)
    lines = ["# Membership-inference privacy audit", "", f"Command: `{payload['command']}`", "",
             "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    lines += ["", f"**{CAVEAT}**", "",
              f"Implied eps: one-sided Clopper-Pearson bounds (TPR from below, FPR from above), jointly at "
              f"{100 * (1 - payload['alpha']):g}% confidence over all attacks of a model; threshold chosen on "
              f"one half of the examples, bound evaluated on the other half. The most any attack could certify "
              f"with these sample sizes is shown per model below.", ""]
    for r in results:
        lines.append(f"## {r['name']}")
        lines.append("")
        lines.append(f"- model: `{r['path']}`")
        lines.append(f"- claimed: {r['guarantee']}")
        lines.append(f"- members: {r['members_source']}")
        lines.append(f"- non-members: {r['nonmembers_source']}")
        lines.append(f"- delta of the bound: {r['delta']:g}; largest certifiable eps with "
                     f"{r['attacks']['loss_threshold']['bound']['n_pos']} + "
                     f"{r['attacks']['loss_threshold']['bound']['n_neg']} evaluation examples: "
                     f"{r['max_certifiable_epsilon']:.3f}")
        lines.append(f"- accuracy on members / non-members: {r['member_accuracy']:.3f} / {r['nonmember_accuracy']:.3f}")
        lines.append(f"- verdict: {r['verdict']}")
        for attack, a in r["attacks"].items():
            b = a["bound"]
            lines.append(f"- {ATTACK_LABELS.get(attack, attack)}: threshold {b['threshold']:.4g} (chosen on the "
                         f"selection half) flags {b['tp']}/{b['n_pos']} members and {b['fp']}/{b['n_neg']} "
                         f"non-members of the evaluation half; TPR >= {b['tpr_lower']:.3f}, "
                         f"FPR <= {b['fpr_upper']:.3f}; implied eps >= {b['epsilon_lower_bound']:.3f}")
        lines.append("")
    lines.append("![ROC curves](roc.png)")
    return "\n".join(lines) + "\n"


def plot_roc(results: Sequence[Dict], path: str) -> None:
    """Linear ROC (left) and log-log ROC for the low-FPR regime (right), with the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lin, log) = plt.subplots(1, 2, figsize=(11, 4.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = {"loss_threshold": "-", "trained_attacker": "--"}
    for i, r in enumerate(results):
        for attack, a in r["attacks"].items():
            fpr, tpr = a["roc"]["fpr"], a["roc"]["tpr"]
            label = f"{r['name']}, {ATTACK_LABELS.get(attack, attack)} (AUC {a['auc']:.3f})"
            kw = dict(color=colors[i % len(colors)], linestyle=styles.get(attack, ":"), linewidth=1.5)
            lin.plot(fpr, tpr, label=label, **kw)
            log.plot(fpr, tpr, **kw)
    floor = min(1.0 / max(r["num_nonmembers"], 1) for r in results) / 2
    for ax in (lin, log):
        ax.plot([floor, 1], [floor, 1], color="gray", linewidth=1, linestyle=":", label="chance")
        ax.set_xlabel("false positive rate (non-members flagged)")
        ax.set_ylabel("true positive rate (members flagged)")
        ax.grid(alpha=0.3)
    lin.set_xlim(0, 1)
    lin.set_ylim(0, 1)
    lin.set_title("membership-inference ROC")
    lin.legend(fontsize=7, loc="lower right")
    log.set_xscale("log")
    log.set_yscale("log")
    log.set_xlim(floor, 1)
    log.set_ylim(floor, 1)
    log.set_title("low-FPR regime (log-log)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def is_ours(out_dir: str) -> bool:
    """An existing folder may be replaced only if it is empty or an earlier audit's output."""
    if not os.path.isdir(out_dir):
        return not os.path.exists(out_dir)
    entries = set(os.listdir(out_dir))
    return not entries or (AUDIT_FILE in entries and entries <= set(FILES))


def write_outputs(payload: Dict, out_dir: str) -> List[str]:
    """Writes audit.json, roc.png and report.md to ``out_dir`` via a temp folder + rename."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        # mkdtemp makes the folder private (0700); give the report ordinary permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        with open(os.path.join(tmp, AUDIT_FILE), "w") as f:
            json.dump(strict(payload), f, indent=1, allow_nan=False)
            f.write("\n")
        plot_roc(payload["models"], os.path.join(tmp, "roc.png"))
        with open(os.path.join(tmp, "report.md"), "w") as f:
            f.write(markdown_report(payload))
        old = None
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "x"))
        os.rename(tmp, out_dir)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return list(FILES)
