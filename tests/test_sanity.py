"""The gradient-masking checks pass on an honest model and flag realistic masked models:
probability outputs, input quantization with a zero gradient, logits x 1e4 saturating the
softmax, and a randomized input transform. Each masked model is flagged by a named check."""

import numpy as np
import pytest
import tensorflow as tf

from test_attacks import model_fn_of, trained_mnist_model
from tfdprobust import ensemble, sanity
from tfdprobust.errors import UsageError

# A small ensemble keeps the re-attacking checks (black box, convergence) fast in tests.
TINY = ensemble.Preset("tiny", (ensemble.EnsembleAttack("apgd-ce", steps=20),
                                ensemble.EnsembleAttack("apgd-t", steps=20, targets=2)), "test")


def statuses(checks):
    return {c.name: c.status for c in checks}


def masked_models():
    model, _, _ = trained_mnist_model()
    fn = model_fn_of(model)
    return {
        # Input quantization through round(): the gradient is exactly zero (BPDA would be
        # needed); attacks following gradients see nothing.
        "quantized_zero_gradient": lambda z: fn(tf.stop_gradient(tf.round(z * 4.0) / 4.0)),
        # Logits x 1e4: the softmax saturates to exactly one-hot in float32, so the
        # cross-entropy gradient of every confidently classified point is zero.
        "saturated_logits": lambda z: fn(z) * 1e4,
        # A random input transform (noise + clip): each forward pass differs.
        "randomized_input": lambda z: fn(tf.clip_by_value(z + tf.random.uniform(tf.shape(z), -0.3, 0.3), 0.0, 1.0)),
    }


def test_honest_model_passes_every_check():
    model, x, y = trained_mnist_model()
    checks = sanity.gradient_masking_checks(model_fn_of(model), x[:100], y[:100], eps=0.3, steps=10,
                                            preset=TINY, examples=40, square_queries=200)
    assert statuses(checks) == {n: "pass" for n in sanity.CHECK_NAMES}
    assert not sanity.failed(checks)


@pytest.mark.parametrize("name,only,flagged_by", [
    ("quantized_zero_gradient", ("zero_gradients", "black_box"), {"zero_gradients", "black_box"}),
    ("saturated_logits", ("logits", "zero_gradients", "black_box"), {"zero_gradients", "black_box"}),
    ("randomized_input", ("randomized",), {"randomized"}),
])
def test_masked_model_is_flagged(name, only, flagged_by):
    _, x, y = trained_mnist_model()
    checks = sanity.gradient_masking_checks(masked_models()[name], x[:100], y[:100], eps=0.3, steps=10,
                                            preset=TINY, examples=40, square_queries=200, only=only)
    assert {c.name for c in sanity.failed(checks)} == flagged_by, [str(c) for c in checks]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["quantized_zero_gradient", "saturated_logits", "randomized_input"])
def test_masked_model_is_flagged_by_the_full_battery(name):
    _, x, y = trained_mnist_model()
    checks = sanity.gradient_masking_checks(masked_models()[name], x[:100], y[:100], eps=0.3, steps=10,
                                            preset=TINY, examples=50, square_queries=300)
    assert sanity.failed(checks), [str(c) for c in checks]


def test_probability_output_model_is_flagged():
    model, x, y = trained_mnist_model()
    fn = model_fn_of(model)
    checks = sanity.gradient_masking_checks(lambda z: tf.nn.softmax(fn(z)), x[:100], y[:100], eps=0.3,
                                            steps=5, only=("logits", "zero_gradients"))
    assert statuses(checks)["logits"] == "fail"
    assert "SANITY CHECKS FAILED (logits" in sanity.format_checks(checks)


def test_unknown_check_name_is_an_error():
    model, x, y = trained_mnist_model()
    with pytest.raises(UsageError, match="unknown sanity check 'vibes'"):
        sanity.gradient_masking_checks(model_fn_of(model), x[:4], y[:4], only=("vibes",))


def test_number_checks():
    sweeps = {"fgsm": {"eps": [0, 0.1, 0.2], "accuracy": [0.9, 0.5, 0.6]},
              "pgd_linf": {"eps": [0, 0.1, 0.2], "accuracy": [0.9, 0.7, 0.1]}}
    assert sanity.check_monotone(sweeps).status == "fail"
    assert sanity.check_pgd_le_fgsm(sweeps).status == "fail"
    assert sanity.check_eps0(0.91, sweeps).status == "fail"
    assert sanity.check_eps0(0.9, sweeps).status == "pass"
    assert sanity.check_huge_eps({"linf": 0.0, "l2": 0.3}).status == "fail"
    assert sanity.check_huge_eps({"linf": 0.0, "l2": 0.0}).status == "pass"
    assert sanity.check_logits(np.array([[0.2, 0.8], [1.0, 0.0]])).status == "fail"
    assert sanity.check_logits(np.array([[-3.0, 2.0], [1.0, 0.5]])).status == "pass"
    # Square may not beat APGD by more than 1 point (1.5 examples at small n).
    assert sanity.check_black_box({"linf": (0.1, 0.50, 0.52, 1000)}).status == "fail"
    assert sanity.check_black_box({"linf": (0.1, 0.515, 0.52, 1000)}).status == "pass"
    # More steps and restarts may not gain more than 1 point.
    assert sanity.check_convergence({"l2": (1.0, 0.40, 0.38, 1000)}).status == "fail"
    assert sanity.check_convergence({"l2": (1.0, 0.40, 0.395, 1000)}).status == "pass"


def test_gradient_free_check_runs_where_the_attack_has_not_won_yet():
    honest = {"eps": [0, 0.1, 0.2, 0.3], "accuracy": [0.9, 0.5, 0.05, 0.0]}
    assert sanity._informative_eps(honest, 0.9, 0.3) == 0.1
    masked = {"eps": [0, 0.1, 0.2, 0.3], "accuracy": [0.9, 0.9, 0.9, 0.9]}
    assert sanity._informative_eps(masked, 0.9, 0.3) == 0.3
