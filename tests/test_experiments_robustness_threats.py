"""Miniature of seed 004 (experiments/robustness_threats): the entry point must not rot."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_robustness_threats_miniature(tmp_path, shared_data):
    out = tmp_path / "rt"
    cmd = [sys.executable, "-m", "tfdprobust.experiments.robustness_threats", f"--out={out}",
           f"--data_dir={shared_data}", "--max_train=300", "--max_test=200", "--epochs=1", "--num_examples=20",
           "--curvature_examples=4", "--sigmas=0.7", "--clips=3", "--corruptions=gaussian_noise,fog",
           "--verbose=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    trained = results["trained"]
    assert set(trained) == {"sgd", "dp", "dp_sigma0.7", "dp_clip3", "dp_clip3_noscale"}
    assert trained["sgd"]["epsilon"] is None and trained["dp"]["epsilon"] > 0
    # clipping at C=3 with noise std sigma (not sigma*C) is noise multiplier sigma/3: less private
    assert trained["dp_clip3_noscale"]["noise_multiplier"] == pytest.approx(1.3 / 3)
    assert trained["dp_clip3_noscale"]["epsilon"] > trained["dp_clip3"]["epsilon"]
    for name in ("fig2_fgsm.png", "fig3_sigma_clip.png", "fig4_iterations.png", "fig5_geometry.png",
                 "table1_pgd.md", "table2_corruptions.md"):
        assert (out / name).stat().st_size > 0
    assert "| 0.3 | 40 |" in (out / "table1_pgd.md").read_text()
