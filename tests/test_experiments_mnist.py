"""The MNIST experiment CLI: a smoke run on tiny data and one-line errors for bad flags."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from tfdprobust import accounting, diagnostics
from mnist_cli_util import run_main  # noqa: F401  (fixture)

# Subprocesses must import this checkout's package, not another installed copy.
ENV = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}

# Batches of 100 instead of the default 1000: the default lr 4 would make the noise step
# (lr * sigma * C / B) ten times larger, and the divergence guard would rightly stop the run.
TINY = ["--max_train=300", "--max_test=100", "--batch_size=100", "--learning_rate=0.4", "--steps=2",
        "--eval_steps=3", "--public_examples=32"]


@pytest.mark.integration
def test_cli_smoke_run_trains_evaluates_and_exports(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tfdprobust.experiments.mnist", *TINY, f"--export_dir={tmp_path}",
         "--run_name=smoke"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for needle in ("clean test accuracy", "robust accuracy", "epsilon", "Poisson", "SavedModel"):
        assert needle in out, out
    # the live training-batch figures are plainly marked as outside the guarantee
    assert "diag_* figures are statistics of the private training batches and are NOT covered by epsilon" in out
    model_dir = tmp_path / "smoke"
    results = json.loads((tmp_path / "smoke.json").read_text())
    meta = json.loads((model_dir / "metadata.json").read_text())
    assert meta["epsilon"] == results["epsilon"] and 0 < results["epsilon"] < float("inf")
    assert meta["noise_multiplier"] == 7.1 and meta["sampling"] == "poisson" and meta["l2_clip"] == 1.0
    assert meta["learning_rate"] == 0.4 and meta["adv_weight"] == 0.5
    assert 0.0 <= meta["clean_accuracy"] <= 1.0 and 0.0 <= meta["robust_accuracy"] <= 1.0
    n = meta["num_train_examples"]  # --max_train keeps each example by its own hash: about 300
    assert abs(n - 300) <= 5 * 300 ** 0.5 and "tensorflow" in meta["versions"]
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    assert serve(images=tf.zeros([2, 28, 28, 1]))["logits"].shape == (2, 10)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temporary leftovers
    # nothing computed on private training batches is published (epsilon does not cover it);
    # the run JSON holds the clipping diagnostics only under a key that says so
    assert not _private_batch_keys(meta) and diagnostics.RESULT_KEY not in meta
    assert {k.split(".")[0] for k in _private_batch_keys(results)} == {diagnostics.RESULT_KEY}
    assert meta["private"] is True and meta["adjacency"] == "add-or-remove-one"
    # the accountant composed exactly the steps the optimizer took: 1 epoch of ceil(N/100)
    spec = accounting.AccountingSpec(n, 100, 1, 7.1, 1e-5, "poisson")
    assert meta["steps"] == spec.total_steps == -(-n // 100) and meta["epsilon"] == pytest.approx(accounting.epsilon(spec))
    assert "add-or-remove-one adjacency" in meta["guarantee"] and "OS entropy" in meta["guarantee"]
    assert meta["data_config"]["public_dataset"] == "kmnist" and "scikit-learn" in meta["data"]["public"]


def _private_batch_keys(tree, path=""):
    """Keys of a metadata tree that hold statistics of the private training batches."""
    found = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            # diag_*: the clipping diagnostics (tfdprobust.diagnostics.PRIVATE_KEYS)
            if (key in {"history", "loss", "acc", "adv_acc", "dropped"} or key.startswith("train_acc")
                    or key.startswith("diag_")):
                found.append(path + key)
            found += _private_batch_keys(value, f"{path}{key}.")
    return found


@pytest.mark.integration
def test_insecure_noise_run_says_it_is_not_private(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tfdprobust.experiments.mnist", *[a for a in TINY if not a.startswith("--steps=")],
         "--attack=none", "--max_train=200",
         f"--export_dir={tmp_path}", "--run_name=insecure", "--insecure_reproducible_noise"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "NOT PRIVATE" in proc.stdout
    meta = json.loads((tmp_path / "insecure" / "metadata.json").read_text())
    assert meta["private"] is False and meta["epsilon"] is None and "NOT PRIVATE" in meta["guarantee"]


def test_help_lists_flags_with_defaults():
    proc = subprocess.run([sys.executable, "-m", "tfdprobust.experiments.mnist", "--helpshort"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    text = proc.stdout + proc.stderr
    for flag in ("--noise", "--l2_clip", "--epochs", "--attack", "--eps", "--public_dataset",
                 "--target_epsilon", "--export_dir", "--sampling"):
        assert flag in text
    assert "(default: '7.1')" in text


@pytest.mark.parametrize("argv,needle", [
    (["--noise=-1"], "--noise"),
    (["--l2_clip=0"], "--l2_clip"),
    (["--batch_size=6000"], "--batch_size"),
    (["--delta=0.01"], "--delta"),
    (["--dataset=imagenet"], "--dataset"),
    (["--eps=1.5"], "eps"),
    (["--attack=deepfool"], "--attack"),
    (["--data_dir=/does/not/exist"], "--data_dir"),
    (["--target_epsilon=1e-9", "--epochs=50"], "--target_epsilon"),
    (["--norm=batch"], "--norm"),
    (["--sampling=random"], "--sampling"),
    (["--l2_clip=inf"], "--l2_clip"),
    (["--noise=inf"], "--noise"),
    (["--learning_rate=1e30"], "--learning_rate"),
    (["--seed=-1"], "--seed"),
    (["--accountant=gdp"], "--accountant"),
    (["--dp_path=tf_privacy"], "--dp_path"),
    (["--public_dataset=mnist"], "--public_from_private"),
    (["--nodp", "--target_epsilon=1"], "--target_epsilon"),
    (["--attack=none", "--adv_weight=0.7"], "--adv_weight"),
    (["--norm=none", "--public_from_private"], "--public_from_private"),
    (["--run_name=taken"], "already exists"),
    (["--strategy=tpu"], "--strategy"),
    (["--strategy=mirrored", "--sampling=shuffle"], "--sampling=poisson"),
    (["--strategy=multi_worker"], "TF_CONFIG"),
])
def test_bad_input_is_one_line_naming_the_flag(run_main, tmp_path, argv, needle):
    if "--run_name=taken" in argv:
        (tmp_path / "out" / "taken").mkdir(parents=True)
    code, err = run_main(*argv)
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    written = sorted(p.name for p in (tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else []
    assert written in ([], ["taken"])  # nothing half-written


@pytest.mark.parametrize("argv,needle", [(["--no_such_flag=1"], "no_such_flag"), (["--epochs=two"], "--epochs"),
                                         (["stray"], "stray")])
def test_unparsable_flags_exit_2_with_one_line_and_no_tensorflow(argv, needle):
    proc = subprocess.run([sys.executable, "-m", "tfdprobust.experiments.mnist", *argv],
                          capture_output=True, text=True, timeout=120, env=ENV)
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_help_does_not_import_tensorflow():
    code = ("import sys; sys.argv = ['mnist', '--helpshort']\n"
            "import tfdprobust.experiments.mnist as m\n"
            "assert 'tensorflow' not in sys.modules, 'TF imported for --help'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=ENV)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.integration
def test_a_diverging_run_stops_with_one_line_and_exports_nothing(run_main, tmp_path):
    code, err = run_main("--max_train=300", "--max_test=100", "--batch_size=100", "--epochs=4",
                         "--attack=none", "--eps=0", "--public_examples=32", "--learning_rate=1e5",
                         "--l2_clip=10")
    lines = [line for line in err.strip().splitlines() if line]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: training diverged") and "--learning_rate" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
