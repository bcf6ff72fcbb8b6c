"""The peer benchmark's own machinery: configurations, one real measurement, the report.

The peers themselves (PyTorch, Opacus, JAX) are the optional ``bench`` extra, so these
tests only run the TensorFlow entries; the recorded run checks the peers' parameter counts.
"""

import os
import subprocess
import sys

import pytest

from tfdprobust.errors import UsageError
from benchmarks import peers
from benchmarks.peers import runner

ENV = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}


@pytest.mark.parametrize("args,needle", [
    (("pytorch", "cnn", 250, False), "unknown framework 'pytorch'"),
    (("jax_dp", "vgg", 250, False), "--models"),
    (("keras_fit", "cnn", 250, True), "no PGD variant"),
    (("ours_dp", "cnn", 0, False), "--batch_sizes"),
])
def test_bad_configurations_name_the_problem(args, needle):
    with pytest.raises(UsageError, match=needle):
        peers.Spec(*args)


def test_grid_runs_each_group_together_and_keras_fit_only_clean():
    specs = runner.grid(["keras_fit", "ours_dp"], ["cnn", "lenet"], [64, 250], ["clean", "pgd"])
    keys = [s.key for s in specs]
    assert keys[:3] == ["keras_fit:cnn:64:clean", "ours_dp:cnn:64:clean", "ours_dp:cnn:64:pgd"]
    assert len(keys) == 2 * 2 * 3 and "keras_fit:cnn:64:pgd" not in keys
    assert peers.Spec.parse("ours_dp:lenet:250:pgd") == peers.Spec("ours_dp", "lenet", 250, True)


def test_a_measured_configuration_lands_in_the_report():
    from tfdprobust import models

    spec = peers.Spec("keras_fit", "cnn", 8, False, seconds=1e-3, min_steps=2, max_steps=2)
    result = peers.measure(spec)
    assert result["steps"] == 2 and result["cpu_seconds"] > 0
    assert result["examples_per_cpu_second"] == pytest.approx(16 / result["cpu_seconds"])
    assert result["peak_rss_mb"] >= result["baseline_rss_mb"] > 0
    net = models.build_model(models.ModelConfig(norm="none"))
    assert result["parameters"] == sum(int(v.shape.num_elements()) for v in net.trainable_variables)
    failed = {"key": "opacus_ghost:cnn:8:clean", "error": "ModuleNotFoundError: No module named 'opacus'",
              "load_before": 1.0}
    text = runner.report([{**result, "load_before": 1.0, "load_after": 1.0}, failed], "cmd", "test")
    assert f"| keras_fit | {result['examples_per_cpu_second']:,.1f} |" in text
    assert "| opacus_ghost | failed |" in text and "No module named 'opacus'" in text
    assert f"- cnn: {result['parameters']:,} trainable parameters in all 1 entries that ran" in text


def test_different_parameter_counts_are_flagged():
    rows = [{"model": "cnn", "framework": "ours_dp", "parameters": 10},
            {"model": "cnn", "framework": "jax_dp", "parameters": 11}]
    assert "PARAMETER COUNTS DIFFER" in runner.parameter_check(rows)[0]


def test_bad_only_flag_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.benchmark_peers", "--only=ours_dp:cnn"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert proc.returncode == 2 and len(lines) == 1 and "--only must look like" in lines[0], proc.stderr


def test_combined_reports_keep_every_command(tmp_path):
    for name, key in (("a", "ours_dp:cnn:8:clean"), ("b", "jax_dp:lenet:8:clean")):
        runner.write([{"key": key, "error": "not run", "load_before": 1.0}], f"cmd {name}", name, str(tmp_path), name)
    results, commands = runner.combine(["a", "b"], str(tmp_path))
    assert commands == ["cmd a", "cmd b"] and [r["key"] for r in results] == ["ours_dp:cnn:8:clean",
                                                                              "jax_dp:lenet:8:clean"]
    runner.write(results, commands, "both", str(tmp_path), "both")
    text = (tmp_path / "both.md").read_text()
    assert "- `cmd a`" in text and "- `cmd b`" in text and "## lenet, B = 8, no attack" in text
    with pytest.raises(UsageError, match="--combine"):
        runner.combine(["missing"], str(tmp_path))


def test_rounds_run_the_whole_grid_in_order_and_report_the_median_round(monkeypatch):
    specs = runner.grid(["ours_nondp", "ours_dp"], ["cnn"], [8], ["clean"])
    figures = {"ours_nondp:cnn:8:clean": [100.0, 90.0, 130.0], "ours_dp:cnn:8:clean": [80.0, None, 70.0]}
    calls = []

    def fake_run_one(spec, timeout):
        n = sum(1 for key in calls if key == spec.key)
        calls.append(spec.key)
        value = figures[spec.key][n]
        if value is None:
            return {"key": spec.key, "error": "killed", "load_before": 1.0}
        return {"key": spec.key, "framework": spec.framework, "model": "cnn", "batch_size": 8, "pgd": False,
                "examples_per_cpu_second": value, "examples_per_second": value / 2, "extra_memory_mb": value,
                "peak_rss_mb": 900.0, "parameters": 10, "steps": 3, "path": "p", "load_before": 1.0,
                "load_after": 1.0}

    monkeypatch.setattr(runner, "run_one", fake_run_one)
    results = runner.run_grid(specs, 10.0, log=lambda line: None, rounds=3)
    assert calls == ["ours_nondp:cnn:8:clean", "ours_dp:cnn:8:clean"] * 3
    assert [r["round"] for r in results] == [0, 0, 1, 1, 2, 2]
    medians = {r["key"]: r for r in runner.median_rounds(results)}
    nondp, dp = medians["ours_nondp:cnn:8:clean"], medians["ours_dp:cnn:8:clean"]
    assert nondp["examples_per_cpu_second"] == 100.0 and nondp["extra_memory_mb"] == 100.0  # that round's row
    assert dp["examples_per_cpu_second"] == 70.0 and dp["round_examples_per_cpu_second"] == [70.0, 80.0]
    text = runner.report(results, "cmd", "test")
    assert "| ours_nondp | 100.0 | 3: 90-130 |" in text and "| ours_dp | 70.0 | 2: 70-80 | 0.70x |" in text
    assert "- ours DP vs our non-DP step, round by round: 0.80, 0.54\n" in text  # rounds 1 and 3 (2 failed)
    assert "Opacus' best DP mode, round by round" not in text  # no Opacus entry ran
    with pytest.raises(UsageError, match="--rounds"):
        runner.run_grid(specs, 10.0, rounds=0)


def test_the_report_names_the_machine_and_an_isa_emulation(monkeypatch):
    """Every report says which CPU (model, AVX2 or not), how many cores and which commit it
    measured, and marks a run with oneDNN limited to an older ISA as an emulation."""
    cpuinfo = open("/proc/cpuinfo", encoding="utf-8").read() if os.path.exists("/proc/cpuinfo") else ""
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    native = runner.machine()
    assert native["cores"] == os.cpu_count() and native["onednn_max_cpu_isa"] is None
    assert native["avx2"] == (" avx2" in cpuinfo)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX")
    emulated = runner.machine()
    rows = [{"key": f"ours_dp:cnn:{batch}:clean", "error": "not run", "load_before": 1.0, "machine": m}
            for batch, m in ((8, native), (16, emulated))]
    text = runner.report(rows, "cmd", "test")
    lines = [line for line in text.splitlines() if line.startswith("Machine: ")]
    assert len(lines) == 2
    assert all(f"avx2 {'yes' if native['avx2'] else 'no'}" in line and native["commit"] in line for line in lines)
    assert sum("oneDNN limited to AVX" in line and "emulation" in line for line in lines) == 1


def _row(framework, key, speed, memory):
    return {"key": f"{framework}:{key}", "framework": framework, "model": key.split(":")[0],
            "examples_per_cpu_second": speed, "examples_per_second": speed, "extra_memory_mb": memory,
            "peak_rss_mb": memory, "parameters": 10, "steps": 2, "load_before": 1.0, "path": "test"}


def test_targets_table_applies_each_target_to_its_ratio():
    by_key = {r["key"]: r for r in (
        _row("ours_nondp", "cnn:250:clean", 100.0, 200.0), _row("ours_dp", "cnn:250:clean", 79.0, 290.0),
        _row("opacus_hooks", "cnn:250:clean", 70.0, 1.0), _row("opacus_ghost", "cnn:250:clean", 80.0, 1.0),
        _row("ours_dp_chunked", "cnn:250:clean", 81.0, 310.0),
        _row("ours_nondp", "cnn:250:pgd", 100.0, 200.0), _row("ours_dp", "cnn:250:pgd", 95.0, 300.0))}
    lines = runner.targets(by_key, [("cnn", "250", "clean"), ("cnn", "250", "pgd"), ("lenet", "64", "clean")])
    clean, pgd = [line for line in lines if line.startswith("| cnn |")]
    # 0.79 < 0.8 missed; vs the faster Opacus mode (80) 0.99 < 1.0 missed; memory 1.45 <= 1.5 met;
    # chunked 0.81 met but its memory 1.55 missed.
    assert clean == ("| cnn | 250 | none | 0.79x **missed** | 0.99x **missed** | 1.45x met | 0.81x met | "
                     "1.55x **missed** |")
    # With PGD the bar is 0.95 (met at exactly 0.95); no Opacus or chunked entry ran.
    assert pgd == "| cnn | 250 | PGD-10 | 0.95x met | n/a | 1.50x met | n/a | n/a |"
    assert not any(line.startswith("| lenet |") for line in lines)  # ours_dp did not run there
    assert runner.targets({}, [("cnn", "250", "clean")]) == []


def test_a_second_report_of_the_same_configuration_adds_rounds(tmp_path):
    def result(speed, round_):
        return {**_row("ours_dp", "cnn:8:clean", speed, 1.0), "round": round_}

    runner.write([result(10.0, 0), result(30.0, 1)], "first", "a", str(tmp_path), "a")
    runner.write([result(20.0, 0)], "second", "b", str(tmp_path), "b")
    results, _ = runner.combine(["a", "b"], str(tmp_path))
    assert [r["round"] for r in results] == [0, 1, 2]
    (median,) = runner.median_rounds(results)
    assert median["examples_per_cpu_second"] == 20.0 and median["rounds"] == 3
