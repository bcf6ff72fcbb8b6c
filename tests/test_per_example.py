"""The fast per-layer per-example gradients equal slow references."""

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import per_example
from tfdprobust.models import ModelConfig, build_model
from tfdprobust.normalization import update_public_statistics


def _microbatch_reference(net, x, y, w):
    """The slowest, most obvious reference: one GradientTape per row."""
    out = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            logits = net(x[i:i + 1], training=False)
            loss = w[i] * tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y[i:i + 1], logits=logits)
        out.append(tape.gradient(loss, net.trainable_variables))
    return [np.stack([g[k].numpy() for g in out]) for k in range(len(out[0]))]


@pytest.mark.parametrize("name", ["cnn", "lenet"])
@pytest.mark.parametrize("norm", ["none", "public_bn", "group"])
def test_layer_rules_match_microbatch_reference(name, norm, tiny_images):
    x, y, public = tiny_images
    x, y = tf.constant(x[:6]), tf.constant(y[:6])
    w = tf.constant([1.0, 0.5, 0.25, 2.0, 1.0, 0.0])
    net = build_model(ModelConfig(name=name, norm=norm, activation="tanh"), seed=1)
    if norm == "public_bn":
        update_public_statistics(net, tf.constant(public))
    assert per_example.supports(net)
    fast, logits = per_example.per_example_gradients(net, x, y, w)
    ref = _microbatch_reference(net, x, y, w)
    np.testing.assert_allclose(logits.numpy(), net(x).numpy(), rtol=1e-5, atol=1e-5)
    for f, r, v in zip(fast, ref, net.trainable_variables):
        np.testing.assert_allclose(f.numpy(), r, rtol=1e-4, atol=1e-5, err_msg=v.name)


def test_vectorized_map_path_matches_layer_rules(tiny_images):
    x, y, _ = tiny_images
    x, y = tf.constant(x[:4]), tf.constant(y[:4])
    w = tf.ones([4])
    net = build_model(ModelConfig(norm="group"), seed=2)
    fast, _ = per_example.per_example_gradients(net, x, y, w)
    slow, _ = per_example.vectorized_map_gradients(net, x, y, w)
    for f, s in zip(fast, slow):
        np.testing.assert_allclose(f.numpy(), s.numpy(), rtol=1e-4, atol=1e-6)


def test_unsupported_networks_are_detected():
    """A rule-less layer now falls back per layer; what the graph walk cannot follow
    (a subclassed model) is still not the fast path's."""
    rule_less = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Embedding(10, 3),
                                     tf.keras.layers.Flatten(), tf.keras.layers.Dense(2)])
    assert per_example.supports(rule_less) and per_example.rule_for(rule_less.layers[0]) is None

    class Subclassed(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = tf.keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    assert not per_example.supports(Subclassed())


def test_fold_rows_adds_copies():
    g = [tf.constant([[1.0], [2.0], [10.0], [20.0]])]
    np.testing.assert_array_equal(per_example.fold_rows(g, 2)[0].numpy(), [[11.0], [22.0]])
