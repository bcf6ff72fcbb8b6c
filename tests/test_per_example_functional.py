"""Functional networks (ResNet-20's residual graph) on the fast per-example path.

Images are small synthetic CIFAR-shaped arrays (32x32x3 uniform noise): CIFAR-10 is not
available offline, and the equality of two gradient computations does not depend on the
images being natural.
"""

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import graph, layers, per_example
from tfdprobust.errors import UsageError
from tfdprobust.models import MODELS, ModelConfig, build_model
from tfdprobust.normalization import PublicBatchNormalization, update_public_statistics

CIFAR_SHAPE = (32, 32, 3)


def _cifar_like(n, seed):
    rng = np.random.default_rng(seed)
    return rng.random((n, *CIFAR_SHAPE), dtype=np.float32), (np.arange(n) % 10).astype(np.int64)


def _microbatch_reference(net, x, y, w):
    """One GradientTape per example through Keras' own call (independent of graph.run)."""
    out = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            logits = net(x[i:i + 1], training=False)
            loss = w[i] * tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y[i:i + 1], logits=logits)
        out.append(tape.gradient(loss, net.trainable_variables))
    return [np.stack([g[k].numpy() for g in out]) for k in range(len(out[0]))]


def _assert_fast_equals_reference(net, x, y, w):
    assert per_example.supports(net)
    per_example.validate_network(net)  # accepted as per-example layer by layer, not waved through
    fast, logits = per_example.per_example_gradients(net, tf.constant(x), tf.constant(y), tf.constant(w))
    ref = _microbatch_reference(net, tf.constant(x), tf.constant(y), tf.constant(w))
    np.testing.assert_allclose(logits.numpy(), net(x).numpy(), atol=1e-5)
    assert len(fast) == len(ref) == len(net.trainable_variables)
    for f, r, v in zip(fast, ref, net.trainable_variables):
        assert f.shape == (len(x), *v.shape)
        # float32 rounding grows with the gradient's size (the raw scattering features of
        # scatternet_linear give entries near 10): the tolerance scales with the largest entry.
        scale = max(1.0, float(np.abs(r).max()))
        np.testing.assert_allclose(f.numpy(), r, rtol=0, atol=1e-5 * scale, err_msg=v.name)
    return fast


@pytest.mark.parametrize("norm,ws", [("group", False), ("public_bn", False), ("group", True)])
def test_resnet20_fast_gradients_equal_the_microbatch_reference(norm, ws):
    x, y = _cifar_like(3, seed=0)
    public, _ = _cifar_like(16, seed=1)
    net = build_model(ModelConfig(name="resnet20", norm=norm, input_shape=CIFAR_SHAPE, groups=8,
                                  weight_standardization=ws), seed=0)
    if norm == "public_bn":
        update_public_statistics(net, tf.constant(public))
    fast = _assert_fast_equals_reference(net, x, y, np.array([1.0, 0.5, 2.0], np.float32))
    # the comparison is not vacuous: every parameter gets a non-zero gradient from some example
    assert all(float(np.abs(f.numpy()).max()) > 0 for f in fast)


def test_resnet20_is_he_et_al_size():
    net = build_model(ModelConfig(name="resnet20", norm="none", input_shape=CIFAR_SHAPE))
    n_params = sum(int(np.prod(v.shape)) for v in net.trainable_variables)
    assert 0.26e6 < n_params < 0.28e6  # He et al. report 0.27 M
    assert sum(isinstance(layer, tf.keras.layers.Add) for layer in net.layers) == 9  # 3 stages x 3 blocks


def test_every_registered_model_matches_the_reference_on_the_fast_path():
    """Every model in the registry, every normalization: the rules cover all of them."""
    x, y = _cifar_like(2, seed=3)
    public, _ = _cifar_like(8, seed=4)
    for name in MODELS.names():
        for norm in ("none", "public_bn", "group"):
            net = build_model(ModelConfig(name=name, norm=norm, input_shape=CIFAR_SHAPE), seed=2)
            if norm == "public_bn":
                update_public_statistics(net, tf.constant(public))
            _assert_fast_equals_reference(net, x, y, np.ones(2, np.float32))


def test_shared_layers_and_concatenation_sum_their_per_use_gradients():
    """A Dense layer used twice and a concatenation: per-example gradients still exact."""
    inputs = tf.keras.Input((5,))
    shared = tf.keras.layers.Dense(5, activation="tanh")
    h = shared(shared(inputs))
    h = tf.keras.layers.Concatenate()([h, inputs])
    net = tf.keras.Model(inputs, tf.keras.layers.Dense(3)(h))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    _assert_fast_equals_reference(net, x, np.array([0, 1, 2, 0]), np.ones(4, np.float32))


def test_graph_walk_equals_keras_call():
    net = build_model(ModelConfig(name="resnet20", norm="group", input_shape=CIFAR_SHAPE), seed=0)
    x, _ = _cifar_like(2, seed=5)
    np.testing.assert_allclose(graph.run(net, tf.constant(x)).numpy(), net(x).numpy(), atol=1e-6)


def test_public_statistics_inside_residual_blocks_are_public_moments():
    """Each PublicBatchNormalization in ResNet-20 holds the moments of its own input on the
    public batch (computed with the refreshed statistics of the layers before it)."""
    net = build_model(ModelConfig(name="resnet20", norm="public_bn", input_shape=CIFAR_SHAPE), seed=0)
    public, _ = _cifar_like(8, seed=6)
    update_public_statistics(net, tf.constant(public))
    bns = [layer for layer in net.layers if isinstance(layer, PublicBatchNormalization)]
    assert len(bns) == 19
    probe = tf.keras.Model(net.inputs, [bn.input for bn in bns])
    for bn, a in zip(bns, probe(public)):
        mean, var = tf.nn.moments(a, axes=[0, 1, 2])
        np.testing.assert_allclose(bn.public_mean.numpy(), mean.numpy(), atol=1e-5)
        np.testing.assert_allclose(bn.public_variance.numpy(), var.numpy(), rtol=1e-4, atol=1e-6)


def test_private_batchnorm_resnet_is_refused_by_name():
    inputs = tf.keras.Input(CIFAR_SHAPE)
    h = tf.keras.layers.Conv2D(4, 3)(inputs)
    h = tf.keras.layers.BatchNormalization(name="private_bn")(h)
    h = tf.keras.layers.Add()([h, h])
    net = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(tf.keras.layers.Flatten()(h)))
    with pytest.raises(UsageError, match="private_bn"):
        per_example.validate_network(net)


def test_a_conv_subclass_without_its_own_rule_is_not_trusted():
    """Rules are looked up by exact class: a Conv2D subclass that changes the computation
    (as WSConv2D does) gets no rule by inheritance and is refused under DP."""

    class OddConv(tf.keras.layers.Conv2D):
        pass

    net = tf.keras.Sequential([tf.keras.Input((6, 6, 1)), OddConv(2, 3), tf.keras.layers.Flatten(),
                               tf.keras.layers.Dense(2)])
    assert per_example.rule_for(net.layers[0]) is None  # no rule by inheritance (fallback only)
    with pytest.raises(UsageError, match="OddConv"):
        per_example.validate_network(net)
    assert per_example.rule_for(layers.WSConv2D(2, 3)) is not None
