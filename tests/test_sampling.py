"""Batch selection: the Poisson sampler does what its DpEvent claims, secretly."""

import dp_accounting
import numpy as np
import pytest

from tfdprobust import accounting, randomness, sampling
from tfdprobust.errors import UsageError


def _toy(n):
    return np.zeros((n, 2, 2, 1), np.float32), np.arange(n, dtype=np.int64)


def test_poisson_inclusion_rate_is_q_and_batch_sizes_are_binomial():
    n, b, draws = 400, 40, 1500
    q = b / n
    x, y = _toy(n)
    ds = sampling.PoissonSampler(n, b).dataset(x, y, randomness.noise_generator())
    counts = np.zeros(n)
    sizes = []
    for _, labels in ds.take(draws).as_numpy_iterator():
        sizes.append(len(labels))
        counts[labels] += 1
    sizes = np.asarray(sizes, float)
    # Binomial(N, q): mean Nq, variance Nq(1-q); standard errors of the sample mean/variance
    mean, var = n * q, n * q * (1 - q)
    assert abs(sizes.mean() - mean) < 3 * np.sqrt(var / draws)
    var_se = np.sqrt(2 * var ** 2 / (draws - 1))  # ~normal approximation of the sample variance
    assert abs(sizes.var(ddof=1) - var) < 3 * var_se
    # every example is included at rate q (pooled over examples: 3 standard errors)
    rates = counts / draws
    assert abs(rates.mean() - q) < 3 * np.sqrt(q * (1 - q) / (draws * n))
    # and no example is systematically favoured: per-example rates scatter like binomials
    assert rates.std() < 1.5 * np.sqrt(q * (1 - q) / draws)


def test_poisson_batches_are_secret_and_replayable_only_when_insecure():
    n, b = 300, 30
    x, y = _toy(n)

    def first_batches(generator):
        ds = sampling.PoissonSampler(n, b).dataset(x, y, generator)
        return [tuple(labels) for _, labels in ds.take(5).as_numpy_iterator()]

    assert first_batches(randomness.noise_generator()) != first_batches(randomness.noise_generator())
    assert (first_batches(randomness.noise_generator(insecure_seed=1))
            == first_batches(randomness.noise_generator(insecure_seed=1)))


def test_shuffle_batches_use_each_example_once_per_epoch():
    n = 103
    x, y = _toy(n)
    sampler = sampling.ShuffleSampler(n, 10)
    ds = sampler.dataset(x, y, randomness.noise_generator())
    epoch = np.concatenate([labels for _, labels in ds.take(sampler.steps_per_epoch).as_numpy_iterator()])
    assert sampler.steps_per_epoch == 11 and sorted(epoch.tolist()) == list(range(n))


def test_each_sampler_states_its_event_and_adjacency():
    poisson, shuffle = sampling.PoissonSampler(60000, 256), sampling.ShuffleSampler(60000, 256)
    assert poisson.neighboring_relation == dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    assert shuffle.neighboring_relation == dp_accounting.NeighboringRelation.REPLACE_ONE
    assert poisson.dp_event(1.1, 10) == dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(256 / 60000, dp_accounting.GaussianDpEvent(1.1)), 10)
    # replace-one: sensitivity 2C, one Gaussian per started epoch
    assert shuffle.dp_event(1.1, 236) == dp_accounting.SelfComposedDpEvent(
        dp_accounting.GaussianDpEvent(0.55), 2)


def test_batch_larger_than_data_names_the_flag():
    with pytest.raises(UsageError, match="--batch_size"):
        sampling.PoissonSampler(10, 11)
    with pytest.raises(UsageError, match="sampling"):
        sampling.make_sampler("bootstrap", 10, 5)


def test_accounting_uses_the_samplers_event():
    spec = accounting.AccountingSpec(5000, 250, 3, 2.0, 1e-5, "poisson")
    assert accounting.dp_event(spec) == spec.sampler.dp_event(2.0, spec.total_steps)
