"""The tuner as a process: lock, real SIGKILL mid-trial then resume, --overwrite keeps the
ledger, and the portable scripts."""

import json
import os
import signal
import subprocess
import sys
import time

import dp_accounting
import pytest

from tfdprobust.tuning import privacy
from tfdprobust.tuning.lock import SearchLock
from tune_util import ROOT, data_dir, direct_epsilon, poisson_trial

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _flags(tuning_dir, *extra):
    flags = [f"--tuning_dir={tuning_dir}", "--noise=1.0", "--delta=1e-4", "--clip_grid=1", "--lr_grid=0.5,2",
             "--max_train=700", "--validation_examples=100", "--batch_size=100", "--public_examples=16",
             "--steps=1", "--val_steps=1", "--eval_steps=1", "--max_test=50", "--export_best=0",
             f"--ledger_dir={os.fspath(tuning_dir)}-ledger-store"]  # the search's own store, as tune_util's
    if data_dir():
        flags.append(f"--data_dir={data_dir()}")
    return [sys.executable, "-m", "tfdprobust.tune", *flags, *extra]


def _run(cmd, timeout=600):
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout, cwd=ROOT)


def _ledger_entries(tuning_dir):
    folder = os.path.join(tuning_dir, privacy.LEDGER_DIR)
    files = [f for f in os.listdir(folder) if f.endswith(".jsonl") and "retired" not in f] if os.path.isdir(folder) else []
    assert len(files) <= 1
    if not files:
        return []
    with open(os.path.join(folder, files[0])) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_second_tuner_on_a_locked_directory_is_refused_with_one_line(tmp_path):
    import types

    lock = SearchLock(types.SimpleNamespace(tuning_dir=str(tmp_path), project="search")).acquire()
    try:
        proc = _run(_flags(tmp_path), timeout=120)
    finally:
        lock.release()
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: --tuning_dir={tmp_path} --project=search is locked by another tuner (pid {os.getpid()}); wait "
        "for it to finish, or use another --project (for parallel workers use Keras Tuner's chief/worker mode)"]
    assert sorted(os.listdir(tmp_path)) == [".locks"]  # nothing else written


@pytest.mark.slow
def test_sigkill_mid_trial_resume_counts_it_and_overwrite_keeps_the_ledger(tmp_path):
    proc = subprocess.Popen(_flags(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=ROOT)
    deadline = time.time() + 400
    while time.time() < deadline and not any(e["kind"] == "dp_training" for e in _ledger_entries(tmp_path)):
        time.sleep(0.2)
    time.sleep(1.0)  # inside the first trial's training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(tmp_path / "search" / "trial_0000" / "result.json")  # it died mid-trial
    assert [e["kind"] for e in _ledger_entries(tmp_path)] == ["dp_training"]

    rerun = _run(_flags(tmp_path))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    kinds = [e["kind"] for e in _ledger_entries(tmp_path)]
    assert kinds.count("dp_training") == 3 and kinds.count("validation") == 2  # the killed one counts
    with open(tmp_path / "search" / "search_results.json") as f:
        out = json.load(f)
    assert len(out["trials"]) == 2
    n = out["num_train_examples"]  # about 600: per-example roles (tfdprobust.roles)
    events = [poisson_trial(n, 100, 1.0)] * 3 + [dp_accounting.GaussianDpEvent(10.0)] * 4
    assert out["guarantee"]["epsilon"] == pytest.approx(direct_epsilon(events, 1e-4), rel=1e-9)

    over = _run(_flags(tmp_path, "--overwrite"))
    assert over.returncode == 0, over.stderr[-3000:]
    assert "the ledger of this data set" in over.stdout and "is kept" in over.stdout
    kinds = [e["kind"] for e in _ledger_entries(tmp_path)]
    assert kinds.count("dp_training") == 5  # the three earlier executions still count
    with open(tmp_path / "search" / "search_results.json") as f:
        assert json.load(f)["guarantee"]["dp_trainings"] == 5

    # The same command without --overwrite resumes (search_config.json survived): report, exit 0.
    again = _run(_flags(tmp_path))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "GUARANTEE" in again.stdout and "trial 0000: R=" not in again.stdout
    assert [e["kind"] for e in _ledger_entries(tmp_path)].count("dp_training") == 5


def test_scripts_are_portable_and_fail_loudly(tmp_path):
    scripts = [os.path.join(ROOT, "experiments", "tuning", "distributed", "run_local_cluster.sh"),
               os.path.join(ROOT, "experiments", "tuning", "check_tensorboard.sh")]
    for path in scripts:
        with open(path) as f:
            text = f.read()
        assert "/work/" not in text and "venv" not in text, path
    env = dict(ENV, PYTHON=sys.executable, LOGS=str(tmp_path / "logs"), KERASTUNER_ORACLE_PORT="18765")
    # Every role fails on a bad flag: the script must exit non-zero.
    proc = subprocess.run(["bash", scripts[0], "--noise=nan"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=str(tmp_path))
    assert proc.returncode != 0 and "chief exit 2" in proc.stdout, proc.stdout + proc.stderr
    proc = subprocess.run(["bash", scripts[1], str(tmp_path / "missing")], capture_output=True, text=True,
                          env=env, timeout=60, cwd=str(tmp_path))
    assert proc.returncode == 2 and "is not a folder" in proc.stderr
