"""Public pre-training and DP fine-tuning (tfdprobust.pretrain): frozen layers stay frozen
under DP, the clipped sum covers exactly the trainable weights, and the guarantee names
what was public."""

import numpy as np
import pytest
import tensorflow as tf

import tfdprobust as tdp
from tfdprobust import pretrain, train_step
from tfdprobust.errors import UsageError
from tfdprobust.models import ModelConfig, build_model


def _net():
    """Conv -> group norm -> dense -> dense on 28x28 inputs (stable names conv2d_0,
    group_normalization_0, dense_0, dense_1)."""
    tf.keras.utils.set_random_seed(0)
    L = tf.keras.layers
    return tf.keras.Sequential([tf.keras.Input((28, 28, 1)), L.Conv2D(4, 5, strides=3, activation="relu"),
                                L.GroupNormalization(groups=2), L.Flatten(), L.Dense(8, activation="tanh"),
                                L.Dense(10)])


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    x = rng.random((12, 28, 28, 1), dtype=np.float32)
    y = (np.arange(12) % 10).astype(np.int64)
    return x, y


def test_stable_names_do_not_depend_on_how_many_layers_keras_built_before():
    first, second = _net(), _net()  # Keras names the second one's layers conv2d_1, dense_2, ...
    assert list(pretrain.stable_names(first)) == list(pretrain.stable_names(second)) == [
        "conv2d_0", "group_normalization_0", "dense_0", "dense_1"]
    assert [layer.name for layer in first.layers] != [layer.name for layer in second.layers]


def test_freeze_all_but_last_and_by_name():
    net = _net()
    assert pretrain.freeze(net, "all_but_last:1") == ["conv2d_0", "group_normalization_0", "dense_0"]
    trainable = {id(v) for v in net.trainable_variables}
    assert trainable == {id(v) for v in net.layers[-1].weights}
    net = _net()
    assert pretrain.freeze(net, "conv2d_0,dense_0") == ["conv2d_0", "dense_0"]
    assert not net.layers[0].trainable and not net.layers[3].trainable and net.layers[4].trainable


@pytest.mark.parametrize("spec, needle", [("conv2d_7", "no layer 'conv2d_7'"), ("all_but_last:4", "k must be below"),
                                          ("conv2d_0,group_normalization_0,dense_0,dense_1", "every layer"),
                                          ("all_but_last:zero", "integer >= 1")])
def test_bad_freeze_is_one_line_naming_the_flag(spec, needle):
    with pytest.raises(UsageError, match="--freeze") as err:
        pretrain.freeze(_net(), spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_pretraining_on_the_private_data_set_is_refused():
    with pytest.raises(UsageError, match="--public_pretrain=mnist is the private --dataset"):
        pretrain.prepare(_net(), pretrain.PretrainConfig(source="mnist"), private_dataset="mnist")
    with pytest.raises(UsageError, match="--public_pretrain=fashion_mnist is the private"):
        pretrain.check_not_private(pretrain.PretrainConfig(source="fashion_mnist"), "fashion_mnist")
    pretrain.check_not_private(pretrain.PretrainConfig(source="fashion_mnist"), "mnist")  # another data set: fine


def _trainer(net, batch_size=6, noise=0.0):
    config = train_step.TrainConfig(optimizer="sgd", learning_rate=0.5, expected_batch_size=batch_size,
                                    dp=train_step.DPConfig(l2_clip=0.3, noise_multiplier=noise))
    model = train_step.PrivateRobustModel(net, config)
    model.compile()
    return model


def _reference_clipped_sum(net, x, y, clip):
    """Independent reference: one GradientTape per example over the trainable weights,
    flat clipping of the example's whole gradient to ``clip``, summed."""
    total = [tf.zeros_like(v) for v in net.trainable_variables]
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            logits = net(x[i:i + 1], training=False)
            loss = tf.keras.losses.sparse_categorical_crossentropy(y[i:i + 1], logits, from_logits=True)[0]
        grads = tape.gradient(loss, net.trainable_variables)
        norm = tf.sqrt(tf.add_n([tf.reduce_sum(g ** 2) for g in grads]))
        scale = tf.minimum(1.0, clip / norm)
        total = [t + scale * g for t, g in zip(total, grads)]
    return total


@pytest.mark.parametrize("spec", ["all_but_last:1", "conv2d_0", "dense_0"])
def test_clipped_sum_covers_the_trainable_weights_only_and_equals_the_reference(batch, spec):
    x, y = batch
    net = _net()
    pretrain.freeze(net, spec)
    model = _trainer(net)
    xt, yt = tf.constant(x), tf.constant(y)
    clipped, _, norms, _ = model.clipped_sum(xt, xt, yt)
    assert len(clipped) == len(net.trainable_variables) < len(net.weights)
    reference = _reference_clipped_sum(net, x, y, 0.3)
    for got, want, v in zip(clipped, reference, net.trainable_variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-6, err_msg=v.name)
    # the norms are those of the trainable part alone: a frozen layer's gradient is not in them
    assert norms.shape == (len(x),)


def test_frozen_weights_are_bit_identical_after_a_dp_fit_and_the_rest_moves(batch):
    x, y = batch
    x = np.concatenate([x] * 5)
    y = np.concatenate([y] * 5)
    net = _net()
    frozen = pretrain.freeze(net, "all_but_last:2")
    layers = pretrain.stable_names(net)
    before = {name: [w.numpy().copy() for w in layer.weights] for name, layer in layers.items()}
    model = tdp.make_private(net, num_examples=len(x), expected_batch_size=12, noise_multiplier=1.0, delta=1e-3,
                             learning_rate=0.5)
    model.fit(x, y, epochs=2, verbose=0)
    assert model.steps > 0
    for name in frozen:
        for old, new in zip(before[name], layers[name].weights):
            assert np.array_equal(old, new.numpy()), name  # bit-identical: no gradient, no noise
    for name in ("dense_0", "dense_1"):
        assert not np.array_equal(before[name][0], layers[name].weights[0].numpy()), name


def test_guarantee_and_metadata_name_the_public_pretraining(tmp_path):
    rng = np.random.default_rng(0)
    net = build_model(ModelConfig(norm="group"))
    cfg = pretrain.PretrainConfig(source="digits", epochs=1, examples=300, freeze="all_but_last:1", seed=0)
    record = pretrain.prepare(net, cfg, private_dataset="mnist", log=lambda _: None)
    assert record.source == "digits" and record.examples == 300 and record.epochs == 1
    assert record.frozen and record.trainable == ("dense_1",)
    assert 0.0 <= record.public_accuracy <= 1.0
    x = rng.random((120, 28, 28, 1), dtype=np.float32)
    y = (np.arange(120) % 10).astype(np.int64)
    model = tdp.make_private(net, num_examples=len(x), expected_batch_size=30, noise_multiplier=1.0, delta=1e-3,
                             public_pretraining=record)
    model.fit(x, y, epochs=1, verbose=0)
    text = model.guarantee
    assert text.startswith(f"({model.epsilon():.3g}, 0.001)-DP")
    for needle in ("public pre-training", "outside the DP accounting", "touched no private data", "300 public images",
                   "scikit-learn's bundled 8x8 digits", "frozen (not updated under DP): " + ", ".join(record.frozen)):
        assert needle in text, needle
    meta = model.metadata()
    assert meta["public_pretraining"]["source"] == "digits"
    assert meta["public_pretraining"]["frozen"] == list(record.frozen) or meta["public_pretraining"]["frozen"] == \
        record.frozen
    assert "outside the DP accounting" in meta["public_pretraining"]["note"]
    # without pre-training the guarantee has no such clause
    plain = tdp.make_private(_net(), num_examples=len(x), expected_batch_size=30, noise_multiplier=1.0, delta=1e-3)
    plain.fit(x, y, epochs=1, verbose=0)
    assert "public pre-training" not in plain.guarantee


def test_weights_load_from_a_weights_file_and_from_an_export(tmp_path):
    from tfdprobust import export

    source = _net()
    for v in source.weights:
        v.assign(tf.random.normal(v.shape, seed=3))
    h5 = str(tmp_path / "w.weights.h5")
    source.save_weights(h5)
    target = _net()
    assert pretrain.load_weights(target, h5) == list(pretrain.stable_names(target))
    for a, b in zip(source.weights, target.weights):
        assert np.array_equal(a.numpy(), b.numpy())
    # an export (SavedModel) of a network whose classifier has another shape: the rest is copied
    other = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), *[tf.keras.layers.deserialize(
        tf.keras.layers.serialize(layer)) for layer in source.layers[:-1]], tf.keras.layers.Dense(5)])
    for mine, theirs in zip(other.layers[:-1], source.layers[:-1]):
        mine.set_weights(theirs.get_weights())
    path = export.export_model(other, str(tmp_path / "export"), {})
    target = _net()
    init = target.layers[-1].weights[0].numpy().copy()
    assert pretrain.load_weights(target, path) == ["conv2d_0", "group_normalization_0", "dense_0"]
    assert np.array_equal(target.layers[0].weights[0].numpy(), source.layers[0].weights[0].numpy())
    assert np.array_equal(target.layers[-1].weights[0].numpy(), init)  # shapes differ: kept
    with pytest.raises(UsageError, match="--pretrained_weights=.*does not exist"):
        pretrain.load_weights(target, str(tmp_path / "missing.h5"))
