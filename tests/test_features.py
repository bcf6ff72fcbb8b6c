"""The ScatterNet layer: equal to kymatio's NumPy scattering, per-example, admitted under DP,
and the ScatterNet + CNN of Tramèr and Boneh trains privately through the CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import per_example
from tfdprobust.errors import UsageError
from tfdprobust.features import Scattering2D, scattering_channels
from tfdprobust.models import ModelConfig, build_model
from tfdprobust.normalization import update_public_statistics
from tfdprobust.per_example import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}


def _kymatio_numpy(images_nchw: np.ndarray, J: int, L: int) -> np.ndarray:
    """kymatio's NumPy frontend in float64 (NumPy FFTs, not TensorFlow's): ``[B, C, K, H', W']``.
    Imported from its 2-D module: ``kymatio.numpy`` also loads the 3-D frontend, which
    needs the ``scipy.special.sph_harm`` SciPy 1.15 removed."""
    from kymatio.scattering2d.frontend.numpy_frontend import ScatteringNumPy2D

    return ScatteringNumPy2D(J=J, shape=images_nchw.shape[-2:], L=L)(images_nchw.astype(np.float64))


@pytest.mark.parametrize("shape, J", [((28, 28, 1), 2), ((16, 24, 2), 2), ((16, 16, 1), 3)])
def test_layer_equals_kymatio_numpy_scattering_channel_by_channel(shape, J):
    x = np.random.default_rng(3).random((3, *shape), dtype=np.float32)
    out = Scattering2D(J=J, L=8)(x).numpy()
    ref = _kymatio_numpy(np.transpose(x, (0, 3, 1, 2)), J, 8)  # [B, C, K, H', W']
    K = scattering_channels(J, 8, 2)
    assert ref.shape[2] == K and out.shape == (3, shape[0] // 2 ** J, shape[1] // 2 ** J, shape[2] * K)
    # channel c * K + k of the layer is coefficient k of input channel c
    expected = np.transpose(ref, (0, 3, 4, 1, 2)).reshape(out.shape)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6 * np.abs(expected).max())


def test_a_constant_image_has_only_its_order_zero_coefficient():
    """Hand-computed: the low-pass filter averages (gain 1 at frequency 0) and every wavelet
    has zero mean, so a constant image c scatters to c in channel 0 and 0 elsewhere."""
    out = Scattering2D()(tf.fill([2, 28, 28, 1], 0.7)).numpy()
    np.testing.assert_allclose(out[..., 0], 0.7, rtol=1e-4)
    assert np.abs(out[..., 1:]).max() < 1e-6


def test_the_transform_is_positively_homogeneous_and_rows_are_independent():
    """Convolutions and moduli: S(a x) = a S(x) for a > 0; and row i of a batch equals the
    transform of image i alone."""
    x = np.random.default_rng(4).random((4, 28, 28, 1), dtype=np.float32)
    layer = Scattering2D()
    batch = layer(x).numpy()
    np.testing.assert_allclose(layer(2.5 * x).numpy(), 2.5 * batch, rtol=1e-5, atol=1e-6)
    for i in range(len(x)):
        np.testing.assert_allclose(layer(x[i:i + 1]).numpy()[0], batch[i], rtol=1e-5, atol=1e-6)


def test_layer_has_no_weights_and_round_trips_its_config():
    net = build_model(ModelConfig(name="scatternet_cnn", norm="none"))
    layer = net.layers[0]
    assert isinstance(layer, Scattering2D) and not layer.weights
    clone = Scattering2D.from_config(Scattering2D(J=3, L=6, max_order=1).get_config())
    assert (clone.J, clone.L, clone.max_order) == (3, 6, 1)
    assert clone(tf.zeros([1, 16, 16, 1])).shape == (1, 2, 2, scattering_channels(3, 6, 1))


def test_an_image_size_that_is_not_a_multiple_of_2_to_the_J_is_refused():
    with pytest.raises(ValueError, match="multiple of 2\\*\\*J"):
        Scattering2D(J=2)(tf.zeros([1, 30, 30, 1]))


def test_scatternet_cnn_has_the_papers_shape():
    """Tramèr and Boneh's CNN on 7x7x81 scattering features (the authors' MNIST_CNN):
    conv 16@3x3/2 -> conv 32@3x3 -> dense 32 -> dense 10, GroupNorm without affine weights."""
    net = build_model(ModelConfig(name="scatternet_cnn", norm="group", groups=27, activation="tanh"))
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ["Scattering2D", "GroupNormalization", "Conv2D", "Conv2D", "Flatten", "Dense", "Dense"]
    assert net.layers[1].groups == 27 and not net.layers[1].weights
    assert [tuple(layer.output_shape[1:]) for layer in net.layers[2:4]] == [(4, 4, 16), (4, 4, 32)]
    # 81*9*16+16 + 16*9*32+32 + 512*32+32 + 32*10+10, counted by hand
    assert sum(int(np.prod(v.shape)) for v in net.trainable_variables) == 11680 + 4640 + 16416 + 330


def _microbatch_reference(net, x, y, w):
    """One GradientTape per example."""
    out = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            logits = net(x[i:i + 1], training=False)
            loss = w[i] * tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y[i:i + 1], logits=logits)
        out.append(tape.gradient(loss, net.trainable_variables))
    return [np.stack([g[k].numpy() for g in out]) for k in range(len(out[0]))]


@pytest.mark.parametrize("norm", ["none", "group", "public_bn"])
def test_fast_per_example_gradients_of_a_scatternet_equal_one_tape_per_example(norm, tiny_images):
    x, y, public = tiny_images
    x, y = tf.constant(x[:5]), tf.constant(y[:5])
    w = tf.constant([1.0, 0.5, 2.0, 0.0, 1.0])
    net = build_model(ModelConfig(name="scatternet_cnn", norm=norm, groups=27, activation="tanh"), seed=1)
    if norm == "public_bn":
        update_public_statistics(net, tf.constant(public))
    assert per_example.supports(net)
    # the layers after the scattering keep their own rules (no per-layer fallback)
    assert all(per_example.rule_for(layer) is not None for layer in net.layers if layer.trainable_weights)
    fast, logits = per_example.per_example_gradients(net, x, y, w)
    ref = _microbatch_reference(net, x, y, w)
    np.testing.assert_allclose(logits.numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)
    for f, r, v in zip(fast, ref, net.trainable_variables):
        np.testing.assert_allclose(f.numpy(), r, rtol=1e-4, atol=1e-6, err_msg=v.name)


def test_clipped_sum_of_a_scatternet_equals_the_clipped_reference(tiny_images):
    x, y, _ = tiny_images
    x, y = tf.constant(x[:6]), tf.constant(y[:6])
    w = tf.ones([6])
    net = build_model(ModelConfig(name="scatternet_cnn", norm="group", groups=27, activation="tanh"), seed=2)
    ref = _microbatch_reference(net, x, y, w)
    norms = np.sqrt(sum(np.sum(r.reshape(len(r), -1) ** 2, axis=1) for r in ref))
    bound = float(np.median(norms))  # half the examples are clipped
    scale = np.minimum(1.0, bound / norms)
    result = per_example.clipped_sum(net, x, y, w, bound)
    np.testing.assert_allclose(result.norms.numpy(), norms, rtol=1e-4)
    for got, r in zip(result.clipped, ref):
        np.testing.assert_allclose(got.numpy(), np.tensordot(scale, r, axes=1), rtol=1e-4, atol=1e-6)


def test_the_validator_admits_the_scatternet_model():
    """The layer list (Scattering2D is declared per-example) and the numerical probe."""
    per_example.validate_network(build_model(ModelConfig(name="scatternet_cnn", norm="group", groups=27)))


class MixingScattering(Scattering2D):
    """A variant that subtracts the batch mean of the coefficients: mixes examples."""

    def call(self, inputs):
        out = super().call(inputs)
        return out - tf.reduce_mean(out, axis=0)


@pytest.fixture
def declared():
    """Declares layer classes per-example for one test, then forgets them."""
    added = []
    yield lambda cls: added.append(per_example.register_per_example_layer(cls))
    for cls in added:
        registry._PER_EXAMPLE_LAYERS.discard(cls)  # noqa: SLF001 - undo the test's declaration


def test_a_mixing_variant_is_refused_declared_or_not(declared):
    net = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), MixingScattering(), tf.keras.layers.Flatten(),
                               tf.keras.layers.Dense(10)])
    with pytest.raises(UsageError, match="MixingScattering.*not known to be per-example"):
        per_example.validate_network(net)  # a subclass does not inherit the declaration
    declared(MixingScattering)
    with pytest.raises(UsageError, match="mixes examples"):  # declared by mistake: the probe sees it
        per_example.validate_network(net)


@pytest.mark.slow
def test_cli_trains_scatternet_cnn_privately_and_exports_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tfdprobust.experiments.mnist", "--model=scatternet_cnn", "--norm=group",
         "--groups=27", "--activation=tanh", f"--data_dir={os.path.join(ROOT, '..', 'shared', 'data')}",
         "--max_train=300", "--max_test=100", "--batch_size=100", "--learning_rate=0.4", "--epochs=1",
         "--attack=none", "--eval_examples=20", "--eval_steps=3", f"--export_dir={tmp_path}",
         "--run_name=scatter", "--verbose=0"],
        capture_output=True, text=True, timeout=800, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epsilon" in proc.stdout, proc.stdout
    meta = json.loads((tmp_path / "scatter" / "metadata.json").read_text())
    assert 0 < meta["epsilon"] < float("inf") and meta["private"] is True
    serve = tf.saved_model.load(str(tmp_path / "scatter")).signatures["serving_default"]
    logits = serve(images=tf.random.uniform([2, 28, 28, 1]))["logits"]
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits.numpy()))
