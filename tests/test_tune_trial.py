"""One trial: independent secret noise per trial, released figures only."""

import numpy as np
import pytest

from tfdprobust.data import DataConfig, ImageData
from tfdprobust.models import ModelConfig
from tfdprobust.train_step import DPConfig, TrainConfig
from tfdprobust.tuning import privacy, trial
from tune_util import tiny_config


def _search_data():
    rng = np.random.default_rng(0)
    x = rng.random((200, 28, 28, 1), dtype=np.float32)
    y = (np.arange(200) % 10).astype(np.int64)
    train = ImageData(x, y, "mnist", "random")
    val = ImageData(x[:20], y[:20], "mnist", "random")
    return trial.SearchData(train, val, val, None, (), {}, False, "f")


def _update(cfg, sd, r, lr, tmp_path):
    """The weight update of one tuner trial (run exactly as the tuner runs it), divided by eta*R."""
    from tfdprobust import models

    run_cfg = trial.trial_config(cfg, r, lr)
    ledger = privacy.Ledger(str(tmp_path), "f")
    net, record, _ = trial.run_one(cfg, run_cfg, sd, ledger, {"trial_id": f"{r}-{lr}"}, log=lambda m: None)
    init = models.build_model(ModelConfig(norm="none", input_shape=(28, 28, 1)), seed=cfg.run.seed)
    delta = np.concatenate([(a - b).ravel() for a, b in zip(net.get_weights(), init.get_weights())])
    return delta / (lr * r), record


def _cfg(tmp_path, insecure):
    run_kw = dict(train=TrainConfig(attack=None, optimizer="sgd", dp=DPConfig(noise_multiplier=1000.0)),
                  model=ModelConfig(norm="none"), data=DataConfig(public_examples=0), delta=1e-3,
                  insecure_reproducible_noise=insecure)
    return tiny_config(tmp_path, objective="natural", val_attack=None, run_kw=run_kw)


@pytest.mark.integration
@pytest.mark.parametrize("insecure", [False, True])
def test_two_trials_noise_is_uncorrelated(tmp_path, insecure):
    """The issue's attack: with a shared noise draw the update of R=1 is 10x that of R=0.1 and
    subtracting them cancels the noise. sigma=1000 makes the noise dominate the update, so the
    correlation of the normalized updates is the correlation of the two trials' noise. The
    insecure (replayable) mode is the positive control: there the noise IS shared."""
    cfg = _cfg(tmp_path, insecure)
    sd = _search_data()
    a, rec_a = _update(cfg, sd, 0.1, 1.0, tmp_path)
    b, _ = _update(cfg, sd, 1.0, 1.0, tmp_path)
    corr = float(np.corrcoef(a, b)[0, 1])
    assert a.size > 20_000  # the CNN: 26,010 parameters
    if insecure:
        assert corr > 0.99
    else:
        assert abs(corr) < 0.05, corr
        # Released figures only: a noisy count (not an integer count) and its clipped accuracy.
        assert rec_a["val_natural_noisy_count"] % 1 != 0
        assert 0 <= rec_a["val_natural_accuracy"] <= 1
    entries = privacy.Ledger(str(tmp_path), "f").entries()
    assert [e["kind"] for e in entries] == ["dp_training", "validation"] * 2
