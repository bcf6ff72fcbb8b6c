"""Runs the grid, one process per configuration, and writes the side-by-side table.

Every configuration gets a fresh interpreter with one thread for every framework
(``OMP_NUM_THREADS``, TensorFlow's, PyTorch's and XLA's thread settings), so its CPU
time, its peak RSS and its compilation are its own. The machine is shared, so the load
average is recorded next to every run and examples per CPU-second is the headline figure
(wall time is reported too, and drifts with the load).

Even CPU time drifts by 10-30% between runs of the same configuration on this 2-core
virtual machine, which is as large as the gaps the project tracks. So the grid runs in
``rounds``: each round runs every configuration once, in the same order, and the report
gives each configuration's median round (and the range), so that DP and non-DP entries
measured minutes apart meet the same drift.
"""

import json
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Sequence, Tuple

from tfdprobust.errors import require
from benchmarks import peers

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def grid(frameworks: Sequence[str], models: Sequence[str], batch_sizes: Sequence[int], attacks: Sequence[str],
         **timing) -> List[peers.Spec]:
    """Every valid configuration, grouped by (model, batch, attack) so each group runs together."""
    specs = []
    for model in models:
        for batch in batch_sizes:
            for attack in attacks:
                for framework in frameworks:
                    if attack == "pgd" and framework in peers.CLEAN_ONLY:
                        continue
                    specs.append(peers.Spec(framework, model, batch, attack == "pgd", **timing))
    return specs


def machine() -> Dict:
    """What the figures depend on besides the code: the CPU (model and the vector instruction
    sets), its cores, oneDNN's ISA limit if one is set (an emulation of an older CPU's oneDNN
    kernels, not that CPU), the TensorFlow version and the commit measured."""
    from tfdprobust import machine as machine_lib

    try:
        import importlib.metadata

        tf_version = importlib.metadata.version("tensorflow")
    except Exception:  # noqa: BLE001  (any failure: the version is only reported)
        tf_version = "unknown"
    cpu = machine_lib.cpu()
    return {"cpu": cpu["model"], "cores": cpu["cores"], **{isa: cpu[isa] for isa in machine_lib.ISAS},
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"), "tensorflow": tf_version,
            "commit": machine_lib.commit(mark_dirty=True)}


def describe_machine(m: Dict) -> str:
    isas = ", ".join(f"{isa} {'yes' if m.get(isa) else 'no'}" for isa in ("avx", "avx2", "fma", "avx512f"))
    limit = (f"; oneDNN limited to {m['onednn_max_cpu_isa']} (ONEDNN_MAX_CPU_ISA: an emulation of that ISA's "
             "oneDNN kernels, Eigen's kernels unchanged)" if m.get("onednn_max_cpu_isa") else "")
    return (f"{m.get('cpu')} ({isas}), {m.get('cores')} cores{limit}; TensorFlow {m.get('tensorflow')}; "
            f"commit {m.get('commit')}")


def run_one(spec: peers.Spec, timeout: float, python: str = sys.executable) -> Dict:
    """Measures ``spec`` in a fresh one-thread process of ``python`` (another stack's
    interpreter for :mod:`benchmarks.compare_stacks`); failures are recorded, not raised."""
    env = {**os.environ, **ONE_THREAD}
    cmd = [python, "-m", "benchmarks.benchmark_peers", f"--only={spec.key}",
           f"--seconds={spec.seconds}", f"--min_steps={spec.min_steps}", f"--max_steps={spec.max_steps}"]
    load_before = os.getloadavg()[0]
    start = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"key": spec.key, "error": f"timed out after {timeout:.0f} s", "load_before": load_before}
    out = {"key": spec.key, "load_before": load_before, "load_after": os.getloadavg()[0],
           "process_seconds": time.time() - start, "machine": machine()}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return {**out, "error": tail[-1][:300] if tail else f"exit status {proc.returncode}"}
    return {**json.loads(lines[-1]), **out}


def run_grid(specs: Sequence[peers.Spec], timeout: float, log: Callable[[str], None] = print,
             on_result: Callable[[List[Dict]], None] = lambda results: None, rounds: int = 1) -> List[Dict]:
    """Every configuration once per round (in ``specs`` order); returns every round's result
    (each with its ``round``), calling ``on_result`` with all of them after each."""
    require(rounds >= 1, f"--rounds must be >= 1, got {rounds}")
    results = []
    for i, spec in enumerate(spec for _ in range(rounds) for spec in specs):
        round_ = i // len(specs)
        log(f"[{i + 1}/{rounds * len(specs)}] round {round_ + 1}/{rounds}: {spec.key} ...")
        results.append({**run_one(spec, timeout), "round": round_})
        r = results[-1]
        log(f"    {r['error']}" if "error" in r else
            f"    {r['examples_per_cpu_second']:,.1f} examples/CPU-s, {r['examples_per_second']:,.1f} examples/s, "
            f"+{r['extra_memory_mb']:,.0f} MB, load {r['load_before']:.1f}")
        on_result(results)
    return results


def median_rounds(results: Sequence[Dict]) -> List[Dict]:
    """One result per configuration: its median round by examples per CPU-second (the lower
    middle one for an even count, so it is a round that ran), with every round's figure in
    ``round_examples_per_cpu_second``. Failed rounds count only when no round succeeded."""
    by_key: Dict[str, List[Dict]] = {}
    for r in results:
        by_key.setdefault(r["key"], []).append(r)
    out = []
    for runs in by_key.values():
        ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["examples_per_cpu_second"])
        if not ok:
            out.append(runs[-1])
            continue
        middle = ok[(len(ok) - 1) // 2]
        out.append({**middle, "rounds": len(ok),
                    "round_examples_per_cpu_second": [r["examples_per_cpu_second"] for r in ok]})
    return out


def _spread(r: Dict) -> str:
    figures = r.get("round_examples_per_cpu_second", [])
    if len(figures) < 2:
        return "1"
    return f"{len(figures)}: {min(figures):,.0f}-{max(figures):,.0f}"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "n/a"


def report(results: Sequence[Dict], command, label: str, note: str = "") -> str:
    """Markdown: one table per (model, batch, attack) and the ratios the project tracks.

    ``command`` is the command that produced ``results``, or a list of them when the
    results of several runs were combined (:func:`combine`). Several rounds of a
    configuration are reduced to their median (:func:`median_rounds`)."""
    loads = [r[k] for r in results for k in ("load_before", "load_after") if k in r]
    every_round = results
    results = median_rounds(results)
    by_key = {r["key"]: r for r in results}
    groups = []
    for r in results:
        model, batch, attack = r["key"].split(":")[1:]
        if (model, batch, attack) not in groups:
            groups.append((model, batch, attack))
    lines = [f"# Peer benchmark: {label}", "", *([note, ""] if note else []),
             *([f"Command: `{command}`"] if isinstance(command, str) else
               ["Commands (their results are combined below):", *[f"- `{c}`" for c in command]]), "",
             *[f"Machine: {m}" for m in sorted({describe_machine(r["machine"]) for r in results if "machine" in r})],
             "",
             f"Load average (1 min) during the runs: {min(loads):.1f} to {max(loads):.1f} on 2 cores shared with "
             "other jobs." if loads else "", "",
             "Every configuration ran in its own process with one thread, once per round (every round runs "
             "the whole grid in the same order). *examples/CPU-s* divides the examples "
             "trained by the process's CPU time (all threads) over the timed steps, after 2 warm-up steps, and "
             "is the median round's (*rounds* gives their number and range; the other columns are that "
             "round's); "
             "*examples/s* is the same over wall time, which drifts with the load. *extra MB* is the peak RSS "
             "minus the RSS before the first step (framework, data and model loaded), so it includes tracing "
             "and compilation. The ratio column compares each DP entry with the non-private step of its own "
             "framework (ours and tensorflow-privacy: our train step with DP off). With PGD-10, ours, "
             "tfp_dpkeras and jax_dp clip one gradient per example (clean and adversarial rows combined); "
             "Opacus and DPSequential cannot, and clip the 2B rows separately (the same computation, not the "
             "same privacy). The *path* column says what each entry actually ran.", ""]
    lines += parameter_check(results) + [""] + targets(by_key, groups)
    for model, batch, attack in groups:
        lines += [f"## {model}, B = {batch}, {'PGD-10 adversarial training' if attack == 'pgd' else 'no attack'}", "",
                  "| entry | examples/CPU-s | rounds | vs own non-DP | examples/s (wall) | extra MB | peak MB | params | "
                  "steps | load | path |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for framework in peers.FRAMEWORKS.names():
            r = by_key.get(f"{framework}:{model}:{batch}:{attack}")
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {framework} | failed | | | | | | | | {r['load_before']:.1f} | {r['error']} |")
                continue
            base = by_key.get(f"{peers.DP_BASELINE.get(framework, '')}:{model}:{batch}:{attack}", {})
            lines.append(
                f"| {framework} | {r['examples_per_cpu_second']:,.1f} | {_spread(r)} | "
                f"{_ratio(r['examples_per_cpu_second'], base.get('examples_per_cpu_second')) if base else ''} | "
                f"{r['examples_per_second']:,.1f} | {r['extra_memory_mb']:,.0f} | {r['peak_rss_mb']:,.0f} | {r['parameters']:,} | "
                f"{r['steps']} | "
                f"{r['load_before']:.1f} | {r['path']} |")
        lines += [""] + _headline(by_key, model, batch, attack) + _per_round(every_round, model, batch, attack) + [""]
    return "\n".join(lines) + "\n"


def targets(by_key: Dict, groups: Sequence[Tuple[str, str, str]]) -> List[str]:
    """The project's targets (:data:`peers.TARGET_DP_VS_NONDP` and the others), one row per
    configuration where ``ours_dp`` ran: each median ratio, and whether it meets its target.
    A ratio whose entries did not both run reads "n/a" and meets nothing."""
    def get(framework, key, field="examples_per_cpu_second"):
        return by_key.get(f"{framework}:{key}", {}).get(field)

    def verdict(value, target):
        if value is None:
            return "n/a"
        return f"{value:.2f}x {'met' if value >= target else '**missed**'}"

    def memory(framework, key):
        dp, base = get(framework, key, "extra_memory_mb"), get("ours_nondp", key, "extra_memory_mb")
        if dp is None or not base:
            return "n/a"
        return f"{dp / base:.2f}x {'met' if dp / base <= peers.TARGET_EXTRA_MEMORY else '**missed**'}"

    rows = []
    for model, batch, attack in groups:
        key = f"{model}:{batch}:{attack}"
        ours, nondp = get("ours_dp", key), get("ours_nondp", key)
        if ours is None:
            continue
        opacus = [v for v in (get("opacus_hooks", key), get("opacus_ghost", key)) if v]
        chunked = get("ours_dp_chunked", key)
        rows.append(f"| {model} | {batch} | {'PGD-10' if attack == 'pgd' else 'none'} | "
                    f"{verdict(ours / nondp if nondp else None, peers.TARGET_DP_VS_NONDP[attack])} | "
                    f"{verdict(ours / max(opacus) if opacus else None, peers.TARGET_VS_OPACUS)} | "
                    f"{memory('ours_dp', key)} | "
                    f"{verdict(chunked / nondp if chunked and nondp else None, peers.TARGET_DP_VS_NONDP[attack]) if chunked else 'n/a'} | "
                    f"{memory('ours_dp_chunked', key) if chunked else 'n/a'} |")
    if not rows:
        return []
    return ["## Targets", "",
            f"Medians of the rounds. Targets: ours DP ≥ {peers.TARGET_DP_VS_NONDP['clean']}x our non-DP step "
            f"(≥ {peers.TARGET_DP_VS_NONDP['pgd']}x with PGD-10), ≥ {peers.TARGET_VS_OPACUS}x Opacus' faster "
            f"mode, DP extra memory ≤ {peers.TARGET_EXTRA_MEMORY}x the non-DP step's. *chunked* is ours DP with "
            f"`--dp_chunk_rows={peers.CHUNK_ROWS}`.", "",
            "| network | B | attack | DP / non-DP | DP / Opacus' best | DP extra memory / non-DP | "
            "chunked / non-DP | chunked extra memory / non-DP |",
            "|---|---:|---|---|---|---|---|---|", *rows, ""]


def parameter_check(results: Sequence[Dict]) -> List[str]:
    """One line per network: the trainable parameter count of every entry that ran (the
    frameworks must build the same architecture), or the mismatch."""
    counts: Dict[str, Dict[int, List[str]]] = {}
    for r in results:
        if "parameters" in r:
            counts.setdefault(r["model"], {}).setdefault(r["parameters"], []).append(r["framework"])
    lines = []
    for model, by_count in counts.items():
        if len(by_count) == 1:
            (count, names), = by_count.items()
            lines.append(f"- {model}: {count:,} trainable parameters in all {len(set(names))} entries that ran")
        else:
            lines.append(f"- {model}: PARAMETER COUNTS DIFFER: " + "; ".join(
                f"{count:,} ({', '.join(sorted(set(names)))})" for count, names in by_count.items()))
    return lines


def _headline(by_key: Dict, model: str, batch: str, attack: str) -> List[str]:
    def get(framework, field="examples_per_cpu_second"):
        r = by_key.get(f"{framework}:{model}:{batch}:{attack}", {})
        return r.get(field)

    ours = get("ours_dp")
    opacus = [v for v in (get("opacus_hooks"), get("opacus_ghost")) if v]
    out = [f"- ours DP vs our non-DP step: {_ratio(ours, get('ours_nondp'))}",
           f"- ours DP vs Opacus' best DP mode: {_ratio(ours, max(opacus) if opacus else None)}",
           f"- ours DP vs JAX vmap DP-SGD: {_ratio(ours, get('jax_dp'))}",
           f"- ours DP vs tensorflow-privacy DPSequential: {_ratio(ours, get('tfp_dpsequential'))}; "
           f"vs DPKerasSGDOptimizer: {_ratio(ours, get('tfp_dpkeras'))}",
           f"- extra memory, ours DP vs our non-DP step: {get('ours_dp', 'extra_memory_mb') or 0:,.0f} vs "
           f"{get('ours_nondp', 'extra_memory_mb') or 0:,.0f} MB"]
    if get("ours_dp_chunked"):
        out += [f"- ours DP with --dp_chunk_rows={peers.CHUNK_ROWS} vs our non-DP step: "
                f"{_ratio(get('ours_dp_chunked'), get('ours_nondp'))}",
                f"- extra memory, ours DP with --dp_chunk_rows={peers.CHUNK_ROWS} vs our non-DP step: "
                f"{get('ours_dp_chunked', 'extra_memory_mb') or 0:,.0f} vs "
                f"{get('ours_nondp', 'extra_memory_mb') or 0:,.0f} MB"]
    if attack == "clean" and get("keras_fit"):
        out.append(f"- ours DP vs plain Keras fit (non-DP): {_ratio(ours, get('keras_fit'))}")
    return out


def _per_round(results: Sequence[Dict], model: str, batch: str, attack: str) -> List[str]:
    """Ours DP against our non-DP step and against Opacus' faster mode within each round
    (rounds where both ran), when there are several rounds."""
    by_round: Dict[int, Dict[str, float]] = {}
    for r in results:
        if "error" not in r and r["key"].split(":")[1:] == [model, batch, attack]:
            by_round.setdefault(r.get("round", 0), {})[r["framework"]] = r["examples_per_cpu_second"]
    if len(by_round) < 2:
        return []
    out = []
    for name, bases in (("our non-DP step", ("ours_nondp",)), ("Opacus' best DP mode", ("opacus_hooks", "opacus_ghost"))):
        ratios = [f"{got['ours_dp'] / max(got[b] for b in bases if b in got):.2f}"
                  for _, got in sorted(by_round.items()) if "ours_dp" in got and any(b in got for b in bases)]
        if ratios:
            out.append(f"- ours DP vs {name}, round by round: {', '.join(ratios)}")
    return out


def combine(names: Sequence[str], folder: str) -> Tuple[List[Dict], List[str]]:
    """The results and commands of the reports ``<folder>/<name>.json`` for each name.

    Each report's rounds are numbered after the previous reports' rounds, so more rounds
    of the same configurations, run as a separate report (e.g. on the other core), count
    as further rounds."""
    results, commands = [], []
    for name in names:
        path = os.path.join(folder, f"{name}.json")
        require(os.path.exists(path), f"--combine: {path} does not exist; run the benchmark with --name={name} first")
        with open(path, encoding="utf-8") as f:
            payload = json.load(f)
        commands += payload["command"] if isinstance(payload["command"], list) else [payload["command"]]
        offset = 1 + max((r.get("round", 0) for r in results), default=-1)
        results += [{**r, "round": r.get("round", 0) + offset} for r in payload["results"]]
    return results, commands


def write(results: Sequence[Dict], command, label: str, folder: str, name: str, note: str = "") -> None:
    """``<folder>/<name>.md`` and ``.json``, each written to a temporary file and renamed."""
    from tfdprobust.export import write_json_atomic

    os.makedirs(folder, exist_ok=True)
    write_json_atomic(os.path.join(folder, f"{name}.json"),
                      {"command": command, "label": label, "note": note, "results": list(results)})
    tmp = os.path.join(folder, f".{name}.md.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(report(results, command, label, note))
    os.replace(tmp, os.path.join(folder, f"{name}.md"))
