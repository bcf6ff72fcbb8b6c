"""The validator sees what runs: subclassed models and custom layers that mix examples are
refused under DP; ones that do not train, and one example moves their clipped sum by <= C."""

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import attacks, clipping, per_example
from tfdprobust.errors import UsageError
from tfdprobust.per_example import probe, registry
from tfdprobust.train_step import DPConfig, PrivateRobustModel, TrainConfig


class Subclassed(tf.keras.Model):
    """A small CNN written as a subclassed model; ``mix`` says how ``call`` combines rows."""

    def __init__(self, mix="none"):
        super().__init__()
        self.mix = mix
        self.conv = tf.keras.layers.Conv2D(4, 3, activation="relu")
        self.flat = tf.keras.layers.Flatten()
        self.hidden = tf.keras.layers.Dense(16, activation="tanh")
        self.out = tf.keras.layers.Dense(10)

    def call(self, x, training=False):
        h = self.hidden(self.flat(self.conv(x)))
        if self.mix == "mean":  # the audit's example: 2.008 C from one example
            h = h + tf.reduce_mean(h, axis=0)
        elif self.mix == "stop_gradient":  # mixes values, zero gradient: only the value check sees it
            h = h + tf.stop_gradient(tf.reduce_mean(h, axis=0))
        elif self.mix == "tiny":  # below the value tolerance: only the Jacobian check sees it
            h = h + 1e-7 * tf.reduce_mean(h, axis=0)
        elif self.mix == "training_only" and training:  # only the training-mode Jacobian sees it
            h = h - tf.reduce_mean(h, axis=0)
        elif self.mix == "batch_size":  # no row reads another, but removal changes every row
            h = h * tf.cast(tf.shape(h)[0], h.dtype)
        return self.out(h)


def _built(mix):
    net = Subclassed(mix)
    net(tf.zeros([1, 28, 28, 1]))
    return net


@pytest.mark.parametrize("mix", ["mean", "stop_gradient", "tiny", "training_only", "batch_size"])
def test_a_subclassed_model_that_mixes_examples_is_refused_under_dp(mix):
    net = _built(mix)
    with pytest.raises(UsageError, match="mixes examples.*Sequential or functional") as info:
        PrivateRobustModel(net, TrainConfig())
    assert "\n" not in str(info.value)
    PrivateRobustModel(net, TrainConfig(dp=DPConfig(enabled=False)))  # fine without DP


def test_an_unbuilt_subclassed_model_is_refused_saying_how_to_build_it():
    with pytest.raises(UsageError, match="build it first"):
        PrivateRobustModel(Subclassed(), TrainConfig())


class RowMixing(tf.keras.layers.Layer):
    """A custom layer that centres the batch: mixes examples."""

    def call(self, x):
        return x - tf.reduce_mean(x, axis=0)


class RowScaling(tf.keras.layers.Layer):
    """A custom per-example layer with a weight."""

    def build(self, shape):
        self.scale = self.add_weight("scale", shape[1:], initializer="ones")

    def call(self, x):
        return x * self.scale


def _sequential(layer):
    return tf.keras.Sequential([tf.keras.Input((28, 28, 1)), tf.keras.layers.Flatten(), layer,
                                tf.keras.layers.Dense(10)])


@pytest.fixture
def declared():
    """Declares layer classes per-example for one test, then forgets them."""
    added = []

    def declare(cls):
        added.append(per_example.register_per_example_layer(cls))
        return cls

    yield declare
    for cls in added:
        registry._PER_EXAMPLE_LAYERS.discard(cls)  # noqa: SLF001 - undo the test's declaration


def test_a_custom_layer_declared_per_example_by_mistake_is_caught_by_the_probe(declared):
    net = _sequential(RowMixing())
    with pytest.raises(UsageError, match="not known to be per-example"):  # undeclared: default-deny
        PrivateRobustModel(net, TrainConfig())
    declared(RowMixing)
    with pytest.raises(UsageError, match="mixes examples"):  # declared, but what runs mixes
        PrivateRobustModel(net, TrainConfig())


def test_a_declared_per_example_custom_layer_passes(declared):
    declared(RowScaling)
    PrivateRobustModel(_sequential(RowScaling()), TrainConfig())


def test_the_probe_leaves_the_network_unchanged():
    net = tf.keras.Sequential([tf.keras.Input((6,)), tf.keras.layers.Dense(3),
                               tf.keras.layers.BatchNormalization()])  # training mode moves its statistics
    before = [v.numpy().copy() for v in net.variables]
    with pytest.raises(UsageError, match="mixes examples"):  # BN in training mode mixes the batch
        probe.check_examples_independent(net)
    for b, v in zip(before, net.variables):
        np.testing.assert_array_equal(b, v.numpy())


def _norm(tensors):
    return np.sqrt(sum(np.sum(np.square(t)) for t in tensors))


@pytest.mark.parametrize("adv_weight", [0.5, 1.0])
def test_a_per_example_subclassed_model_trains_and_one_example_moves_the_clipped_sum_by_at_most_c(
        tiny_images, adv_weight):
    x_all, y_all, _ = tiny_images
    tf.keras.utils.set_random_seed(3)
    net = _built("none")
    assert not per_example.supports(net)  # the tf.vectorized_map path: the graph walk cannot follow it
    clip, n = 1e-3, 5
    cfg = TrainConfig(expected_batch_size=n, adv_weight=adv_weight,
                      attack=attacks.AttackConfig(name="pgd_linf", eps=0.1, steps=2, random_start=False),
                      dp=DPConfig(l2_clip=clip, noise_multiplier=0.0))
    model = PrivateRobustModel(net, cfg)

    def clipped_rows(x, y):
        x_adv = model.adversarial(x, y)
        grads, _ = model.per_example_gradients(x, x_adv, y)
        clipped, norms = clipping.clip_per_example(grads, clip)
        assert np.all(norms.numpy() > clip)  # clipping is active, so the bound is the point
        return [c.numpy() for c in clipped]

    x, y = tf.constant(x_all[:n]), tf.constant(y_all[:n])
    full = clipped_rows(x, y)
    for k in (0, n - 1):
        keep = [i for i in range(n) if i != k]
        rest = clipped_rows(tf.gather(x, keep), tf.gather(y, keep))
        moved = [f.sum(0) - r.sum(0) for f, r in zip(full, rest)]
        assert _norm(moved) <= clip * (1 + 1e-4)
        for f, r in zip(full, rest):
            np.testing.assert_allclose(f[keep], r, rtol=1e-4, atol=1e-9)

    before = [v.numpy().copy() for v in net.trainable_variables]
    model.compile()
    model.fit(tf.data.Dataset.from_tensor_slices((x_all[:20], y_all[:20])).batch(n), epochs=1, verbose=0)
    assert any(not np.allclose(b, v.numpy()) for b, v in zip(before, net.trainable_variables))


def test_the_mixing_model_really_lets_one_example_move_the_others(tiny_images):
    """The reference the refusal rests on: in the model the probe refuses, the other
    examples' gradient depends on example 0 (and in the per-example one it does not)."""
    x_all, y_all, _ = tiny_images
    x, y = tf.constant(x_all[:5]), tf.constant(y_all[:5])

    def others_gradient(net, batch_x, batch_y, others):
        with tf.GradientTape() as tape:
            losses = per_example.row_losses(net(batch_x), batch_y, tf.ones([len(batch_x)]))
            loss = tf.reduce_sum(tf.gather(losses, others))
        return [g.numpy() for g in tape.gradient(loss, net.trainable_variables)]

    for mix, mixes in (("mean", True), ("none", False)):
        tf.keras.utils.set_random_seed(3)
        net = _built(mix)
        with_0 = others_gradient(net, x, y, [1, 2, 3, 4])
        without_0 = others_gradient(net, x[1:], y[1:], [0, 1, 2, 3])
        moved = _norm([a - b for a, b in zip(with_0, without_0)]) / _norm(with_0)
        assert (moved > 1e-2) if mixes else (moved < 1e-5)
