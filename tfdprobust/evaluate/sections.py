"""The report's sections, each a function of (model_fn, x, y, config): sweeps, the attack
ensemble, iterations to fool, geometry, curvature, corruptions, and the sanity checks."""

import dataclasses
import time
from typing import Dict, Optional

import numpy as np

from tfdprobust.evaluate.config import SuiteConfig
from tfdprobust.evaluate.models import LoadedModel
from tfdprobust.evaluate.progress import Progress

#: What a model's evaluation runs, in order; each is one progress section (sanity always).
MODEL_SECTIONS = ("sweeps", "ensemble", "iterations", "geometry", "curvature", "corruptions", "sanity")


def planned_sections(cfg: SuiteConfig, models: int) -> int:
    """How many progress sections :func:`evaluate_models` runs for ``models`` models."""
    per_model = sum(1 for s in MODEL_SECTIONS if s == "sanity" or s in cfg.sections)
    return models * per_model + ("corruptions" in cfg.sections)

def _silent(verbose: int) -> Progress:
    """A :class:`Progress` for a section function called on its own (one section)."""
    return Progress(1, verbose)


def _predict(model_fn, x, batch_size):
    import tensorflow as tf

    return np.concatenate([np.argmax(model_fn(tf.constant(x[i:i + batch_size])).numpy(), 1)
                           for i in range(0, len(x), batch_size)]) if len(x) else np.zeros([0], int)


def run_sweeps(model_fn, x, y, cfg: SuiteConfig, verbose: int = 1, progress: Optional[Progress] = None) -> Dict:
    from tfdprobust import attacks

    sweeps = {}
    total = len(x) * sum(len(cfg.sweep_grid(name)) for name in cfg.sweep_attacks)
    with (progress or _silent(verbose)).section(f"sweeps {', '.join(cfg.sweep_attacks)}", total,
                                                "attacked examples") as sec:
        for name in cfg.sweep_attacks:
            grid = cfg.sweep_grid(name)
            accs = []
            for e in grid:
                c = attacks.AttackConfig(name, eps=e, steps=cfg.steps)
                accs.append(float(np.mean(attacks.correct_under_attack(model_fn, x, y, c, cfg.batch_size,
                                                                       progress=sec))))
            sweeps[name] = {"norm": attacks.AttackConfig(name, eps=0.0).norm, "eps": list(grid), "accuracy": accs}
    return sweeps


def run_ensemble(model_fn, x, y, cfg: SuiteConfig, verbose: int = 1, progress: Optional[Progress] = None) -> Dict:
    """The preset's attack ensemble at every eps of both grids (:func:`ensemble.robust_accuracy`)."""
    from tfdprobust import ensemble

    members = len(ensemble.get_preset(cfg.preset).attacks)
    total = members * sum(1 for e in (*cfg.eps_linf, *cfg.eps_l2) if e > 0)
    out = {}
    with (progress or _silent(verbose)).section(f"ensemble ({cfg.preset})", total, "attack runs") as sec:
        for norm, grid in (("linf", cfg.eps_linf), ("l2", cfg.eps_l2)):
            if verbose:
                print(f"  ensemble ({cfg.preset}: {ensemble.get_preset(cfg.preset).description}) {norm} "
                      f"eps={list(grid)}", flush=True)
            out[norm] = ensemble.robust_accuracy(model_fn, x, y, cfg.preset, norm, grid, cfg.batch_size,
                                                 cfg.seed, verbose, progress=sec)
    return out


def run_iterations(model_fn, x, y, cfg: SuiteConfig, verbose: int = 1, progress: Optional[Progress] = None) -> Dict:
    from tfdprobust import attacks

    out = {}
    total = len(x) * len(cfg.fool_eps) * len(cfg.fool_step_sizes)
    with (progress or _silent(verbose)).section("PGD iterations to fool", total, "attacked examples") as sec:
        for e in cfg.fool_eps:
            for a in cfg.fool_step_sizes:
                counts = []
                for i in range(0, len(x), cfg.batch_size):
                    counts.append(attacks.iterations_to_fool(model_fn, x[i:i + cfg.batch_size],
                                                             y[i:i + cfg.batch_size], e, a, cfg.fool_max_steps))
                    sec.add(len(counts[-1]))
                counts = np.concatenate(counts)
                fooled = counts > 0
                out[f"eps={e},step={a}"] = {
                    "eps": e, "step_size": a, "max_steps": cfg.fool_max_steps,
                    "fraction_fooled": float(np.mean(counts >= 0)),
                    "median_iterations": float(np.median(counts[fooled])) if fooled.any() else None,
                    "mean_iterations": float(np.mean(counts[fooled])) if fooled.any() else None,
                    "counts": counts.tolist(),
                }
    return out


def _summary(values: np.ndarray) -> Dict:
    v = values[np.isfinite(values)]
    return {"mean": float(v.mean()) if len(v) else None, "median": float(np.median(v)) if len(v) else None,
            "n": int(len(v)), "values": [round(float(a), 6) for a in v]}


def run_geometry(model_fn, x, y, cfg: SuiteConfig, verbose: int = 1, progress: Optional[Progress] = None) -> Dict:
    """DeepFool distances on correctly classified examples (distance from the true class)."""
    from tfdprobust import geometry

    n = min(cfg.geometry_examples, len(x))
    xs, ys = x[:n], y[:n]
    keep = _predict(model_fn, xs, cfg.batch_size) == ys
    xs, ys = xs[keep], ys[keep]
    out = {"examples": int(len(xs))}
    with (progress or _silent(verbose)).section(f"DeepFool distances ({len(xs)} correctly classified examples)",
                                                4 * len(xs), "example passes") as sec:
        for norm in ("l2", "linf"):
            out[f"linearized_{norm}"] = _summary(geometry.linearized_boundary_distance(model_fn, xs, ys, norm))
            sec.add(len(xs))
            out[f"deepfool_{norm}"] = _summary(geometry.deepfool(model_fn, xs, ys, norm, cfg.deepfool_iterations)[1])
            out[f"deepfool_{norm}"]["fooled_fraction"] = out[f"deepfool_{norm}"]["n"] / max(1, len(xs))
            sec.add(len(xs))
    return out


def run_curvature(model_fn, x, y, cfg: SuiteConfig, verbose: int = 1, progress: Optional[Progress] = None) -> Dict:
    from tfdprobust import geometry

    n = min(cfg.curvature_examples, len(x))
    with (progress or _silent(verbose)).section(f"input-Hessian top-{cfg.curvature_k} eigenvalues (Lanczos)", n,
                                                "examples") as sec:
        ev = geometry.curvature_profile(model_fn, x[:n], y[:n], k=cfg.curvature_k, seed=cfg.seed)
        sec.add(n)
    return {"examples": n, "k": cfg.curvature_k,
            "mean_abs_eigenvalues": np.abs(ev).mean(0).tolist(),
            "mean_eigenvalues": ev.mean(0).tolist()}


def corrupted_sets(x, cfg: SuiteConfig, verbose: int = 1, progress: Optional[Progress] = None) -> Dict[str, np.ndarray]:
    """Corrupted copies of ``x``, computed once and shared by every model."""
    from tfdprobust import corruptions

    names = corruptions.corruption_names(cfg.corruptions)
    out = {}
    with (progress or _silent(verbose)).section(f"corrupting {len(x)} images", len(names), "corruptions") as sec:
        for i, n in enumerate(names):
            out[n] = corruptions.corrupt(x, n, seed=cfg.seed + i)
            sec.add(1)
    return out


def run_corruptions(model_fn, y, sets: Dict[str, np.ndarray], cfg: SuiteConfig, verbose: int = 1,
                    progress: Optional[Progress] = None) -> Dict:
    accs = {}
    with (progress or _silent(verbose)).section("accuracy on corrupted images", len(sets), "corruptions") as sec:
        for n, xc in sets.items():
            accs[n] = float(np.mean(_predict(model_fn, xc, cfg.batch_size) == y))
            sec.add(1)
    return {"accuracy": accs, "mean_accuracy": float(np.mean(list(accs.values()))) if accs else None}


def evaluate_model(model: LoadedModel, x, y, cfg: SuiteConfig, corrupted: Optional[Dict] = None,
                   verbose: int = 1, progress: Optional[Progress] = None) -> Dict:
    """Every section of ``cfg`` for one model; returns a JSON-serializable dict.

    ``progress`` numbers the sections across models (:func:`planned_sections`); without
    it, this model's sections are numbered on their own.
    """
    from tfdprobust import sanity

    if progress is None:
        progress = Progress(planned_sections(cfg, 1) - ("corruptions" in cfg.sections and not corrupted) - (
            "corruptions" in cfg.sections), verbose)
    fn = model.model_fn
    res: Dict = {"name": model.name, "path": model.path, "kind": model.kind, "metadata": model.metadata,
                 "examples": int(len(x)), "timings_seconds": {}}

    def timed(section, f):
        t = time.time()
        res[section] = f()
        res["timings_seconds"][section] = round(time.time() - t, 2)

    timed("clean_accuracy", lambda: float(np.mean(_predict(fn, x, cfg.batch_size) == y)))
    if verbose:
        print(f"\n== {model.name} ({model.kind}, {model.path}): clean accuracy {res['clean_accuracy']:.4f} "
              f"on {len(x)} examples", flush=True)
    if "sweeps" in cfg.sections:
        timed("sweeps", lambda: run_sweeps(fn, x, y, cfg, verbose, progress))
    ensembles = None
    if "ensemble" in cfg.sections:
        t = time.time()
        ensembles = run_ensemble(fn, x, y, cfg, verbose, progress)
        res["timings_seconds"]["ensemble"] = round(time.time() - t, 2)
    if "iterations" in cfg.sections:
        timed("iterations_to_fool", lambda: run_iterations(fn, x, y, cfg, verbose, progress))
    if "geometry" in cfg.sections:
        timed("geometry", lambda: run_geometry(fn, x, y, cfg, verbose, progress))
    if "curvature" in cfg.sections:
        timed("curvature", lambda: run_curvature(fn, x, y, cfg, verbose, progress))
    if "corruptions" in cfg.sections and corrupted:
        timed("corruptions", lambda: run_corruptions(fn, y, corrupted, cfg, verbose, progress))
    t = time.time()
    with progress.section("sanity checks (" + ", ".join(sanity.CHECK_NAMES) + ")", 1, "check suite") as sec:
        checks, ensembles = sanity.gradient_masking_checks(
            fn, x, y, sweeps=res.get("sweeps"), clean_acc=res["clean_accuracy"], ensembles=ensembles,
            preset=cfg.preset, examples=cfg.check_examples, square_queries=cfg.square_queries,
            steps=min(cfg.steps, 40), batch_size=cfg.batch_size, seed=cfg.seed, return_ensembles=True)
        sec.add(1)
    res["timings_seconds"]["sanity"] = round(time.time() - t, 2)
    if ensembles is not None and "ensemble" in cfg.sections:
        res["ensemble"] = {norm: r.to_dict() for norm, r in ensembles.items()}
    res["sanity"] = [dataclasses.asdict(c) for c in checks]
    res["sanity_passed"] = not sanity.failed(checks)
    if verbose:
        print(sanity.format_checks(checks, model.name), flush=True)
    return res
