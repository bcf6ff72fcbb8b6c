"""The CIFAR-10 CLI: DP training of ResNet-20 on CIFAR-shaped data, end to end.

CIFAR-10 cannot be downloaded offline, so the data are synthetic files in CIFAR-10's exact
python-pickle layout (random pixels; see ``conftest.write_cifar_batches``): what is tested
is the path (raw loader -> functional fast path -> DP step -> accounting -> export), not
accuracy.
"""

import glob
import json
import os
import subprocess
import sys

import dp_accounting
import pytest

from tfdprobust import clipping, diagnostics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _private_keys(tree, path=""):
    from test_experiments_mnist import _private_batch_keys  # one key list for every CLI

    return _private_batch_keys(tree, path)


@pytest.mark.slow  # ~1-2 min on an idle 2-core machine (tracing ResNet-20's step dominates)
def test_dp_resnet20_runs_through_the_cli_with_adaptive_clipping_and_dp_adambc(tmp_path, cifar_dir):
    env = {**os.environ, "PYTHONPATH": REPO}  # this checkout, not an installed copy
    proc = subprocess.run(
        [sys.executable, "-m", "tfdprobust.experiments.cifar10", f"--data_dir={cifar_dir}", "--batch_size=20",
         "--noise=1.0", "--clipping=adaptive", "--optimizer=dp_adambc", "--learning_rate=0.001",
         "--groups=8", f"--export_dir={tmp_path}/out", "--run_name=r20", f"--tensorboard_dir={tmp_path}/tb",
         "--verbose=0"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "time and memory" in proc.stdout and "NOT covered by epsilon" in proc.stdout, proc.stdout
    results = json.loads((tmp_path / "out" / "r20.json").read_text())
    meta = json.loads((tmp_path / "out" / "r20" / "metadata.json").read_text())
    assert results["model"]["name"] == "resnet20" and results["num_train_examples"] == 60
    assert "cifar-10-batches-py" in results["data"]["train"]
    # epsilon is that of the event the run performed: 3 Poisson steps, each composing the
    # gradient Gaussian and the noised count (B/20 = 1 std, multiplier 2)
    q = 20 / 60
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(1.0), dp_accounting.GaussianDpEvent(2.0)])), 3)
    expected = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-5)
    assert results["steps"] == 3 and abs(results["epsilon"] - expected) < 1e-9
    assert results["clipping_settings"]["count_noise_multiplier"] == clipping.count_noise_multiplier(1.0) == 2.0
    # diagnostics and time/memory: in the run JSON, under keys that say what they are
    diag = results[diagnostics.RESULT_KEY]
    assert "NOT covered by epsilon" in diag["note"] and diag["steps"] == 3
    assert 0.0 <= diag["diag_clipped_fraction"]["mean"] <= 1.0 and diag["clip_bound"]["first"] == 1.0
    res = results["resources"]
    assert len(res["epoch_seconds"]) == 1 and res["examples_per_second"] > 0 and res["peak_host_rss_mb"] > 100
    # ... and never in the export's metadata
    assert diagnostics.RESULT_KEY not in meta and "resources" not in meta
    assert not _private_keys(meta)
    assert set(_private_keys(results)) == {f"{diagnostics.RESULT_KEY}.{k}" for k in diagnostics.PRIVATE_KEYS}
    assert glob.glob(str(tmp_path / "tb" / "r20" / "events.out.tfevents.*"))


def test_compare_rejects_an_unknown_entry(tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO}
    proc = subprocess.run([sys.executable, "-m", "tfdprobust.experiments.cifar10", "--compare=dp_lion",
                           f"--export_dir={tmp_path}"], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "dp_lion" in proc.stderr and proc.stderr.count("\n") == 1
