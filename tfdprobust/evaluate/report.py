"""The report: markdown table, long-format CSV, PNG plots, and the safe atomic write of the folder."""

import csv
import json
import math
import os
import shutil
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tfdprobust.errors import require

def _fmt(v, digits=4):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _rows(r: Dict) -> List[Tuple[str, object]]:
    """(metric, value) rows of the side-by-side table, in display order."""
    rows: List[Tuple[str, object]] = [("clean accuracy", r["clean_accuracy"])]
    meta = r.get("metadata") or {}
    for key in ("epsilon", "delta", "noise_multiplier", "l2_clip", "sampling", "attack"):
        if key in meta:
            v = meta[key]
            rows.append((f"metadata: {key}", f"{v:g}" if isinstance(v, float) else v))
    for name, s in (r.get("sweeps") or {}).items():
        for e, a in zip(s["eps"], s["accuracy"]):
            rows.append((f"{name} eps={e:g}", a))
    for norm, ens in (r.get("ensemble") or {}).items():
        for e, acc, ci, steps in zip(ens["eps"], ens["robust_accuracy"], ens["ci95"], ens["after_each"]):
            if e == 0:
                continue
            rows.append((f"**robust accuracy {norm} eps={e:g}** ({ens['preset']}; 95% CI)",
                         f"{acc:.4f} [{ci[0]:.3f}, {ci[1]:.3f}]"))
            rows.append((f"  {norm} eps={e:g} after each attack",
                         ", ".join(f"{s['attack']} {s['accuracy']:.3f}" for s in steps[1:])))
    for key, it in (r.get("iterations_to_fool") or {}).items():
        rows.append((f"PGD iterations to fool, median ({key})", it["median_iterations"]))
        rows.append((f"PGD fooled within {it['max_steps']} iterations ({key})", it["fraction_fooled"]))
    g = r.get("geometry") or {}
    for key in ("linearized_l2", "linearized_linf", "deepfool_l2", "deepfool_linf"):
        if key in g:
            rows.append((f"mean {key.replace('_', ' ')} distance", g[key]["mean"]))
    c = r.get("curvature")
    if c:
        rows.append((f"curvature: mean top |eigenvalue| ({c['examples']} examples)", c["mean_abs_eigenvalues"][0]))
    co = r.get("corruptions")
    if co:
        rows.append(("corruptions: mean accuracy", co["mean_accuracy"]))
        for n, a in co["accuracy"].items():
            rows.append((f"corruption {n}", a))
    rows.append(("sanity checks", "PASS" if r["sanity_passed"] else "**FAIL**"))
    return rows


def markdown_report(results: Sequence[Dict], command: str = "") -> str:
    """Side-by-side markdown table of all models plus every sanity check."""
    names = [r["name"] for r in results]
    table: Dict[str, Dict[str, object]] = {}
    order: List[str] = []
    for r in results:
        for metric, v in _rows(r):
            if metric not in table:
                table[metric] = {}
                order.append(metric)
            table[metric][r["name"]] = v
    lines = ["# Robustness report", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [f"Examples: {results[0]['examples']} ({results[0].get('data_source', '')}).", ""]
    lines += ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for metric in order:
        lines.append(f"| {metric} | " + " | ".join(_fmt(table[metric].get(n)) for n in names) + " |")
    lines.append("")
    for r in results:
        if r.get("metadata"):
            lines += [f"## Model metadata: {r['name']}", "", "```json",
                      json.dumps(r["metadata"], indent=1, sort_keys=True, default=str), "```", ""]
    for r in results:
        lines += [f"## Sanity checks: {r['name']}", ""]
        for c in r["sanity"]:
            lines.append(f"- **{c['status'].upper()}** `{c['name']}`: {c['detail']}")
        lines.append("")
    return "\n".join(lines)


def _csv_rows(results: Sequence[Dict]):
    yield ("model", "section", "metric", "parameter", "value")
    for r in results:
        m = r["name"]
        yield (m, "clean", "accuracy", "", r["clean_accuracy"])
        for name, s in (r.get("sweeps") or {}).items():
            for e, a in zip(s["eps"], s["accuracy"]):
                yield (m, "sweep", name, f"eps={e}", a)
        for norm, ens in (r.get("ensemble") or {}).items():
            for e, acc, ci, steps in zip(ens["eps"], ens["robust_accuracy"], ens["ci95"], ens["after_each"]):
                yield (m, f"robust_{norm}", "robust_accuracy", f"eps={e}", acc)
                yield (m, f"robust_{norm}", "ci95_low", f"eps={e}", ci[0])
                yield (m, f"robust_{norm}", "ci95_high", f"eps={e}", ci[1])
                for step in steps:
                    yield (m, f"robust_{norm}", f"after_{step['attack']}", f"eps={e}", step["accuracy"])
        for key, it in (r.get("iterations_to_fool") or {}).items():
            yield (m, "iterations_to_fool", "median_iterations", key, it["median_iterations"])
            yield (m, "iterations_to_fool", "fraction_fooled", key, it["fraction_fooled"])
        for key, g in (r.get("geometry") or {}).items():
            if isinstance(g, dict):
                yield (m, "geometry", key, "mean", g["mean"])
                yield (m, "geometry", key, "median", g["median"])
        c = r.get("curvature")
        if c:
            for i, v in enumerate(c["mean_abs_eigenvalues"]):
                yield (m, "curvature", "mean_abs_eigenvalue", f"rank={i + 1}", v)
        co = r.get("corruptions")
        if co:
            for n, a in co["accuracy"].items():
                yield (m, "corruption", n, "", a)
            yield (m, "corruption", "mean", "", co["mean_accuracy"])
        for ch in r["sanity"]:
            yield (m, "sanity", ch["name"], ch["status"], ch["detail"])
        for k, v in r["timings_seconds"].items():
            yield (m, "timing_seconds", k, "", v)


def make_plots(results: Sequence[Dict], out_dir: str) -> List[str]:
    """Writes the PNG plots; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, name), dpi=110)
        plt.close(fig)
        written.append(name)

    sweep_names = [n for n in results[0].get("sweeps", {})]
    ens_norms = [n for n in results[0].get("ensemble", {})]
    panels = [("sweep", n) for n in sweep_names] + [("ensemble", n) for n in ens_norms]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        for ax, (kind, name) in zip(axes[0], panels):
            for i, r in enumerate(results):
                if kind == "sweep":
                    s = r["sweeps"][name]
                    ax.plot(s["eps"], s["accuracy"], "o-", color=colors[i % len(colors)], label=r["name"])
                else:
                    s = r["ensemble"][name]
                    lo = [c[0] for c in s["ci95"]]
                    hi = [c[1] for c in s["ci95"]]
                    ax.fill_between(s["eps"], lo, hi, color=colors[i % len(colors)], alpha=0.2)
                    ax.plot(s["eps"], s["robust_accuracy"], "o-", color=colors[i % len(colors)],
                            label=f"{r['name']} (95% CI)")
            ax.set_title(f"{name} ({results[0]['sweeps'][name]['norm']})" if kind == "sweep" else
                         f"{results[0]['ensemble'][name]['preset']} ensemble ({name})")
            ax.set_xlabel("eps")
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "accuracy_vs_eps.png")
    if results[0].get("geometry"):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for ax, norm in zip(axes, ("l2", "linf")):
            key = f"linearized_{norm}"
            vals = [np.array(r["geometry"][key]["values"]) for r in results]
            hi = max((np.percentile(v, 99) for v in vals if len(v)), default=1.0)
            bins = np.linspace(0, hi, 40)
            for i, (r, v) in enumerate(zip(results, vals)):
                ax.hist(v, bins=bins, alpha=0.5, color=colors[i % len(colors)],
                        label=f"{r['name']} (mean {np.mean(v):.3f})" if len(v) else r["name"])
            ax.set_title(f"distance to closest linearized boundary ({norm})")
            ax.set_xlabel(f"{norm} distance")
            ax.set_ylabel("examples")
            ax.legend(fontsize=8)
        save(fig, "deepfool_distances.png")
    if results[0].get("curvature"):
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for i, r in enumerate(results):
            ev = np.array(r["curvature"]["mean_abs_eigenvalues"])
            ax.semilogy(np.arange(1, len(ev) + 1), np.maximum(ev, 1e-12), "o-", color=colors[i % len(colors)],
                        label=r["name"])
        ax.set_title("curvature profile (input Hessian of the loss)")
        ax.set_xlabel("eigenvalue rank")
        ax.set_ylabel("mean |eigenvalue|")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        save(fig, "curvature_profile.png")
    if results[0].get("corruptions"):
        names = list(results[0]["corruptions"]["accuracy"])
        fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(names) + 2), 4))
        width = 0.8 / len(results)
        for i, r in enumerate(results):
            acc = [r["corruptions"]["accuracy"][n] for n in names]
            ax.bar(np.arange(len(names)) + i * width, acc, width, color=colors[i % len(colors)],
                   label=f"{r['name']} (mean {r['corruptions']['mean_accuracy']:.3f})")
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1.15)  # headroom keeps the legend off the bars
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_title("accuracy under common corruptions (MNIST-C style)")
        ax.legend(fontsize=8, loc="upper center", ncol=len(results))
        save(fig, "corruptions.png")
    if results[0].get("iterations_to_fool"):
        keys = list(results[0]["iterations_to_fool"])
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        styles = ["-", "--", ":", "-."]
        for i, r in enumerate(results):
            for j, key in enumerate(keys):
                it = r["iterations_to_fool"][key]
                c = np.array(it["counts"])
                steps = np.arange(0, it["max_steps"] + 1)
                frac = [(np.sum((c >= 0) & (c <= s))) / len(c) for s in steps]
                ax.plot(steps, frac, styles[j % len(styles)], color=colors[i % len(colors)],
                        label=f"{r['name']} {key}")
        ax.set_xlabel("PGD iterations")
        ax.set_ylabel("fraction misclassified")
        ax.set_title("PGD iterations needed to fool")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        save(fig, "iterations_to_fool.png")
    return written


MARKER = "results.json"  # a folder holding it (and nothing foreign) was written by us


def check_out_dir(out_dir: str, overwrite: bool) -> None:
    """Refuses any ``--out`` this tool did not create, before anything runs.

    An existing, non-empty folder is only replaced when it is one of our reports (it
    holds ``results.json``, and only files a report writes) and ``--overwrite`` is given.
    """
    from tfdprobust import flagcheck

    parent = os.path.dirname(os.path.abspath(out_dir))
    require(os.path.isdir(parent) or not os.path.exists(parent),
            f"--out {out_dir}: its parent {parent} is not a directory; choose another --out")
    # The report is written to a temporary folder beside --out and renamed: probe there, now,
    # not after the attacks (a read-only mount or /proc fails only when written to).
    existing = flagcheck.nearest_existing(parent)
    require(flagcheck.can_write_in(existing),
            f"--out {out_dir}: cannot write in {existing} (not a writable folder); choose another --out")
    if not os.path.exists(out_dir):
        return
    require(os.path.isdir(out_dir), f"--out {out_dir} is an existing file; choose a new folder name")
    entries = os.listdir(out_dir)
    if not entries:
        return
    ours = MARKER in entries and all(e.endswith((".json", ".csv", ".md", ".png")) for e in entries)
    require(ours, f"--out {out_dir} exists and is not a report folder of tfdprobust.evaluate (no {MARKER}, or "
                  f"other files in it); choose a new folder, nothing was written")
    require(overwrite, f"--out {out_dir} already holds a report; pass --overwrite to replace it, or choose "
                       f"a new folder")


def write_outputs(results: Sequence[Dict], out_dir: str, command: str = "", overwrite: bool = False) -> List[str]:
    """Writes JSON, CSV, markdown and PNGs to ``out_dir`` atomically (temp dir + rename).

    Raises:
        UsageError: ``out_dir`` exists and is not ours to replace (:func:`check_out_dir`).
    """
    check_out_dir(out_dir, overwrite)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        with open(os.path.join(tmp, "results.json"), "w") as f:
            json.dump({"command": command, "models": list(results)}, f, indent=1, default=_jsonable)
        with open(os.path.join(tmp, "results.csv"), "w", newline="") as f:
            csv.writer(f).writerows(_csv_rows(results))
        with open(os.path.join(tmp, "report.md"), "w") as f:
            f.write(markdown_report(results, command))
        files = ["results.json", "results.csv", "report.md"] + make_plots(results, tmp)
        old = None
        if os.path.exists(out_dir):
            check_out_dir(out_dir, overwrite)  # still ours, just before replacing it
            old = tempfile.mkdtemp(prefix="." + os.path.basename(out_dir) + ".old-", dir=parent)
            os.rename(out_dir, os.path.join(old, "x"))
        os.rename(tmp, out_dir)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    return str(v)
