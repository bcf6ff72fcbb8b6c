"""The facade: a user's own Keras model made private (and robust) in one call."""

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import tfdprobust as tdp
from tfdprobust.errors import UsageError


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 1,797 8x8 digits, in [0, 1], NHWC."""
    data = load_digits()
    return (data.images[..., None] / 16.0).astype(np.float32), data.target.astype(np.int64)


def _functional():
    inputs = tf.keras.Input((8, 8, 1))
    h = tf.keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    return tf.keras.Model(inputs, tf.keras.layers.Dense(10)(tf.keras.layers.Flatten()(h)))


class _Subclassed(tf.keras.Model):
    """A subclassed network whose rows never meet: each output row is its input row's."""

    def __init__(self):
        super().__init__()
        self.flat = tf.keras.layers.Flatten()
        self.hidden = tf.keras.layers.Dense(16, activation="tanh")
        self.out = tf.keras.layers.Dense(10)

    def call(self, x, training=False):
        return self.out(self.hidden(self.flat(x)))


def _independent_epsilon(q, sigma, steps, delta):
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(delta)


@pytest.mark.parametrize("make_net", [_functional, _Subclassed], ids=["functional", "subclassed"])
def test_a_users_model_trains_privately_and_its_epsilon_is_dp_accountings(digits, make_net):
    x, y = digits
    # The user's code: ten lines at most.
    net = make_net()
    model = tdp.make_private(net, num_examples=len(x), expected_batch_size=64, epochs=2, input_shape=(8, 8, 1),
                             target_epsilon=2.0, delta=1e-4, learning_rate=1.0)
    history = model.fit(x, y, epochs=2, verbose=0)
    eps, delta = model.privacy_spent()

    steps = 2 * int(np.ceil(len(x) / 64))
    assert model.steps == steps == int(model.optimizer.iterations.numpy())
    expected = _independent_epsilon(64 / len(x), model.config.dp.noise_multiplier, steps, 1e-4)
    assert delta == 1e-4
    assert eps == pytest.approx(expected, rel=1e-9)
    assert eps <= 2.0
    assert history.history["epsilon"][-1] == pytest.approx(eps, rel=1e-9)
    assert f"({eps:.3g}, 0.0001)-DP" in model.guarantee
    assert np.mean(np.argmax(net(x[:500]), 1) == y[:500]) > 0.2  # it learned something (chance: 0.1)


def test_the_trainer_draws_poisson_batches_with_rate_q_and_binomial_sizes():
    n, b, steps = 400, 40, 400
    net = tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(2)])
    model = tdp.make_private(net, expected_batch_size=b, noise_multiplier=1.0)
    x, ids = np.zeros((n, 1), np.float32), np.arange(n, dtype=np.int64)
    counts, sizes = np.zeros(n), []
    for _, batch_ids in model.batches(x, ids).take(steps):
        sizes.append(len(batch_ids))
        counts[batch_ids.numpy()] += 1
    q = b / n
    sizes = np.asarray(sizes)
    # Batch sizes are Binomial(N, q): mean Nq, variance Nq(1 - q) (five standard errors).
    assert abs(sizes.mean() - n * q) < 5 * np.sqrt(n * q * (1 - q) / steps)
    assert 0.7 < sizes.var() / (n * q * (1 - q)) < 1.4
    assert len(set(sizes.tolist())) > 5  # not Keras' fixed-size batches
    # Each example joins each batch with probability q: its count is Binomial(steps, q).
    assert abs(counts.mean() - steps * q) < 5 * np.sqrt(steps * q * (1 - q) / n)
    assert 0.7 < counts.var() / (steps * q * (1 - q)) < 1.4


@pytest.mark.parametrize("option", [dict(batch_size=32), dict(shuffle=True), dict(steps_per_epoch=3),
                                    dict(sample_weight=np.ones(300))])
def test_keras_fixed_batches_and_weights_are_refused_under_dp_in_one_line(digits, option):
    x, y = digits
    model = tdp.make_private(_functional(), expected_batch_size=64, noise_multiplier=1.0)
    with pytest.raises(UsageError) as err:
        model.fit(x[:300], y[:300], verbose=0, **option)
    assert "\n" not in str(err.value) and next(iter(option)) in str(err.value)
    assert model.steps == 0 and int(model.optimizer.iterations.numpy()) == 0


def test_the_plain_train_step_model_refuses_numpy_under_dp(digits):
    """The class under the facade: Keras would batch NumPy arrays silently."""
    x, y = digits
    model = tdp.PrivateRobustModel(_functional(), tdp.TrainConfig(expected_batch_size=64, attack=None))
    model.compile()
    with pytest.raises(UsageError, match="make_private"):
        model.fit(x[:128], y[:128], batch_size=64, verbose=0)


def _as_dataset(x, y, tfds_style):
    if tfds_style:  # what tfds.load(..., split="train") yields: uint8 images in dicts
        images = np.round(x * 255).astype(np.uint8)
        return tf.data.Dataset.from_tensor_slices({"image": images, "label": y})
    return tf.data.Dataset.from_tensor_slices((x, y))


@pytest.mark.parametrize("tfds_style", [False, True], ids=["tf_data", "tfds_split"])
def test_a_dataset_of_known_size_goes_through_the_same_call(digits, tfds_style):
    x, y = digits
    model = tdp.make_private(_functional(), expected_batch_size=50, noise_multiplier=1.5, delta=1e-4)
    model.fit(_as_dataset(x[:500], y[:500], tfds_style), epochs=1, verbose=0)
    assert model.steps == 10
    assert model.epsilon() == pytest.approx(_independent_epsilon(50 / 500, 1.5, 10, 1e-4), rel=1e-9)


def test_a_dataset_of_unknown_size_or_batched_is_refused(digits):
    x, y = digits
    model = tdp.make_private(_functional(), expected_batch_size=50, noise_multiplier=1.5)
    ds = tf.data.Dataset.from_tensor_slices((x[:100], y[:100]))
    with pytest.raises(UsageError, match="unknown or infinite"):
        model.fit(ds.repeat(), verbose=0)
    with pytest.raises(UsageError, match="unknown or infinite"):
        model.fit(ds.filter(lambda a, b: b >= 0), verbose=0)
    with pytest.raises(UsageError, match="unbatched"):
        model.fit(ds.batch(10), verbose=0)


def test_two_fits_compose_and_stop_at_epsilon_ends_before_the_budget(digits):
    x, y = digits
    model = tdp.make_private(_functional(), expected_batch_size=100, noise_multiplier=0.8, delta=1e-4)
    model.fit(x[:1000], y[:1000], epochs=1, verbose=0)
    first = model.epsilon()
    budget = first * 2.5
    model.fit(x[:1000], y[:1000], epochs=20, verbose=0, callbacks=[tdp.StopAtEpsilon(budget)])
    assert 10 < model.steps < 210  # stopped early
    assert model.epsilon() <= budget
    q = 100 / 1000
    composed = dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(0.8)), s)
        for s in (10, model.steps - 10)])
    assert model.epsilon() == pytest.approx(
        dp_accounting.rdp.RdpAccountant().compose(composed).get_epsilon(1e-4), rel=1e-9)
    # One more step would have exceeded the budget.
    one_more = dp_accounting.ComposedDpEvent([*composed.events[:1], dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(0.8)), model.steps - 9)])
    assert dp_accounting.rdp.RdpAccountant().compose(one_more).get_epsilon(1e-4) > budget


def test_robust_training_and_export_carry_the_guarantee(digits, tmp_path):
    x, y = digits
    model = tdp.make_private(_functional(), expected_batch_size=100, noise_multiplier=1.0, delta=1e-4,
                             attack=tdp.AttackConfig(name="pgd_linf", eps=0.1, steps=3), adv_weight=0.5)
    history = model.fit(x[:400], y[:400], epochs=1, verbose=0)
    assert "adv_acc" in history.history
    out = model.export(str(tmp_path / "m"))
    from tfdprobust import export

    meta = export.load_metadata(out)
    assert meta["epsilon"] == pytest.approx(model.epsilon()) and meta["steps"] == 4
    assert meta["attack"]["name"] == "pgd_linf"
    loaded = tf.keras.models.load_model(out)
    np.testing.assert_allclose(loaded(x[:5]).numpy(), model.net(x[:5]).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(expected_batch_size=0, noise_multiplier=1.0), "expected_batch_size"),
    (dict(expected_batch_size=10), "noise_multiplier and target_epsilon"),
    (dict(expected_batch_size=10, target_epsilon=1.0), "epochs and num_examples"),
    (dict(expected_batch_size=10, noise_multiplier=1.0, sampling="random"), "sampling"),
    (dict(expected_batch_size=10, noise_multiplier=1.0, model=_Subclassed()), "input_shape"),
])
def test_bad_arguments_are_one_line_errors_naming_the_argument(kwargs, needle):
    with pytest.raises(UsageError) as err:
        tdp.make_private(kwargs.pop("model", None) or _functional(), **kwargs)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_importing_the_package_loads_no_tensorflow():
    import subprocess
    import sys

    code = "import sys, tfdprobust; assert 'tensorflow' not in sys.modules; print(tfdprobust.make_private.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "tfdprobust.engine"


def test_every_fit_counts_toward_its_data_sets_ledger_and_budget(digits, tmp_path):
    """Two trainers on the same data share one ledger; a budget refuses, before any step, the
    fit that would take the data set past it."""
    from tfdprobust import ledger

    x, y = digits[0][:500], digits[1][:500]
    kwargs = dict(expected_batch_size=50, noise_multiplier=1.0, delta=1e-4, ledger_dir=str(tmp_path))
    first = tdp.make_private(_functional(), **kwargs)
    first.fit(x, y, epochs=1, verbose=0)
    second = tdp.make_private(_functional(), **kwargs)
    second.fit(x, y, epochs=2, verbose=0)
    assert first.ledger_path == second.ledger_path
    entries = ledger.DataLedger(str(tmp_path), ledger.fingerprint((x, y))).entries()
    assert [e["steps"] for e in entries] == [10, 20]
    together = _independent_epsilon(50 / 500, 1.0, 30, 1e-4)  # RDP composes additively
    assert ledger.composed_epsilon(entries, 1e-4) == pytest.approx(together, rel=1e-9)
    third = tdp.make_private(_functional(), budget=together * 1.05, **kwargs)
    with pytest.raises(UsageError, match="--budget"):
        third.fit(x, y, epochs=1, verbose=0)
    assert third.steps == 0 and len(ledger.DataLedger(str(tmp_path), ledger.fingerprint((x, y))).entries()) == 2
