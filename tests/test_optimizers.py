"""The noise-aware optimizer registry and DP-AdamBC against a hand-computed reference."""

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import optimizers
from tfdprobust.errors import UsageError
from tfdprobust.train_step import DPConfig, TrainConfig


def _reference_adambc(grads, theta0, lr, phi, beta_1=0.9, beta_2=0.999, floor=1e-8):
    """Tang et al.'s update, written out with NumPy in float64."""
    theta, m, v = np.array(theta0, np.float64), 0.0, 0.0
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g ** 2
        m_hat, v_hat = m / (1 - beta_1 ** t), v / (1 - beta_2 ** t)
        theta = theta - lr * m_hat / np.sqrt(np.maximum(v_hat - phi, floor))
    return theta


def test_dp_adambc_two_steps_equal_the_hand_computed_update():
    sigma, clip, batch, lr = 2.0, 0.5, 100, 0.01
    phi = (sigma * clip / batch) ** 2                       # 1e-4
    grads = [np.array([0.03, 0.004, -0.02], np.float32), np.array([0.01, -0.006, 0.05], np.float32)]
    theta0 = [1.0, -1.0, 0.5]
    opt = optimizers.OPTIMIZERS.get("dp_adambc").build(lr, optimizers.NoiseScale(sigma, clip, batch))
    var = tf.Variable(theta0)
    for g in grads:
        opt.apply_gradients([(tf.constant(g), var)])
    expected = _reference_adambc(grads, theta0, lr, phi)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-5)
    # the test means something: coordinate 0 is corrected (v^ > Phi), coordinate 1 hits the
    # floor (v^ < Phi), and plain Adam (Phi = 0) would land elsewhere
    v_hat_1 = (0.001 * 0.004 ** 2) / 0.001
    assert v_hat_1 < phi
    plain = _reference_adambc(grads, theta0, lr, 0.0)
    assert np.all(np.abs(plain - expected) > 1e-4)


def test_dp_adambc_follows_the_adaptive_bound():
    bound = tf.Variable(1.0)
    opt = optimizers.OPTIMIZERS.get("dp_adambc").build(1e-3, optimizers.NoiseScale(1.0, bound, 10))
    assert float(opt.noise_variance()) == pytest.approx(0.01)
    bound.assign(2.0)
    assert float(opt.noise_variance()) == pytest.approx(0.04)


def test_train_config_passes_sigma_c_and_b_to_noise_aware_optimizers():
    cfg = TrainConfig(optimizer="dp_adambc", learning_rate=1e-3, expected_batch_size=50,
                      dp=DPConfig(l2_clip=0.5, noise_multiplier=3.0))
    assert float(cfg.make_optimizer().noise_variance()) == pytest.approx((3.0 * 0.5 / 50) ** 2)
    plain = TrainConfig(optimizer="adam", dp=DPConfig(l2_clip=0.5)).make_optimizer()
    assert isinstance(plain, tf.keras.optimizers.legacy.Adam)


@pytest.mark.parametrize("kwargs,needle", [
    ({"dp": DPConfig(enabled=False)}, "--dp"),
    ({"dp": DPConfig(path="tf_privacy")}, "tensorflow-privacy"),
])
def test_dp_adambc_refuses_settings_where_it_means_nothing(kwargs, needle):
    with pytest.raises(UsageError, match=needle):
        TrainConfig(optimizer="dp_adambc", **kwargs)
