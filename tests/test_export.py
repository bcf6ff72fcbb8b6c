"""SavedModel export: round trip, signature, metadata, atomicity."""

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import export
from tfdprobust.errors import UsageError
from tfdprobust.models import ModelConfig, build_model
from tfdprobust.normalization import update_public_statistics


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_images):
    x, _, public = tiny_images
    net = build_model(ModelConfig(norm="public_bn"), seed=7)
    update_public_statistics(net, tf.constant(public))
    path = export.export_model(net, str(tmp_path_factory.mktemp("exp") / "run"), {"epsilon": 1.5, "delta": 1e-5})
    return net, path, x


def test_saved_model_signature_returns_logits(exported):
    net, path, x = exported
    serve = tf.saved_model.load(path).signatures["serving_default"]
    out = serve(images=tf.constant(x))["logits"].numpy()
    np.testing.assert_allclose(out, net(x).numpy(), rtol=1e-5, atol=1e-5)
    assert not np.allclose(tf.reduce_sum(tf.nn.softmax(out), -1), out.sum(-1))  # logits, not probabilities


def test_keras_reload_carries_public_statistics(exported):
    net, path, x = exported
    reloaded = tf.keras.models.load_model(path)
    np.testing.assert_allclose(reloaded(x).numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)
    assert not reloaded.optimizer or "DP" not in type(reloaded.optimizer).__name__


def test_metadata_sits_beside_the_model(exported):
    _, path, _ = exported
    assert export.load_metadata(path) == {"epsilon": 1.5, "delta": 1e-5}
    assert os.path.exists(os.path.join(path, "saved_model.pb"))


def test_existing_export_is_not_overwritten(exported):
    net, path, _ = exported
    with pytest.raises(UsageError, match="already exists; choose another --export_dir"):
        export.export_model(net, path, {})


def test_interrupted_export_leaves_nothing(tmp_path, monkeypatch, tiny_images):
    net = build_model(ModelConfig(norm="none"))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export, "write_json_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        export.export_model(net, str(tmp_path / "run"), {"epsilon": 1.0})
    assert os.listdir(tmp_path) == []


def test_json_writes_are_atomic(tmp_path):
    target = tmp_path / "r.json"
    export.write_json_atomic(str(target), {"a": np.float32(1.5)})
    assert json.loads(target.read_text()) == {"a": 1.5}
    with pytest.raises(TypeError):
        export.write_json_atomic(str(target), {"bad": object.__new__(type("X", (), {"__str__": None}))})
    assert json.loads(target.read_text()) == {"a": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_json_is_strict(tmp_path):
    target = tmp_path / "r.json"
    export.write_json_atomic(str(target), {"eps": float("inf"), "acc": [np.float32("nan"), 0.5]})
    text = target.read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"eps": None, "acc": [None, 0.5]}


def test_a_model_with_non_finite_weights_is_never_exported(tmp_path):
    net = build_model(ModelConfig(norm="none"))
    net.trainable_variables[0].assign(tf.fill(net.trainable_variables[0].shape, np.nan))
    with pytest.raises(UsageError, match="non-finite weights"):
        export.export_model(net, str(tmp_path / "run"), {})
    assert os.listdir(tmp_path) == []


def test_exports_follow_the_users_umask(exported):
    _, path, _ = exported
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o777 & ~mask
    assert os.stat(os.path.join(path, "metadata.json")).st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.integration
def test_a_killed_export_is_cleaned_by_the_next_one(tmp_path):
    """SIGKILL mid-export leaves a temporary folder; the next export into the folder removes it."""
    code = f"""
import os, signal
from tfdprobust import export
from tfdprobust.models import ModelConfig, build_model
net = build_model(ModelConfig(norm="none"))
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
export.write_json_atomic = die
export.export_model(net, {str(tmp_path / "killed")!r}, {{}})
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    leftovers = os.listdir(tmp_path)
    assert not (tmp_path / "killed").exists() and len(leftovers) == 1 and ".tmp-" in leftovers[0]
    export.export_model(build_model(ModelConfig(norm="none")), str(tmp_path / "next"), {})
    assert os.listdir(tmp_path) == ["next"]


def test_unwritable_destination_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UsageError, match="--export_dir"):
        export.check_destination(str(blocker / "run"))


# ----------------------------------------------------------------------------- claims and stale temporaries
def _dead_pid():
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          timeout=60)
    return int(proc.stdout)


def test_a_claim_is_exclusive_until_released(tmp_path):
    out = str(tmp_path / "exports" / "same")
    claim = export.Claim(out).acquire()
    assert open(claim.path).read() == str(os.getpid())
    with pytest.raises(UsageError, match=f"{out} is claimed by another run .*another --run_name, or wait"):
        export.Claim(out).acquire()
    claim.release()
    assert not os.path.exists(claim.path)
    export.Claim(out).acquire().release()
    assert not (tmp_path / "exports").exists()  # the folder the claim created, empty again, is removed


def test_the_claim_of_a_killed_run_is_taken_over(tmp_path):
    out = str(tmp_path / "same")
    code = (f"import os, signal\nfrom tfdprobust import export\nexport.Claim({out!r}).acquire()\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert os.listdir(tmp_path) == [".same.claim"]  # left behind by SIGKILL, but no longer locked
    assert export.clean_stale_temporaries(str(tmp_path)) == [".same.claim"] and not os.listdir(tmp_path)
    claim = export.Claim(out).acquire()  # and a run takes a stale claim over in any case
    claim.release()


def test_a_run_start_cleans_the_temporaries_of_dead_processes(tmp_path):
    """What kill -9 during an export leaves (an empty hidden ``.<name>.tmp-<pid>-*`` folder, a
    ``.tmp-<pid>-*.json``) is removed when the next run claims its destination; temporaries
    of live processes and other files stay."""
    dead, live = _dead_pid(), os.getpid()
    (tmp_path / f".run.tmp-{dead}-abc123").mkdir()
    (tmp_path / f".tmp-{dead}-xyz.json").write_text("{")
    (tmp_path / f".other.tmp-{live}-q1").mkdir()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept.json").write_text("{}")
    claims = export.claim_destinations(str(tmp_path), "new")
    try:
        assert sorted(os.listdir(tmp_path)) == [".new.claim", f".other.tmp-{live}-q1", "kept", "kept.json"]
    finally:
        for claim in claims:
            claim.release()
    assert sorted(os.listdir(tmp_path)) == [f".other.tmp-{live}-q1", "kept", "kept.json"]


def test_a_claimed_destination_that_was_exported_meanwhile_is_refused(tmp_path):
    (tmp_path / "done").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        export.claim_destinations(str(tmp_path), "done")
    assert os.listdir(tmp_path) == ["done"]  # the claim was released and removed


@pytest.mark.integration
def test_two_runs_with_one_run_name_cannot_both_export(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, "-m", "tfdprobust.experiments.mnist", "--max_train=200", "--max_test=50",
            "--batch_size=20", "--epochs=2", "--attack=none", "--eps=0", "--noise=1", "--learning_rate=0.5",
            "--norm=group", "--verbose=0", f"--export_dir={tmp_path}/out", "--run_name=same"]
    env = {**os.environ, "PYTHONPATH": root}
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              env=env) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    loser = next(err for p, (_, err) in zip(procs, outputs) if p.returncode == 2)
    lines = [line for line in loser.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("error: ") and os.path.join(str(tmp_path), "out", "same") in lines[0]
    assert "--run_name" in lines[0]
    assert sorted(os.listdir(tmp_path / "out")) == ["same", "same.json"]
    meta = json.loads((tmp_path / "out" / "same" / "metadata.json").read_text())
    assert meta["steps"] == 2 * math.ceil(meta["num_train_examples"] / 20)  # --max_train: a binomial N
