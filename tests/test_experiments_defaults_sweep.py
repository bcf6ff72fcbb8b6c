"""Miniature of the defaults sweep (experiments/defaults): the entry point must not rot."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_defaults_sweep_miniature(tmp_path, shared_data):
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "tfdprobust.experiments.defaults_sweep", f"--out={out}",
           "--dataset=mnist", f"--data_dir={shared_data}", f"--public_data_dir={shared_data}",
           "--max_train=300", "--max_test=100", "--max_robust_test=20", "--optimizers=sgd",
           "--batch_sizes=100", "--learning_rates=1,4", "--l2_clips=1", "--steps=2", "--eval_steps=2",
           "--trajectory_every=1", "--public_examples=32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert len(results["rows"]) == 2
    for row in results["rows"]:
        assert 0 <= row["clean_accuracy"] <= 1 and 0 <= row["robust_accuracy"] <= 1
        assert row["epsilon"] > 0 and row["noise_multiplier"] == 7.1 and row["steps"] in (3, 4)  # ~300 kept
        assert row["trajectory"]["steps"][0] == 0 and row["trajectory"]["steps"][-1] == row["steps"]
        assert "kmnist" in row["public"]  # the public batch comes from a disjoint source
    for name in ("table.md", "heatmap.png", "trajectories.png"):
        assert (out / name).stat().st_size > 0
    # a second run into the same folder refuses unless asked to regenerate
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "--overwrite" in again.stderr
