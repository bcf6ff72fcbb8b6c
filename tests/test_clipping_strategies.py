"""Clipping strategies (flat, per_layer, automatic, adaptive) and adaptive clipping's privacy."""

import math

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import accounting, clipping, randomness, run_config
from tfdprobust.errors import UsageError
from tfdprobust.train_step import DPConfig, TrainConfig


def _grads(scales, seed=0):
    """Per-example gradients over two variables with global norms of very different sizes."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(len(scales), 3, 2)).astype(np.float32)
    b = rng.normal(size=(len(scales), 4)).astype(np.float32)
    norms = np.sqrt((a ** 2).sum((1, 2)) + (b ** 2).sum(1))
    s = np.asarray(scales, np.float32) / norms
    return [tf.constant(a * s[:, None, None]), tf.constant(b * s[:, None])]


def _row_norms(rows):
    return np.sqrt(sum((r.numpy().reshape(len(r), -1) ** 2).sum(1) for r in rows))


@pytest.mark.parametrize("bound", [1.0, 2.5])
def test_automatic_clipping_bounds_every_contribution_by_c(bound):
    """Bu et al.'s AUTO-S: C g / (||g|| + gamma). Every example's contribution is < C (with C = 1:
    < 1, the sensitivity-1 rule; another C only scales the learning rate by C), including
    tiny and huge gradients, and it equals the formula."""
    g = _grads([1e-4, 0.3, 1.0, 50.0, 1e4])
    gamma = 0.01
    clipped, norms = clipping.clip(g, bound, "automatic", gamma)
    out = _row_norms(clipped)
    assert np.all(out < bound)
    np.testing.assert_allclose(out, bound * norms.numpy() / (norms.numpy() + gamma), rtol=1e-5)
    for c, raw in zip(clipped, g):
        scale = bound / (norms.numpy() + gamma)
        np.testing.assert_allclose(c.numpy(), raw.numpy() * scale.reshape(-1, *[1] * (raw.ndim - 1)), rtol=1e-5)
    # neighbouring batches: removing any one example moves the clipped sum by < C
    total = [c.numpy().sum(0) for c in clipped]
    for k in range(5):
        rest, _ = clipping.clip([t[np.arange(5) != k] for t in g], bound, "automatic", gamma)
        moved = math.sqrt(sum(((t - r.numpy().sum(0)) ** 2).sum() for t, r in zip(total, rest)))
        assert moved < bound


def test_per_layer_clipping_gives_each_variable_c_over_sqrt_k():
    g = _grads([0.1, 3.0, 40.0])
    clipped, _ = clipping.clip(g, 1.0, "per_layer")
    share = 1.0 / math.sqrt(2)
    for c, raw in zip(clipped, g):
        raw_norm = _row_norms([raw])
        np.testing.assert_allclose(_row_norms([c]), np.minimum(raw_norm, share), rtol=1e-5)
    assert np.all(_row_norms(clipped) <= 1.0 + 1e-6)


def test_every_strategy_drops_non_finite_examples():
    g = [t.numpy().copy() for t in _grads([0.5, 2.0, 3.0])]
    g[0][1, 0, 0] = np.nan
    for name in clipping.CLIPPINGS.names():
        clipped, norms = clipping.clip([tf.constant(t) for t in g], 1.0, name)
        assert int(clipping.dropped_count(norms)) == 1, name
        for c in clipped:
            assert np.all(np.isfinite(c.numpy())) and not np.any(c.numpy()[1]), name


def test_privatize_keeps_its_old_signature_and_default():
    g = _grads([0.5, 4.0])
    new, _ = clipping.privatize(g, 1.0, 0.0, normalizer=2, generator=randomness.noise_generator())
    old, _ = clipping.clipped_sum(g, 1.0)
    for n, o in zip(new, old):
        np.testing.assert_allclose(n.numpy(), o.numpy() / 2, rtol=1e-6)


def test_quantile_update_is_andrew_et_al_with_noise_from_the_given_generator():
    norms = tf.constant([0.5, 1.5, 2.0, np.inf, 0.9])   # 2 unclipped at C = 1; inf is dropped = clipped
    bound = tf.Variable(1.0)
    fraction = clipping.quantile_update(norms, bound, target_quantile=0.5, learning_rate=0.2,
                                        count_noise_std=0.7, normalizer=4,
                                        generator=randomness.noise_generator(insecure_seed=11))
    noise = float(randomness.noise_generator(insecure_seed=11).normal([], stddev=0.7))
    expected = (2 - 5 * 0.5 + noise) / 4 + 0.5
    assert float(fraction) == pytest.approx(expected, rel=1e-6)
    assert float(bound.numpy()) == pytest.approx(math.exp(-0.2 * (expected - 0.5)), rel=1e-6)


def test_adaptive_bound_tracks_the_target_quantile():
    norms = tf.constant(np.linspace(0.01, 10.0, 400, dtype=np.float32))
    bound = tf.Variable(0.1)
    generator = randomness.noise_generator(insecure_seed=0)
    update = tf.function(lambda: clipping.quantile_update(norms, bound, 0.8, 0.3, count_noise_std=1.0,
                                                          normalizer=400, generator=generator))
    for _ in range(120):
        update()
    assert 7.0 < float(bound.numpy()) < 9.0   # the 0.8 quantile of U(0, 10) is 8


def _adaptive_cfg(sampling="poisson", accountant="rdp", count_noise=None):
    train = TrainConfig(dp=DPConfig(noise_multiplier=1.1, clipping="adaptive", count_noise=count_noise), attack=None)
    return run_config.RunConfig.make(train=train, batch_size=256, epochs=3, sampling=sampling, accountant=accountant,
                                   export_dir=None)


def test_adaptive_epsilon_equals_an_independent_dp_accounting_composition():
    """N = 60,000, B = 256, 3 epochs, sigma = 1.1, count noise std B/20 = 12.8: every step
    releases the noised gradient and the noised count of the same Poisson batch."""
    spec = run_config.accounting_spec(_adaptive_cfg(), 60000)
    steps = 3 * math.ceil(60000 / 256)
    count_multiplier = 12.8 / 0.5    # the count of (b_i - 1/2) has sensitivity 1/2
    q = 256 / 60000
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
        q, dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(1.1),
                                          dp_accounting.GaussianDpEvent(count_multiplier)])), steps)
    independent = dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(1e-5)
    assert accounting.dp_event(spec) == event
    assert accounting.epsilon(spec) == pytest.approx(independent, rel=1e-12)
    # Andrew et al.'s Theorem: the pair is one Gaussian of multiplier (sigma^-2 + (2 sigma_b)^-2)^-1/2
    effective = (1.1 ** -2 + count_multiplier ** -2) ** -0.5
    single = dp_accounting.rdp.RdpAccountant().compose(dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(effective)), steps)).get_epsilon(1e-5)
    assert accounting.epsilon(spec) == pytest.approx(single, rel=1e-9)
    flat = accounting.epsilon(spec.replace(extra_noise_multipliers=()))
    assert accounting.epsilon(spec) > flat   # the quantile releases are not free


def test_adaptive_epsilon_under_shuffling_doubles_both_sensitivities():
    spec = run_config.accounting_spec(_adaptive_cfg(sampling="shuffle", count_noise=3.0), 60000)
    event = dp_accounting.SelfComposedDpEvent(dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(0.55), dp_accounting.GaussianDpEvent(3.0)]), 3)
    independent = dp_accounting.rdp.RdpAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE).compose(
        event).get_epsilon(1e-5)
    assert accounting.epsilon(spec) == pytest.approx(independent, rel=1e-12)


def test_target_epsilon_calibration_includes_the_quantile_releases():
    cfg = run_config.resolve_noise(
        run_config.RunConfig.make(train=_adaptive_cfg().train, batch_size=256, epochs=3, target_epsilon=2.0,
                                export_dir=None), 6000)
    spec = run_config.accounting_spec(cfg, 6000)
    assert spec.extra_noise_multipliers == (25.6,)
    assert accounting.epsilon(spec) <= 2.0 < accounting.epsilon(spec.replace(
        noise_multiplier=cfg.train.dp.noise_multiplier * 0.99))


def test_pld_with_adaptive_poisson_is_refused():
    with pytest.raises(UsageError, match="pld"):
        run_config.accounting_spec(_adaptive_cfg(accountant="pld"), 60000)


def test_the_adaptive_bound_moves_with_secret_noise(tiny_images):
    """The count noise comes from the model's secret generator: two models, same data and
    seed, get different bounds unless the insecure flag replays the noise."""
    from tfdprobust.models import ModelConfig, build_model
    from tfdprobust.train_step import PrivateRobustModel

    x, y, _ = tiny_images
    x, y = tf.constant(x[:8]), tf.constant(y[:8])
    net = build_model(ModelConfig(norm="group"), seed=1)

    def bound_after_one_step(insecure):
        cfg = TrainConfig(expected_batch_size=8, attack=None, dp=DPConfig(
            l2_clip=1.0, noise_multiplier=1.0, clipping="adaptive", count_noise=5.0, insecure_noise_seed=insecure))
        model = PrivateRobustModel(net, cfg)
        model.private_step(x, x, y)  # eager: clip, noise, then the bound's update
        return float(model.clip_bound.numpy())

    assert bound_after_one_step(None) != bound_after_one_step(None)
    assert bound_after_one_step(3) == bound_after_one_step(3) != 1.0
