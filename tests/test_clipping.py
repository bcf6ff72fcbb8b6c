"""Exact-value tests of clipping, and the noise's standard deviation."""

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import clipping, randomness


def _grads(norms, seed=0):
    """Per-example gradients over two variables whose global norms are ``norms``."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(len(norms), 3, 4)).astype(np.float32)
    b = rng.normal(size=(len(norms), 5)).astype(np.float32)
    scale = np.asarray(norms, np.float32) / np.sqrt((a ** 2).sum((1, 2)) + (b ** 2).sum(1))
    return [tf.constant(a * scale[:, None, None]), tf.constant(b * scale[:, None])]


def test_norms_are_global_over_variables():
    norms = clipping.per_example_norms(_grads([0.5, 2.0, 10.0]))
    np.testing.assert_allclose(norms.numpy(), [0.5, 2.0, 10.0], rtol=1e-5)


@pytest.mark.parametrize("clip", [0.1, 1.0, 3.0])
def test_each_example_contributes_at_most_c(clip):
    raw = [0.0, 0.05, 0.5, 2.0, 10.0, 1e4]
    clipped, norms = clipping.clip_per_example(_grads(raw), clip)
    after = clipping.per_example_norms(clipped).numpy()
    assert np.all(after <= clip * (1 + 1e-6))
    # examples under the bound are untouched, those above land exactly on it
    expected = np.minimum(raw, clip)
    np.testing.assert_allclose(after, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(norms.numpy(), raw, rtol=1e-5)


def test_clipping_keeps_direction():
    g = _grads([5.0])
    clipped, _ = clipping.clip_per_example(g, 1.0)
    for before, after in zip(g, clipped):
        np.testing.assert_allclose(after.numpy(), before.numpy() / 5.0, rtol=1e-5)


def test_removing_one_example_moves_the_sum_by_at_most_c():
    g = _grads([3.0, 8.0, 0.2, 50.0])
    full, _ = clipping.clipped_sum(g, 1.0)
    for k in range(4):
        keep = [i for i in range(4) if i != k]
        without, _ = clipping.clipped_sum([tf.gather(t, keep) for t in g], 1.0)
        diff = np.sqrt(sum(np.sum((a - b).numpy() ** 2) for a, b in zip(full, without)))
        assert diff <= 1.0 + 1e-5


def test_noise_std_is_sigma_times_c():
    zeros = [tf.zeros([400, 500])]
    sigma, clip = 1.7, 0.3
    noised = clipping.add_gaussian_noise(zeros, sigma, clip, randomness.noise_generator())[0].numpy()
    # 200k samples: the sample std is within 1% of sigma*C with overwhelming probability
    assert noised.std() == pytest.approx(sigma * clip, rel=0.01)
    assert abs(noised.mean()) < 0.01 * sigma * clip


def test_noise_is_secret_by_default_and_replayable_only_with_an_insecure_seed():
    zeros = [tf.zeros([1000]), tf.zeros([1000])]
    a = clipping.add_gaussian_noise(zeros, 1.0, 1.0, randomness.noise_generator())
    b = clipping.add_gaussian_noise(zeros, 1.0, 1.0, randomness.noise_generator())
    # two fresh generators: independent noise (|corr| tiny over 1,000 coordinates)
    assert abs(np.corrcoef(a[0].numpy(), b[0].numpy())[0, 1]) < 0.15
    c = clipping.add_gaussian_noise(zeros, 1.0, 1.0, randomness.noise_generator(insecure_seed=3))
    d = clipping.add_gaussian_noise(zeros, 1.0, 1.0, randomness.noise_generator(insecure_seed=3))
    np.testing.assert_array_equal(c[0].numpy(), d[0].numpy())


def test_noise_never_repeats_across_variables_or_steps():
    """One generator for all variables and steps: no draw reuses another's noise (the old
    ``seed + [0, i]`` scheme gave variable 1 at step t the noise of variable 0 at t+1)."""
    generator = randomness.noise_generator(insecure_seed=0)
    zeros = [tf.zeros([500]), tf.zeros([500])]
    draws = [g.numpy() for _ in range(3) for g in clipping.add_gaussian_noise(zeros, 1.0, 1.0, generator)]
    for i in range(len(draws)):
        for j in range(i + 1, len(draws)):
            assert abs(np.corrcoef(draws[i], draws[j])[0, 1]) < 0.2


def test_a_non_finite_example_is_dropped_and_the_rest_survive():
    g = _grads([0.5, 4.0, 9.0])
    bad = [t.numpy().copy() for t in g]
    bad[0][1, 0, 0] = np.inf
    bad[1][2, 3] = np.nan
    bad = [tf.constant(t) for t in bad]
    total, norms = clipping.clipped_sum(bad, 1.0)
    assert int(clipping.dropped_count(norms)) == 2
    clean, _ = clipping.clip_per_example([t[:1] for t in g], 1.0)  # only example 0 is finite
    for t, c in zip(total, clean):
        assert np.all(np.isfinite(t.numpy()))
        np.testing.assert_allclose(t.numpy(), c[0].numpy(), rtol=1e-6)


def test_privatize_without_noise_is_clipped_sum_over_normalizer():
    g = _grads([0.5, 4.0, 9.0])
    private, _ = clipping.privatize(g, 1.0, 0.0, normalizer=10, generator=randomness.noise_generator())
    summed, _ = clipping.clipped_sum(g, 1.0)
    for p, s in zip(private, summed):
        np.testing.assert_allclose(p.numpy(), s.numpy() / 10, rtol=1e-6)
