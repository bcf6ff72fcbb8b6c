"""The epsilon x robustness table's report: rows from the cells, the table, the plot.

:mod:`tfdprobust.experiments.eps_table` runs the cells (one training and one evaluation per
method, epsilon and seed) and calls :func:`report` after each; ``--report_only`` calls it
alone. Everything here reads the cells' JSON files only: no TensorFlow, no data.
"""

import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple


def _methods():
    # The runner's registry (titles and row order); imported late, the runner imports this module.
    from tfdprobust.experiments.eps_table import METHODS

    return METHODS


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
    order = list(_methods())
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


def write_table(out: str, rows: List[Dict[str, Any]], cells: List[Dict[str, Any]], eps_linf: float,
                eps_l2: float) -> str:
    """``table.md``: the summary table, the 95% intervals and every cell's commands."""
    from tfdprobust.experiments import common

    lines = [f"# epsilon x robustness ({len(cells)} cells)", "",
             f"Robust accuracy: the `standard` ensemble (APGD-CE, APGD-T, FAB-T, Square) at l_inf {eps_linf:g} "
             f"and l2 {eps_l2:g}; mean ± sd over the seeds (n). Wall times are not covered by epsilon.", "",
             "| method | target eps | eps reached | seeds | clean acc | robust l_inf | robust l2 | masking checks "
             "| train s | eval s | private train / test / attacked | public data (normalization) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        eps = "non-DP" if r["target_epsilon"] is None else f"{r['target_epsilon']:g}"
        checks = "FAIL: " + ", ".join(r["failed_checks"]) if r["failed_checks"] else "pass"
        sizes = "; ".join(f"{a} / {b} / {c}" for a, b, c in r["sizes"])
        lines.append(f"| {_methods()[r['method']].title if r['method'] in _methods() else r['method']} | {eps} | "
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


def write_plot(out: str, rows: List[Dict[str, Any]], eps_linf: float) -> Optional[str]:
    """``accuracy_vs_epsilon.png``: clean and robust (l_inf) accuracy vs epsilon, per method,
    the non-DP references dashed. Written under a temporary name, then renamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    colors = {m: f"C{k}" for k, m in enumerate(_methods())}
    for ax, field, title in ((axes[0], "clean_accuracy", "clean accuracy"),
                             (axes[1], "robust_linf", f"robust accuracy (standard, l_inf {eps_linf:g})")):
        for method in _methods():
            dp = [r for r in rows if r["method"] == method and r["target_epsilon"] is not None and r[field]["n"]]
            if dp:
                ax.errorbar([r["target_epsilon"] for r in dp], [r[field]["mean"] for r in dp],
                            yerr=[r[field]["std"] for r in dp], marker="o", capsize=3, color=colors[method],
                            label=_methods()[method].title)
            ref = [r for r in rows if r["method"] == method and r["target_epsilon"] is None and r[field]["n"]]
            if ref:
                ax.axhline(ref[0][field]["mean"], ls="--", color=colors[method], alpha=0.7,
                           label=f"{_methods()[method].title}, non-DP")
        ax.set_xscale("log")
        ticks = sorted({r["target_epsilon"] for r in rows if r["target_epsilon"] is not None})
        if ticks:  # the table's epsilons as plain numbers, not 3 x 10^0
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
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


def report(out: str, eps_linf: float, eps_l2: float) -> str:
    """Rewrites ``table.md``, ``results.json`` and the plot of ``out`` from its cells; the table's text."""
    cells = load_cells(out)
    rows = summarize(cells)
    text = write_table(out, rows, cells, eps_linf, eps_l2)
    write_plot(out, rows, eps_linf)
    return text
