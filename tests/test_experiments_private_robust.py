"""Miniature of seed 001 Section 4 (experiments/private_robust): searches through the tuner
CLI, table runs at two epsilons, the attack tables and the Pareto trajectories."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_private_robust_miniature(tmp_path, shared_data):
    out = tmp_path / "pr"
    cmd = [sys.executable, "-m", "tfdprobust.experiments.private_robust", f"--out={out}",
           "--dataset=mnist", f"--data_dir={shared_data}", f"--public_data_dir={shared_data}",
           "--optimizers=sgd,adam", "--clip_grid=0.1,1", "--lr_grid=2",
           "--adaptive_lr_grid=0.01", "--max_train=600", "--validation_examples=100", "--batch_size=100",
           "--val_steps=2", "--nondp_reference=true", "--target_epsilon=2", "--table_epsilons=2,8",
           "--table_eps_linf=0,0.1", "--table_eps_l2=0,1", "--eval_examples=20", "--trajectory_every=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    # per-example roles (tfdprobust.roles): about 600 kept, about 100 of them validating
    assert abs(results["num_train_examples"] - 500) <= 5 * 600 ** 0.5 and results["sigma"] > 0
    for opt in ("sgd", "adam"):
        trials = [t for t in results["searches"][opt]["trials"] if t["dp"]]
        assert len(trials) == 2
        assert results["searches"][opt]["per_training_epsilon"] == pytest.approx(2.0, rel=0.05)
        # the search's own guarantee composes its trainings and noisy counts: above one training's
        assert results["searches"][opt]["guarantee"]["epsilon"] > 2.0
    # one guarantee for the folder: both searches and the DP table runs, composed
    g = results["guarantee"]
    table_dp = [r for r in results["table_runs"] if r["dp"]]
    assert (g["search_trainings"], g["extra_releases"]) == (4, len(table_dp)) and len(table_dp) >= 2
    assert g["epsilon"] > max(results["searches"][o]["guarantee"]["epsilon"] for o in ("sgd", "adam"))
    assert "(" in g["statement"] and "table trainings" in (out / "table1_pgd.md").read_text()
    # the searches were given the real folders, so rerunning the command resumes them
    config = json.loads((out / "sgd" / "search_config.json").read_text())
    assert "tfdprobust-data-" not in json.dumps(config)
    runs = {r["name"]: r for r in results["table_runs"]}
    dp_runs = [r for r in runs.values() if r["dp"]]
    # each table epsilon is met by its recalibrated sigma (600 training images, 1 epoch)
    for r in dp_runs:
        assert r["epsilon"] == pytest.approx(r["target_epsilon"], rel=0.05)
    assert {r["target_epsilon"] for r in dp_runs} == {2.0, 8.0}
    assert any(not r["dp"] for r in runs.values())
    for r in runs.values():
        t = r["trajectory"]
        assert len(t["accuracy"]) == len(t["robust_accuracy"]) >= 3
        # robust accuracy never exceeds natural accuracy on the same images
        assert all(b <= a + 1e-9 for a, b in zip(t["accuracy"], t["robust_accuracy"]))
    for name in ("landscapes.png", "pareto.png", "landscape_table.md", "table1_pgd.md", "table2_attacks.md"):
        assert (out / name).stat().st_size > 0
    assert "APGD-l2" in (out / "table2_attacks.md").read_text()


def test_pareto_front_matches_brute_force():
    """The front helper agrees with a direct dominance check on random points."""
    import numpy as np

    # common.py defines no absl flags, so this import is safe after other entry points' flags
    from tfdprobust.experiments.common import pareto_front

    rng = np.random.default_rng(0)
    pts = [tuple(p) for p in rng.random((60, 2)).round(2)]
    front = set(pareto_front(pts))
    for i, (a, b) in enumerate(pts):
        dominated = any(c >= a and d >= b and (c, d) != (a, b) for c, d in pts)
        assert (i in front) == (not dominated)
