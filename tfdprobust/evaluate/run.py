"""One evaluation end to end: validate everything, then attack, then write the report."""

from typing import Dict, List, Optional, Sequence

from tfdprobust.errors import require
from tfdprobust.evaluate.config import SuiteConfig
from tfdprobust.evaluate.data import load_eval_data
from tfdprobust.evaluate.models import check_input_range, check_model_on_data, load_model
from tfdprobust.evaluate.report import check_out_dir, write_outputs
from tfdprobust.evaluate.progress import Progress
from tfdprobust.evaluate.sections import corrupted_sets, evaluate_model, planned_sections


def evaluate_models(model_paths: Sequence[str], data_dir: Optional[str], out_dir: Optional[str],
                    cfg: Optional[SuiteConfig] = None, dataset: str = "mnist",
                    names: Optional[Sequence[str]] = None, verbose: int = 1, command: str = "",
                    overwrite: bool = False, input_range: str = "unit",
                    tfds_dir: Optional[str] = None) -> List[Dict]:
    """Evaluates every model on the same examples and writes the report to ``out_dir``.

    Everything that can be wrong with the input (flags, ``out_dir``, model files, data,
    input shape, input scale) is checked first, in seconds, before any attack runs.

    Returns the per-model result dicts (also in ``out_dir/results.json``).

    Example:
        >>> evaluate_models(["m.keras"], None, "reports/m", SuiteConfig(preset="quick"))  # doctest: +SKIP
    """
    import tensorflow as tf

    cfg = cfg or SuiteConfig()
    require(len(model_paths) >= 1, "pass at least one --model")
    names = list(names or [])
    require(not names or len(names) == len(model_paths),
            f"--name given {len(names)} times for {len(model_paths)} --model; give one per model or none")
    if out_dir:
        check_out_dir(out_dir, overwrite)
    models = [load_model(p, names[i] if names else None, input_range, dataset) for i, p in enumerate(model_paths)]
    seen = set()
    for m in models:
        if m.name in seen:
            m.name = f"{m.name}#{len(seen)}"
        seen.add(m.name)
    log = print if verbose else (lambda s: None)
    x, y, source = load_eval_data(dataset, data_dir, cfg.num_examples, cfg.seed, log=print, tfds_dir=tfds_dir)
    if verbose:
        print(f"data: {len(x)} images of {source}", flush=True)
    num_classes = int(y.max()) + 1
    for m in models:
        check_model_on_data(m, x, num_classes)
        m.metadata = dict(m.metadata)
        accs = check_input_range(m.path, input_range, dataset, x, y, cfg.batch_size)
        log(f"input range of {m.name}: clean accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in accs.items())
            + f" (using {input_range})")
    tf.keras.utils.set_random_seed(cfg.seed)
    # One numbering of the sections across models: "[k/K] section: done/total, elapsed, ~left".
    progress = Progress(planned_sections(cfg, len(models)), verbose)
    corrupted = corrupted_sets(x, cfg, verbose, progress) if "corruptions" in cfg.sections else None
    results = []
    for m in models:
        r = evaluate_model(m, x, y, cfg, corrupted, verbose, progress)
        r["data_source"] = source
        r["input_range"] = input_range
        results.append(r)
    if out_dir:
        files = write_outputs(results, out_dir, command, overwrite)
        if verbose:
            print(f"\nwrote {', '.join(files)} to {out_dir}")
    if verbose:
        print(_summary_table(results))
    return results


def _summary_table(results: Sequence[Dict]) -> str:
    parts = []
    for r in results:
        s = f"{r['name']}: clean {r['clean_accuracy']:.3f}"
        for norm, ens in (r.get("ensemble") or {}).items():
            s += f", {ens['preset']} {norm} " + " ".join(
                f"eps={e:g}:{a:.3f}" for e, a in zip(ens["eps"], ens["robust_accuracy"]) if e > 0)
        s += ", sanity PASS" if r["sanity_passed"] else ", sanity FAIL"
        parts.append(s)
    return "\nsummary:\n  " + "\n  ".join(parts)
