"""Tables and figures of :mod:`tfdprobust.experiments.private_robust` (Zhang and Bu, "To be
private and robust", seed 001): the (R, eta) landscapes, Tables 1-2 and the Pareto figure
(Fig. 6), drawn from its ``results.json`` and the search folders. Reads the entry point's
flags; composes nothing but matplotlib and the results.
"""

import os

from absl import flags

FLAGS = flags.FLAGS
NAT, ROB = "val_natural_accuracy", "val_robust_accuracy"


def table_picks(search):
    """The most robust and most accurate DP (R, eta), and the same among non-DP references."""
    dp = [r for r in search["trials"] if r["dp"]]
    ref = search.get("reference_rows", [])
    picks = {"robust": max(dp, key=lambda r: r[ROB]), "accurate": max(dp, key=lambda r: r[NAT])}
    if ref:
        picks["nondp_robust"] = max(ref, key=lambda r: r[ROB])
        picks["nondp_accurate"] = max(ref, key=lambda r: r[NAT])
    return picks

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
