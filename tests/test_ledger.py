"""One privacy budget per data set: the user-level ledger, its composition against
dp_accounting directly, concurrent appends, --budget, and python -m tfdprobust.budget."""

import json
import math
import multiprocessing
import os
import subprocess
import sys

import dp_accounting
import pytest
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from tfdprobust import accounting, ledger
from tfdprobust.errors import UsageError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ENV = {**os.environ, "PYTHONPATH": ROOT, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _direct(events, delta, kind="rdp"):
    """Composes ``events`` with dp_accounting directly (no tfdprobust code)."""
    acc = (rdp_privacy_accountant.RdpAccountant() if kind == "rdp"
           else pld_privacy_accountant.PLDAccountant())
    acc.compose(dp_accounting.ComposedDpEvent(list(events)))
    return acc.get_epsilon(delta)


def _poisson(n, b, sigma, steps):
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(b / n, dp_accounting.GaussianDpEvent(sigma)), steps)


def test_default_store_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(ledger.ENV, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert ledger.default_dir() == str(tmp_path / "xdg" / "tfdprobust")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ledger.default_dir() == str(tmp_path / "home" / ".local" / "share" / "tfdprobust")
    assert ledger.resolve_dir(str(tmp_path / "given")) == str(tmp_path / "given")


def test_composition_equals_dp_accounting_directly(tmp_path):
    book = ledger.DataLedger(str(tmp_path), "fp")
    spec = accounting.AccountingSpec(num_examples=600, batch_size=100, epochs=2, noise_multiplier=1.1, delta=1e-5)
    book.append(ledger.spec_entry(spec, **ledger.who("training", "a")))
    book.append(ledger.training_entry("poisson", 500, 50, 7, 0.9, search="s"))
    book.append(ledger.validation_entry(2, 10.0))
    events = [_poisson(600, 100, 1.1, spec.total_steps), _poisson(500, 50, 0.9, 7),
              dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(10.0), 2)]
    for kind in ("rdp", "pld"):
        assert ledger.composed_epsilon(book.entries(), 1e-5, kind) == pytest.approx(
            _direct(events, 1e-5, kind), rel=1e-9)


def _append_many(args):
    directory, worker = args
    book = ledger.DataLedger(directory, "fp")
    for i in range(50):
        book.append(ledger.validation_entry(1, 10.0, worker=worker, i=i))


def test_concurrent_appends_lose_and_interleave_nothing(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        pool.map(_append_many, [(str(tmp_path), w) for w in range(4)])
    entries = ledger.DataLedger(str(tmp_path), "fp").entries()  # json.loads of every line
    assert sorted((e["worker"], e["i"]) for e in entries) == [(w, i) for w in range(4) for i in range(50)]


def test_budget_refuses_before_writing_and_accepts_within(tmp_path):
    spec = accounting.AccountingSpec(num_examples=600, batch_size=100, epochs=2, noise_multiplier=1.1, delta=1e-5)
    one = accounting.epsilon(spec)
    two = _direct([accounting.dp_event(spec)] * 2, 1e-5)
    budget = (one + two) / 2  # room for one run, not for two
    book = ledger.record_training(spec, "fp", str(tmp_path), budget, "api")
    assert len(book.entries()) == 1
    with pytest.raises(UsageError, match=r"^--budget=.*would take everything released about this data set"):
        ledger.record_training(spec, "fp", str(tmp_path), budget, "api")
    assert len(book.entries()) == 1  # refused: nothing written
    ledger.record_training(spec, "fp", str(tmp_path), None, "api")  # no budget: recorded
    assert len(book.entries()) == 2


def _tiny_search(tuning_dir, store):
    from tune_util import tiny_config

    from tfdprobust.tuning import search

    cfg = tiny_config(tuning_dir, clip_grid=(1.0,), lr_grid=(1.0,), run_kw={"ledger_dir": str(store)})
    search.run_search(cfg, log=lambda m: None)
    return cfg


@pytest.mark.integration
def test_two_searches_and_a_training_run_compose_into_one_budget(tmp_path, shared_data):
    store = tmp_path / "store"
    cfgs = [_tiny_search(tmp_path / "first", store), _tiny_search(tmp_path / "second", store)]
    train_argv = [sys.executable, "-m", "tfdprobust.experiments.mnist", f"--data_dir={shared_data}",
                  "--max_train=700", "--max_test=100", "--batch_size=100", "--epochs=1", "--attack=none", "--eps=0",
                  "--noise=1.0", "--learning_rate=0.4", "--verbose=0", f"--export_dir={tmp_path / 'out'}",
                  "--public_examples=16", f"--ledger_dir={store}",
                  "--delta=1e-4"]
    done = subprocess.run([*train_argv, "--run_name=third"], env=ENV, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    files = [f for f in os.listdir(store) if f.endswith(".jsonl")]
    assert len(files) == 1  # one data set, one ledger, whatever the folder or the command
    with open(store / files[0]) as f:
        entries = [json.loads(line) for line in f]
    sources = [e["source"] for e in entries if e["kind"] == "dp_training"]
    assert sources.count("tuner") == 2 and sources.count("training") == 1
    assert {e.get("tuning_dir") for e in entries if e["source"] == "tuner"} == {
        os.path.abspath(c.tuning_dir) for c in cfgs}
    # The independent composition: each recorded training and validation release rebuilt
    # from its parameters by dp_accounting alone.
    events = []
    for e in entries:
        if e["kind"] == "dp_training":
            events.append(_poisson(e["num_examples"], e["batch_size"], e["noise_multiplier"], e["steps"]))
            assert e["steps"] == math.ceil(e["num_examples"] / e["batch_size"])
        elif e["kind"] == "validation":
            events.append(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(e["noise"]), e["releases"]))
    rdp, pld = _direct(events, 1e-4, "rdp"), _direct(events, 1e-4, "pld")

    shown = subprocess.run([sys.executable, "-m", "tfdprobust.budget", f"--data_dir={shared_data}",
                            f"--ledger_dir={store}", "--delta=1e-4"], env=ENV, capture_output=True, text=True,
                           timeout=600, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-3000:]
    total = [line for line in shown.stdout.splitlines() if line.startswith("total:")]
    assert total == [f"total: ({rdp:.4g}, 0.0001)-DP (RDP), ({pld:.4g}, 0.0001)-DP (PLD) for everything recorded "
                     "about this data set"]
    assert sum(1 for line in shown.stdout.splitlines() if "DP training:" in line) == 3

    # A fourth run whose composition would exceed the budget: refused before any training.
    refused = subprocess.run([*train_argv, "--run_name=fourth", f"--budget={rdp * 1.01:.6g}"], env=ENV, capture_output=True, text=True,
                             timeout=600, cwd=tmp_path)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --budget=")
    assert "epoch(s) x" not in refused.stdout  # training.train's first line never printed
    with open(store / files[0]) as f:
        assert len(f.readlines()) == len(entries)  # nothing recorded
