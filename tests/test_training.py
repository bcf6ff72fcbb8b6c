"""One run end to end, as a library call: secret noise per run, honest accounting."""

import dataclasses

import numpy as np
import pytest

from tfdprobust import data, run_config, runs, training
from tfdprobust.errors import UsageError
from tfdprobust.models import ModelConfig
from tfdprobust.train_step import DPConfig, TrainConfig


def _cfg(**kwargs):
    train = TrainConfig(attack=None, learning_rate=1.0, dp=DPConfig(l2_clip=1.0, noise_multiplier=100.0))
    return run_config.RunConfig.make(train=train, batch_size=kwargs.pop("batch_size", 32),
                                   model=kwargs.pop("model", ModelConfig(norm="group")), export_dir=None, verbose=0,
                                   **kwargs)


@pytest.fixture
def tiny_private(tiny_images):
    x, y, _ = tiny_images
    return data.ImageData(x, y, "toy", "32 random images")


def _update(cfg, private):
    """The weight change of one full-batch DP step (q = 1: every example, every step)."""
    trained = training.train(cfg, private, None, run_config.accounting_spec(cfg, len(private)),
                             log=lambda message: None)
    init = training.build_trainer(cfg, None, input_shape=private.x.shape[1:]).net
    return np.concatenate([(a - b).numpy().ravel()
                           for a, b in zip(trained.trainer.net.trainable_variables, init.trainable_variables)])


def test_two_trials_with_the_same_seed_get_uncorrelated_noise(tiny_private, tiny_dense_model):
    """What a tuner does: same data, same --seed, C = 0.1 vs C = 1. The old code reused one
    noise draw, so one update was 10x the other; subtracting them cancelled the noise."""
    cfg = _cfg(model=tiny_dense_model)
    small = dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, dp=dataclasses.replace(cfg.train.dp, l2_clip=0.1)))
    a, b = _update(small, tiny_private), _update(cfg, tiny_private)
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.05


def test_insecure_flag_replays_the_noise_and_says_so(tiny_private, tiny_dense_model):
    cfg = _cfg(model=tiny_dense_model, insecure_reproducible_noise=True)
    np.testing.assert_array_equal(_update(cfg, tiny_private), _update(cfg, tiny_private))
    assert "NOT PRIVATE" in run_config.guarantee(cfg, None)


def test_steps_taken_equal_the_steps_accounted(tiny_private, tiny_dense_model):
    cfg = _cfg(model=tiny_dense_model, batch_size=8, epochs=2)
    spec = run_config.accounting_spec(cfg, len(tiny_private))
    trained = training.train(cfg, tiny_private, None, spec, log=lambda message: None)
    assert trained.steps == spec.total_steps == 2 * trained.sampler.steps_per_epoch == 8
    assert int(trained.trainer.optimizer.iterations.numpy()) == trained.steps


@pytest.mark.tfprivacy
def test_tf_privacy_with_poisson_sampling_is_refused():
    train = TrainConfig(dp=DPConfig(path="tf_privacy"))
    with pytest.raises(UsageError, match="--dp_path=tf_privacy .*--sampling=shuffle"):
        run_config.RunConfig.make(train=train, sampling="poisson")
    run_config.RunConfig.make(train=train, sampling="shuffle")  # accepted: fixed batch sizes


def test_unprotected_public_examples_are_named_in_the_guarantee():
    cfg = run_config.RunConfig.make(data=data.DataConfig(public_from_private=True, public_examples=64))
    statement = run_config.guarantee(cfg, run_config.accounting_spec(cfg, 5000))
    assert "NOT covered: the 64 images set aside from the private pool" in statement
    assert "NOT covered" not in run_config.guarantee(run_config.RunConfig.make(),
                                                   run_config.accounting_spec(run_config.RunConfig.make(), 5000))


@pytest.mark.parametrize("kwargs,flag", [(dict(seed=-1), "--seed"), (dict(accountant="gdp"), "--accountant")])
def test_bad_run_config_names_the_flag(kwargs, flag):
    with pytest.raises(UsageError, match=flag):
        run_config.RunConfig.make(**kwargs)


@pytest.mark.parametrize("cosine", [None, 0.875])
def test_summary_says_how_to_get_the_clip_bias_cosine_when_it_was_not_computed(cosine):
    from tfdprobust import diagnostics
    diag = {k: {"mean": 0.5} for k in diagnostics.KEYS if k not in ("diag_clip_bias_cosine", "clip_bound")}
    diag["clip_bound"] = {"mean": 1.0, "last": 1.0}
    if cosine is not None:
        diag["diag_clip_bias_cosine"] = {"mean": cosine}
    text = runs.summary({"clean_accuracy": 0.9, "num_test_examples": 10, "private": False,
                             "guarantee": "none", diagnostics.RESULT_KEY: diag})
    line = next(x for x in text.splitlines() if x.startswith("clipping diagnostics"))
    assert "n/a" not in line
    expected = "clip-bias cosine off (--clip_bias_cosine)" if cosine is None else "clip-bias cosine 0.875"
    assert expected in line and "SNR 0.5, final C 1" in line, line

