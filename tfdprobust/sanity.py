"""Sanity checks against gradient masking, printed with every robustness report.

A robustness number is only as good as the attack behind it. These checks, after
Carlini et al. 2019 ("On evaluating adversarial robustness") and Athalye et al. 2018,
catch the usual ways an evaluation overstates robustness:

======================  ======================================================
``logits``              the model outputs logits, not probabilities (softmax outputs
                        saturate the cross-entropy gradient)
``randomized``          two forward passes on the same images agree; a randomized
                        model needs EOT attacks, one-pass numbers overstate robustness
``eps0_clean``          every attack at eps = 0 gives exactly the clean accuracy
``monotone``            accuracy does not increase with eps (sweeps and ensembles)
``huge_eps``            at unbounded eps (l_inf 1, l2 the cube's diameter) any image is
                        reachable, so an attack must bring accuracy to ~0
``pgd_le_fgsm``         iterative PGD is at least as strong as single-step FGSM
``zero_gradients``      fraction of examples whose input gradient is exactly zero
``gradient_free``       a gradient-free attack (SPSA) is not stronger than PGD
``black_box``           Square (queries only) does not beat APGD by more than 1 point,
                        l_inf and l2
``convergence``         2x the steps and 5 restarts gain less than 1 point, l_inf and l2
======================  ======================================================

Each check returns a :class:`Check` with status ``pass``, ``warn`` or ``fail``.

Example:
    >>> checks = gradient_masking_checks(model_fn, x, y, eps=0.3)  # doctest: +SKIP
    >>> print(format_checks(checks))  # doctest: +SKIP
"""

import dataclasses
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfdprobust import attacks
from tfdprobust.errors import require

PASS, WARN, FAIL = "pass", "warn", "fail"
# Random starts make neighbouring sweep points differ by a few examples; a masked
# model is off by far more than this.
TOLERANCE = 0.01


@dataclasses.dataclass(frozen=True)
class Check:
    """One sanity check: ``name``, ``status`` (pass / warn / fail) and a one-line ``detail``."""

    name: str
    status: str
    detail: str


def accuracy(model_fn, x, y, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model_fn`` on ``(x, y)``."""
    return float(np.mean(attacks.correct_under_attack(model_fn, x, y, None, batch_size))) if len(x) else 0.0


def check_logits(outputs: np.ndarray) -> Check:
    """Fails when every output row is a probability vector (non-negative, sums to 1)."""
    outputs = np.asarray(outputs, np.float64)
    sums = outputs.sum(axis=1)
    probs = bool(np.all(outputs >= 0) and np.allclose(sums, 1.0, atol=1e-3))
    if probs:
        return Check("logits", FAIL, "model outputs probabilities (rows >= 0 summing to 1); "
                     "export the pre-softmax logits, or attacks see saturated gradients")
    return Check("logits", PASS, f"outputs look like logits (row sums {sums.min():.3g}..{sums.max():.3g})")


def check_eps0(clean_acc: float, sweeps: Dict[str, Dict]) -> Check:
    bad = [f"{name} {s['accuracy'][0]:.4f}" for name, s in sweeps.items()
           if s["eps"][0] == 0 and abs(s["accuracy"][0] - clean_acc) > 1e-9]
    if bad:
        return Check("eps0_clean", FAIL, f"eps=0 accuracy differs from clean {clean_acc:.4f}: " + ", ".join(bad))
    return Check("eps0_clean", PASS, f"every attack at eps=0 gives the clean accuracy {clean_acc:.4f}")


def check_monotone(sweeps: Dict[str, Dict]) -> Check:
    bad = []
    for name, s in sweeps.items():
        acc = s["accuracy"]
        for i in range(1, len(acc)):
            if acc[i] > acc[i - 1] + TOLERANCE:
                bad.append(f"{name}: {acc[i - 1]:.3f} at eps={s['eps'][i - 1]} -> {acc[i]:.3f} at eps={s['eps'][i]}")
    if bad:
        return Check("monotone", FAIL, "accuracy increases with eps (attack is failing): " + "; ".join(bad))
    return Check("monotone", PASS, "accuracy is non-increasing in eps for every attack")


def check_huge_eps(acc: Dict[str, float]) -> Check:
    """``acc``: {description: accuracy at an unbounded eps}; every one must be ~0."""
    detail = "; ".join(f"{k}: accuracy {v:.4f}" for k, v in acc.items())
    worst = max(acc.values())
    if worst > 0.1:
        return Check("huge_eps", FAIL, detail + " (should be ~0: every image is reachable)")
    if worst > 0.02:
        return Check("huge_eps", WARN, detail + " (should be ~0)")
    return Check("huge_eps", PASS, detail)


def check_randomized(model_fn, x) -> Check:
    """Fails when two forward passes on the same images differ (a randomized model)."""
    a = model_fn(tf.constant(x)).numpy()
    b = model_fn(tf.constant(x)).numpy()
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    flips = float(np.mean(np.argmax(a, 1) != np.argmax(b, 1))) if a.size else 0.0
    if diff > 1e-4 * (1 + float(np.max(np.abs(a)))):
        return Check("randomized", FAIL, f"two forward passes differ (max |logit diff| {diff:.3g}, "
                     f"{100 * flips:.1f}% of predictions flip): the model is randomized; single-pass "
                     "attacks overstate its robustness, evaluate with EOT (average gradients over draws)")
    return Check("randomized", PASS, f"two forward passes agree (max |logit diff| {diff:.3g})")


def check_black_box(results: Dict[str, tuple]) -> Check:
    """``results``: {norm: (eps, square_acc, apgd_acc, n)}; Square must not beat APGD by > 1 point."""
    bad, parts = [], []
    for norm, (e, sq, ap, n) in results.items():
        parts.append(f"{norm} eps={e:g} on {n}: Square {sq:.3f} vs APGD-CE {ap:.3f}")
        if sq < ap - max(TOLERANCE, 1.5 / max(n, 1)):
            bad.append(norm)
    if bad:
        return Check("black_box", FAIL, "; ".join(parts) + f": the black-box attack beats APGD ({', '.join(bad)}),"
                     " so gradients mislead the white-box attacks")
    return Check("black_box", PASS, "; ".join(parts))


def check_convergence(results: Dict[str, tuple]) -> Check:
    """``results``: {norm: (eps, base_acc, strong_acc, n)}; more effort must gain < 1 point."""
    bad, parts = [], []
    for norm, (e, base, strong, n) in results.items():
        gain = base - strong
        parts.append(f"{norm} eps={e:g} on {n}: {base:.3f} -> {strong:.3f} with 2x steps, 5 restarts")
        if gain > max(TOLERANCE, 1.5 / max(n, 1)):
            bad.append(norm)
    if bad:
        return Check("convergence", FAIL, "; ".join(parts) + f": the attack has not converged ({', '.join(bad)}); "
                     "robust accuracy is overstated")
    return Check("convergence", PASS, "; ".join(parts))


def check_pgd_le_fgsm(sweeps: Dict[str, Dict]) -> Check:
    if "fgsm" not in sweeps or "pgd_linf" not in sweeps:
        return Check("pgd_le_fgsm", WARN, "not run (needs fgsm and pgd_linf sweeps)")
    f, p = sweeps["fgsm"], sweeps["pgd_linf"]
    fa = dict(zip(f["eps"], f["accuracy"]))
    bad = [f"eps={e}: pgd {a:.3f} > fgsm {fa[e]:.3f}" for e, a in zip(p["eps"], p["accuracy"])
           if e in fa and a > fa[e] + TOLERANCE]
    if bad:
        return Check("pgd_le_fgsm", FAIL, "PGD weaker than FGSM: " + "; ".join(bad))
    return Check("pgd_le_fgsm", PASS, "PGD accuracy <= FGSM accuracy at every eps")


def zero_gradient_fraction(model_fn, x, y, batch_size: int = 500):
    """(fraction of examples with an all-zero input gradient, fraction of zero entries)."""
    all_zero, zero_entries, total = 0, 0, 0
    for i in range(0, len(x), batch_size):
        xb = tf.convert_to_tensor(x[i:i + batch_size], tf.float32)
        yb = tf.cast(y[i:i + batch_size], tf.int32)
        with tf.GradientTape() as tape:
            tape.watch(xb)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=model_fn(xb))
        g = tape.gradient(loss, xb)
        g = np.zeros(xb.shape, np.float32) if g is None else g.numpy().reshape(len(xb), -1)
        g = g.reshape(len(xb), -1)
        all_zero += int(np.sum(np.all(g == 0, axis=1)))
        zero_entries += int(np.sum(g == 0))
        total += g.size
    return all_zero / max(1, len(x)), zero_entries / max(1, total)


def check_zero_gradients(frac_examples: float, frac_entries: float) -> Check:
    detail = f"{100 * frac_examples:.1f}% of examples have an all-zero input gradient ({100 * frac_entries:.1f}% of entries)"
    if frac_examples > 0.5:
        return Check("zero_gradients", FAIL, detail + ": gradients are masked (saturated or non-differentiable)")
    if frac_examples > 0.05:
        return Check("zero_gradients", WARN, detail)
    return Check("zero_gradients", PASS, detail)


def check_gradient_free(pgd_acc: float, free_acc: float, eps: float, n: int) -> Check:
    detail = f"on {n} examples at eps={eps}: SPSA {free_acc:.3f} vs PGD {pgd_acc:.3f}"
    if free_acc < pgd_acc - max(TOLERANCE, 1.5 / max(n, 1)):
        return Check("gradient_free", FAIL, detail + ": a gradient-free attack beats PGD, gradients mislead")
    return Check("gradient_free", PASS, detail)


CHECK_NAMES = ("logits", "randomized", "eps0_clean", "monotone", "pgd_le_fgsm", "huge_eps",
               "zero_gradients", "gradient_free", "black_box", "convergence")


def _full_mask(n, idx, sub):
    out = np.ones(n, bool)
    out[idx] = sub
    return out


def gradient_masking_checks(model_fn: Callable, x, y, eps: float = 0.3,
                            sweeps: Optional[Dict[str, Dict]] = None,
                            clean_acc: Optional[float] = None,
                            ensembles: Optional[Dict] = None, preset="quick",
                            examples: int = 100, square_queries: int = 1000,
                            steps: int = 20, batch_size: int = 500, seed: int = 0,
                            eps_l2: float = 2.0, return_ensembles: bool = False,
                            gradient_free_examples: Optional[int] = None,
                            only: Optional[Sequence[str]] = None):
    """Runs every check of :data:`CHECK_NAMES`.

    ``sweeps`` ({attack: {"eps": [...], "accuracy": [...]}}) and ``ensembles``
    ({norm: :class:`tfdprobust.ensemble.RobustAccuracy`}) are reused when given (the
    report passes its own); otherwise small FGSM / PGD-linf sweeps over
    ``[0, eps/2, eps]`` are run here. The re-attacking checks (SPSA, Square,
    convergence) run on the first ``examples`` images at the eps where the attack
    leaves about half the clean accuracy (where an attack can still be beaten).

    With ``return_ensembles``, returns ``(checks, ensembles)`` where every point that
    SPSA, Square or the convergence re-run broke is folded into the ensembles'
    per-example minimum, so the reported robust accuracy counts every attack that ran.
    ``only`` runs a subset of :data:`CHECK_NAMES` (a report always runs them all).

    Example:
        >>> for c in gradient_masking_checks(model_fn, x, y): print(c)  # doctest: +SKIP
    """
    from tfdprobust import ensemble

    for name in only or ():
        require(name in CHECK_NAMES, f"unknown sanity check {name!r}; choose from {', '.join(CHECK_NAMES)}")
    want = set(only or CHECK_NAMES)
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int64)
    if gradient_free_examples is not None:  # older keyword
        examples = max(1, gradient_free_examples)
    model_fn = attacks.connected(model_fn)  # a cut graph must read as zero gradients
    if clean_acc is None:
        clean_acc = accuracy(model_fn, x, y, batch_size)
    if sweeps is None and want & {"eps0_clean", "monotone", "pgd_le_fgsm", "gradient_free"}:
        sweeps = {}
        grid = [0.0, eps / 2, eps]
        for name in ("fgsm", "pgd_linf"):
            accs = [attacked_accuracy(model_fn, x, y, attacks.AttackConfig(name, eps=e, steps=steps), batch_size)
                    for e in grid]
            sweeps[name] = {"eps": grid, "accuracy": accs}
    sweeps = sweeps or {}
    ensembles = dict(ensembles or {})
    checks = []
    if "logits" in want:
        checks.append(check_logits(model_fn(tf.constant(x[:batch_size])).numpy()))
    if "randomized" in want:
        checks.append(check_randomized(model_fn, x[:min(len(x), 100)]))
    curves = dict(sweeps)
    for norm, r in ensembles.items():
        curves[f"ensemble_{norm}"] = {"eps": [e.eps for e in r.results], "accuracy": [e.accuracy for e in r.results]}
    if "eps0_clean" in want:
        checks.append(check_eps0(clean_acc, curves))
    if "monotone" in want:
        checks.append(check_monotone(curves))
    if "pgd_le_fgsm" in want:
        checks.append(check_pgd_le_fgsm(sweeps))
    if "huge_eps" in want:
        diameter = float(np.sqrt(np.prod(x.shape[1:])))
        huge = {
            "PGD-linf eps=1": attacked_accuracy(
                model_fn, x, y, attacks.AttackConfig("pgd_linf", eps=1.0, steps=steps), batch_size),
            f"PGD-l2 eps={diameter:.0f}": attacked_accuracy(
                model_fn, x, y, attacks.AttackConfig("pgd_l2", eps=diameter, steps=steps), batch_size),
        }
        checks.append(check_huge_eps(huge))
    if "zero_gradients" in want:
        checks.append(check_zero_gradients(*zero_gradient_fraction(model_fn, x, y, batch_size)))

    n = min(examples, len(x))
    idx = np.arange(n)
    xs, ys = x[:n], y[:n]
    folds: Dict[str, list] = {}
    if "gradient_free" in want:
        e_free = _informative_eps(_curve(ensembles.get("linf")) or sweeps.get("pgd_linf"), clean_acc, eps)
        pgd = attacks.correct_under_attack(model_fn, xs, ys, attacks.AttackConfig("pgd_linf", eps=e_free,
                                                                                  steps=steps), batch_size)
        free_adv = attacks.spsa_linf(model_fn, xs, ys, e_free, steps=steps, seed=seed)
        free = np.argmax(model_fn(free_adv).numpy(), 1) == ys
        checks.append(check_gradient_free(float(pgd.mean()), float(free.mean()), e_free, n))
        folds["linf"] = [(e_free, "spsa", _full_mask(len(x), idx, free))]
    if not want & {"black_box", "convergence"}:
        return (checks, ensembles) if return_ensembles else checks
    p = ensemble.get_preset(preset)
    apgd_only = ensemble.Preset(p.name + "-apgd", tuple(m for m in p.attacks if m.name.startswith("apgd")),
                                "APGD members")
    ce_steps = max(m.steps for m in apgd_only.attacks)
    strong = apgd_only.scaled(steps=2 * ce_steps, restarts=5)
    black, conv = {}, {}
    for norm, default in (("linf", eps), ("l2", eps_l2)):
        pgd_curve = sweeps.get("pgd_linf" if norm == "linf" else "pgd_l2")
        e = _informative_eps(_curve(ensembles.get(norm)) or pgd_curve, clean_acc, default)
        if "black_box" in want:
            ce = ensemble.robust_accuracy(model_fn, xs, ys, ensemble.Preset("apgd-ce", (
                ensemble.EnsembleAttack("apgd-ce", steps=ce_steps),), "APGD-CE"), norm, (e,), batch_size, seed)
            sq = ensemble.robust_accuracy(model_fn, xs, ys, ensemble.Preset("square", (
                ensemble.EnsembleAttack("square", queries=square_queries),), "Square"), norm, (e,), batch_size,
                seed)
            black[norm] = (e, sq.accuracy(e), ce.accuracy(e), n)
            folds.setdefault(norm, []).extend([
                (e, "apgd-ce", _full_mask(len(x), idx, ce.at(e).correct)),
                (e, f"square({square_queries})", _full_mask(len(x), idx, sq.at(e).correct))])
        if "convergence" in want:
            base = ensemble.robust_accuracy(model_fn, xs, ys, apgd_only, norm, (e,), batch_size, seed)
            more = ensemble.robust_accuracy(model_fn, xs, ys, strong, norm, (e,), batch_size, seed + 1)
            conv[norm] = (e, base.accuracy(e), more.accuracy(e), n)
            folds.setdefault(norm, []).append(
                (e, "apgd(2x steps, 5 restarts)", _full_mask(len(x), idx, more.at(e).correct)))
    if black:
        checks.append(check_black_box(black))
    if conv:
        checks.append(check_convergence(conv))
    if not return_ensembles:
        return checks
    for norm, items in folds.items():
        if norm in ensembles:
            for e, name, mask in items:
                if e > 0:
                    ensembles[norm] = ensembles[norm].fold(e, name + " (sanity)", mask)
    return checks, ensembles


def _curve(result) -> Optional[Dict]:
    if result is None:
        return None
    return {"eps": [r.eps for r in result.results], "accuracy": [r.accuracy for r in result.results]}


def _informative_eps(pgd_sweep: Optional[Dict], clean_acc: float, default: float) -> float:
    """The sweep eps where the attack's accuracy is nearest half the clean accuracy (ties:
    the larger eps). Where the attack already reaches 0, no attack can beat it, so the
    gradient-free comparison would be vacuous."""
    if not pgd_sweep:
        return default
    cands = [(e, a) for e, a in zip(pgd_sweep["eps"], pgd_sweep["accuracy"]) if e > 0]
    if not cands:
        return default
    # Where the attack barely bites at any eps (the masked case), ties between
    # near-identical accuracies would pick an eps at random; use the largest budget.
    if min(a for _, a in cands) > 0.75 * clean_acc:
        return max(e for e, _ in cands)
    return min(cands, key=lambda ea: (round(abs(ea[1] - clean_acc / 2), 2), -ea[0]))[0]


def attacked_accuracy(model_fn, x, y, config: "attacks.AttackConfig", batch_size: int = 500) -> float:
    """Accuracy on ``attacks.generate`` outputs, batch by batch."""
    return float(np.mean(attacks.correct_under_attack(model_fn, x, y, config, batch_size))) if len(x) else 0.0


def failed(checks: Sequence[Check]) -> List[Check]:
    return [c for c in checks if c.status == FAIL]


def format_checks(checks: Sequence[Check], title: str = "") -> str:
    """Human-readable block; failures are impossible to miss."""
    lines = [f"Sanity checks against gradient masking{' - ' + title if title else ''}:"]
    for c in checks:
        lines.append(f"  [{c.status.upper():4s}] {c.name:15s} {c.detail}")
    bad = failed(checks)
    if bad:
        bar = "!" * 78
        lines += [bar, f"!! SANITY CHECKS FAILED ({', '.join(c.name for c in bad)}): the robustness numbers",
                  "!! above are NOT trustworthy (weak or masked attack, or a wrong model output).", bar]
    return "\n".join(lines)


def robust_accuracy_with_checks(model_fn: Callable, x, y, preset="standard",
                                eps_linf: Sequence[float] = (0.0, 0.1, 0.2, 0.3),
                                eps_l2: Sequence[float] = (0.0, 1.0, 2.0),
                                batch_size: int = 500, seed: int = 0, examples: int = 100,
                                square_queries: int = 1000):
    """The robust accuracy of an exported model, checked: what the tuner runs on a winner.

    :func:`tfdprobust.ensemble.robust_accuracy` with ``preset`` at every eps of both
    grids (include 0: the eps0 check), then every check of :data:`CHECK_NAMES`; the
    points SPSA, Square and the convergence re-run break are folded into the result.

    Returns:
        ``({"linf": RobustAccuracy, "l2": RobustAccuracy}, checks)``; ``failed(checks)``
        non-empty means the numbers are not trustworthy.

    Example:
        >>> robust, checks = robust_accuracy_with_checks(fn, x_test[:1000], y_test[:1000])  # doctest: +SKIP
        >>> robust["linf"].accuracy(0.1), robust["linf"].ci95(0.1), failed(checks)  # doctest: +SKIP
    """
    from tfdprobust import ensemble

    x = np.asarray(x, np.float32)
    y = np.asarray(y)
    ens = {norm: ensemble.robust_accuracy(model_fn, x, y, preset, norm, grid, batch_size, seed)
           for norm, grid in (("linf", eps_linf), ("l2", eps_l2))}
    checks, ens = gradient_masking_checks(
        model_fn, x, y, eps=max(eps_linf), eps_l2=max(eps_l2), clean_acc=ens["linf"].clean_accuracy,
        ensembles=ens, preset=preset, examples=examples, square_queries=square_queries,
        batch_size=batch_size, seed=seed, return_ensembles=True)
    return ens, checks
