"""Miniature of seed 001 Section 4 (experiments/private_robust) through the tuner CLI."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_private_robust_miniature(tmp_path, shared_data):
    out = tmp_path / "pr"
    cmd = [sys.executable, "-m", "tfdprobust.experiments.private_robust", f"--out={out}",
           f"--data_dir={shared_data}", "--optimizers=sgd,adam", "--clip_grid=0.1,1", "--lr_grid=2",
           "--adaptive_lr_grid=0.01", "--max_train=600", "--validation_examples=100", "--batch_size=100",
           "--val_steps=2", "--nondp_reference=false", "--target_epsilon=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["num_train_examples"] == 500 and results["sigma"] > 0
    for opt in ("sgd", "adam"):
        trials = [t for t in results["searches"][opt]["trials"] if t["dp"]]
        assert len(trials) == 2
        assert results["searches"][opt]["privacy"]["per_trial"]["epsilon"] == pytest.approx(2.0, rel=0.05)
    for name in ("landscapes.png", "pareto.png", "table.md"):
        assert (out / name).stat().st_size > 0
