"""Precomputed fixed features (tfdprobust.precompute): the head trained on features and the
full network it is copied into compute the same function; the head keeps the per-example
rules; DP clipped sums on precomputed features equal the in-network ones."""

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import models, per_example, precompute
from tfdprobust.attacks import AttackConfig
from tfdprobust.errors import UsageError
from tfdprobust.features import Scattering2D
from tfdprobust.models import ModelConfig
from tfdprobust.normalization import update_public_statistics
from tfdprobust.train_step import TrainConfig
from tfdprobust.run_config import RunConfig

CONFIGS = [ModelConfig(name="scatternet_cnn", norm="group", groups=27, activation="tanh"),
           ModelConfig(name="scatternet_cnn", norm="public_bn"),
           ModelConfig(name="scatternet_linear", norm="group", groups=27)]


def _randomized_head(cfg, public=None, seed=5):
    """A head whose weights differ from any fresh initialization (so a missed copy shows)."""
    head = precompute.build_head(cfg, seed=1)
    rng = np.random.default_rng(seed)
    head.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in head.get_weights()])
    if public is not None and cfg.norm == "public_bn":
        update_public_statistics(head, tf.constant(public))
    return head


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.name}-{c.norm}")
def test_the_full_model_computes_the_head_of_the_precomputed_features(cfg, tiny_images):
    x, _, public = tiny_images
    extractor = precompute.feature_extractor(cfg)
    assert [type(layer) for layer in extractor.layers] == [Scattering2D]
    features = precompute.transform(extractor, x, batch_size=7, log=None)  # batches of 7, 7, 7, 7, 4
    public_features = precompute.transform(extractor, public, log=None)
    head = _randomized_head(cfg, public_features)
    full = precompute.full_model(cfg, head)
    assert full.input_shape == (None, 28, 28, 1) and isinstance(full.layers[0], Scattering2D)
    np.testing.assert_allclose(full(x).numpy(), head(features).numpy(), rtol=1e-5, atol=1e-5)
    # the features are the scattering itself, image by image
    np.testing.assert_allclose(features[3:4], Scattering2D()(x[3:4]).numpy(), rtol=1e-5, atol=1e-6)
    # a copy, not a share: training the head further leaves the exported network alone
    before = full(x).numpy()
    head.set_weights([w + 1.0 for w in head.get_weights()])
    np.testing.assert_array_equal(full(x).numpy(), before)


def test_a_head_of_another_architecture_is_refused():
    head = precompute.build_head(ModelConfig(name="scatternet_linear", norm="group", groups=27))
    with pytest.raises(UsageError, match="layers|does not match"):
        precompute.full_model(ModelConfig(name="scatternet_cnn", norm="group", groups=27), head)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.name}-{c.norm}")
def test_the_validator_and_the_per_example_rules_admit_the_head(cfg, tiny_images):
    _, _, public = tiny_images
    public_features = precompute.transform(precompute.feature_extractor(cfg), public, log=None)
    head = _randomized_head(cfg, public_features)
    per_example.validate_network(head)
    assert per_example.supports(head)
    assert all(per_example.rule_for(layer) is not None for layer in head.layers if layer.trainable_weights)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.name}-{c.norm}")
def test_the_clipped_sum_on_precomputed_features_equals_the_in_network_one(cfg, tiny_images):
    x, y, public = tiny_images
    x, y = x[:8], y[:8]
    extractor = precompute.feature_extractor(cfg)
    features = precompute.transform(extractor, x, log=None)
    head = _randomized_head(cfg, precompute.transform(extractor, public, log=None))
    full = precompute.full_model(cfg, head)
    w = tf.constant([1.0, 0.5, 2.0, 0.0, 1.0, 1.0, 1.0, 0.25])
    in_network = per_example.clipped_sum(full, tf.constant(x), tf.constant(y), w, 0.5)
    on_features = per_example.clipped_sum(head, tf.constant(features), tf.constant(y), w, 0.5)
    assert 0 < float(tf.reduce_mean(tf.cast(in_network.norms > 0.5, tf.float32))) < 1  # some clipped, some not
    np.testing.assert_allclose(on_features.norms.numpy(), in_network.norms.numpy(), rtol=1e-4)
    assert len(on_features.clipped) == len(in_network.clipped) == len(head.trainable_variables)
    for a, b, v in zip(on_features.clipped, in_network.clipped, head.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=v.name)


def test_the_cli_list_of_precomputable_models_is_the_registrys():
    """models.PRECOMPUTABLE_MODELS is a literal (checked before TensorFlow loads)."""
    found = tuple(name for name in models.MODELS.names() if precompute.supports(ModelConfig(name=name, norm="none")))
    assert found == models.PRECOMPUTABLE_MODELS


def test_progress_lines_reach_the_end():
    lines = []
    extractor = precompute.feature_extractor(CONFIGS[0])
    out = precompute.transform(extractor, np.zeros((5, 28, 28, 1), np.float32), "five", batch_size=2,
                               log=lines.append, every_seconds=0)
    assert out.shape == (5, 7, 7, 81)
    assert [line.split(": ")[1].split(" (")[0] for line in lines] == ["2/5", "4/5", "5/5"]


def test_run_config_refuses_precomputing_with_an_attack_or_without_features():
    attack = AttackConfig(name="pgd_linf", eps=0.1, steps=2)
    with pytest.raises(UsageError, match="--precompute_features conflicts with --attack=pgd_linf"):
        RunConfig.make(train=TrainConfig(attack=attack), model=CONFIGS[0], precompute_features=True)
    with pytest.raises(UsageError, match="--precompute_features needs a --model"):
        RunConfig.make(train=TrainConfig(attack=None), model=ModelConfig(name="cnn"), precompute_features=True)
    assert RunConfig.make(train=TrainConfig(attack=None), model=CONFIGS[0], precompute_features=True).precompute_features
