"""Miniature of seed 000's table (experiments/public_norm): the entry point must not rot."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_public_norm_miniature(tmp_path, shared_data):
    out = tmp_path / "pn"
    cmd = [sys.executable, "-m", "tfdprobust.experiments.public_norm", f"--out={out}",
           "--dataset=mnist", f"--data_dir={shared_data}", f"--public_data_dir={shared_data}",
           f"--mnist_data_dir={shared_data}", "--rows=mnist_1epoch,mnist_fullsteps", "--seeds=0",
           "--max_train=300", "--max_test=100", "--max_robust_test=20", "--batch_size=100", "--steps=2",
           "--eval_steps=2", "--full_size=600", "--public_examples=32", "--trajectory_every=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads((out / "results.json").read_text())["runs"]
    assert {(r["row"], r["norm"]) for r in runs} == {
        ("mnist_1epoch", "public_bn"), ("mnist_1epoch", "none"),
        ("mnist_fullsteps", "public_bn"), ("mnist_fullsteps", "none")}
    by = {(r["row"], r["norm"]): r for r in runs}
    # about 300 examples kept by --max_train (per example, tfdprobust.roles): 3 or 4 steps an epoch
    assert by[("mnist_1epoch", "public_bn")]["steps"] in (3, 4)
    assert by[("mnist_fullsteps", "none")]["steps"] == 2 * by[("mnist_1epoch", "none")]["steps"]
    # more steps on the same data cost more privacy
    assert by[("mnist_fullsteps", "none")]["epsilon"] > by[("mnist_1epoch", "none")]["epsilon"]
    assert "kmnist" in by[("mnist_1epoch", "public_bn")]["public"] and by[("mnist_1epoch", "none")]["public"] is None
    for name in ("table.md", "accuracy.png", "loss.png"):
        assert (out / name).stat().st_size > 0
