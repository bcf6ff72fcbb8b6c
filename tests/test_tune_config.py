"""Tuner input checks: grids, flags, combinations, destinations; nothing written on bad input."""

import os
import subprocess
import sys
import time

import pytest

from tfdprobust.errors import UsageError
from tfdprobust.tuning import config as config_lib
from tune_util import ROOT, tiny_config


@pytest.mark.parametrize("text,flag,fragment", [
    ("", "--clip_grid", "--clip_grid is empty"),
    ("0.1,0,1", "--clip_grid", "--clip_grid must hold only finite values > 0"),
    ("-1", "--lr_grid", "--lr_grid must hold only finite values > 0"),
    ("1,inf", "--lr_grid", "--lr_grid must hold only finite values > 0"),
    ("a,b", "--lr_grid", "--lr_grid='a,b' is not a list of numbers"),
    ("1,1", "--lr_grid", "--lr_grid has duplicate values"),
    ("logspace:0:1:3", "--clip_grid", "logspace needs positive ends"),
    ("logspace:1:inf:3", "--clip_grid", "logspace needs positive ends"),
])
def test_bad_grids_name_the_flag(text, flag, fragment):
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        config_lib.parse_grid(text, flag)


def test_bad_config_fields(tmp_path):
    with pytest.raises(UsageError, match="--objective='accuracy' is unknown"):
        tiny_config(tmp_path, objective="accuracy")
    with pytest.raises(UsageError, match="--tuner='annealing' is unknown"):
        tiny_config(tmp_path, tuner="annealing")
    with pytest.raises(UsageError, match="--tuner=random needs --max_trials"):
        tiny_config(tmp_path, tuner="random")
    with pytest.raises(UsageError, match="--validation='private' is unknown"):
        tiny_config(tmp_path, validation="private")
    with pytest.raises(UsageError, match="--val_noise must be a finite number > 0"):
        tiny_config(tmp_path, val_noise=float("inf"))
    with pytest.raises(UsageError, match="--nondp_lr_grid is set but --nondp_reference is off"):
        tiny_config(tmp_path, nondp_lr_grid=(0.5,))


def _cli(*flags, timeout=120):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "tfdprobust.tune", *flags], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)
    return proc, time.time() - start


@pytest.mark.parametrize("flags,expected", [
    (["--clip_grid=0.1,-1"], "error: --clip_grid must hold only finite values > 0, got -1"),
    (["--noise=inf"], "error: --noise must be a finite number, got inf"),
    (["--validation=public", "--val_noise=3"], "error: --val_noise=3 has no effect with --validation=public"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, flags, expected):
    target = tmp_path / "tuning"
    proc, seconds = _cli(*flags, f"--tuning_dir={target}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(expected), proc.stderr[-2000:]
    assert not target.exists()  # nothing written
    assert seconds < 20  # ~6 s here (TensorFlow's import); the brief asks for 10 s on an idle machine


@pytest.mark.integration
def test_data_errors_come_before_any_write_and_the_corrected_command_runs(tmp_path):
    from tfdprobust.tuning import search

    bad = tiny_config(tmp_path / "t", validation_examples=650)  # leaves < batch_size to train on
    with pytest.raises(UsageError, match="--validation_examples=650 leaves fewer than --batch_size"):
        search.run_search(bad, log=lambda m: None)
    assert not (tmp_path / "t").exists()
    good = tiny_config(tmp_path / "t")
    sd, ledger, plan = search.prepare(good, log=lambda m: None)  # checks only
    assert plan["remaining_trials"] == 4 and plan["epsilon"] > 0
    # Per-example roles (tfdprobust.roles): about 700 kept and 100 of them validating
    # (binomial; five standard deviations either way).
    assert abs(len(sd.train) + len(sd.validation) - 700) <= 5 * (700 * (1 - 700 / 5000)) ** 0.5
    assert abs(len(sd.validation) - 100) <= 5 * (100 * (1 - 100 / 700)) ** 0.5
    assert not (tmp_path / "t").exists()


def test_incompatible_tuning_dir(tmp_path):
    import json

    cfg = tiny_config(tmp_path)
    os.makedirs(os.path.join(cfg.project_dir, "trial_0000"))
    with open(os.path.join(cfg.project_dir, config_lib.CONFIG_FILE), "w") as f:
        json.dump(cfg.identity(), f)
    with pytest.raises(UsageError, match=r"--tuning_dir=.* holds an incompatible search \(--lr_grid"):
        config_lib.check_tuning_dir(tiny_config(tmp_path, lr_grid=(0.5, 4.0)))
    with pytest.raises(UsageError, match=r"--validation: stored 'noisy_count', now 'public'"):
        config_lib.check_tuning_dir(tiny_config(tmp_path, validation="public"))
    config_lib.check_tuning_dir(tiny_config(tmp_path, nondp_reference=True))  # same search: fine
    with pytest.raises(UsageError, match="--new_ledger: .* already holds trials .* pass --overwrite too"):
        config_lib.check_tuning_dir(tiny_config(tmp_path, new_ledger=True))
    config_lib.check_tuning_dir(tiny_config(tmp_path, new_ledger=True, overwrite=True))
    foreign = tmp_path / "other" / "search"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("not a search")
    with pytest.raises(UsageError, match="--tuning_dir=.*is not a tfdprobust search"):
        config_lib.check_tuning_dir(tiny_config(tmp_path / "other"))
    # A stored search that never started a trial may be corrected freely.
    os.rmdir(os.path.join(cfg.project_dir, "trial_0000"))
    config_lib.check_tuning_dir(tiny_config(tmp_path, lr_grid=(0.5, 4.0)))
