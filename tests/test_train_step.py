"""The training step: one clipped gradient per example, paths agree, no state leaks."""

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import accounting, attacks, clipping, models, per_example, train_step
from tfdprobust.errors import UsageError
from tfdprobust.models import ModelConfig, build_model
from tfdprobust.train_step import DPConfig, PrivateRobustModel, TrainConfig, auto_chunk_rows, fit

ATTACK = attacks.AttackConfig(name="pgd_linf", eps=0.1, steps=3)


def _fixed_batches(x, y, size):
    """Fixed-size batches as an explicit dataset: PrivateRobustModel.fit refuses NumPy
    arrays under DP (Keras would batch them silently), and these tests check the step's
    mechanics, not the sampling."""
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(size)


def _model(tiny_images, norm="public_bn", net=None, **train_kwargs):
    _, _, public = tiny_images
    cfg = TrainConfig(expected_batch_size=8, attack=train_kwargs.pop("attack", ATTACK), **train_kwargs)
    model = PrivateRobustModel(build_model(net or ModelConfig(norm=norm), seed=5), cfg, public)
    model.compile()
    return model


def _batch(tiny_images, n=8):
    x, y, _ = tiny_images
    return tf.constant(x[:n]), tf.constant(y[:n])


@pytest.mark.tfprivacy
@pytest.mark.parametrize("adv_weight", [0.0, 0.5, 1.0])
def test_dp_paths_agree_without_noise(tiny_images, adv_weight):
    dp = DPConfig(l2_clip=0.05, noise_multiplier=0.0, path="tf_privacy")
    model = _model(tiny_images, dp=dp, adv_weight=adv_weight)
    x, y = _batch(tiny_images)
    model.refresh_public_statistics()
    x_adv = model.adversarial(x, y)
    variables = model.net.trainable_variables

    grads, _ = model.per_example_gradients(x, x_adv, y)
    fast_sum, norms = clipping.clipped_sum(grads, dp.l2_clip)
    assert np.all(norms.numpy() > dp.l2_clip)  # clipping is active, so the test means something

    tfp_optimizer = model.config.make_optimizer()
    with tf.GradientTape() as tape:
        losses, _ = model.example_losses(x, x_adv, y)
    tfp_mean = [g for g, _ in tfp_optimizer._compute_gradients(losses, variables, tape=tape)]
    for f, t in zip(fast_sum, tfp_mean):
        np.testing.assert_allclose(f.numpy(), t.numpy() * len(x), atol=1e-5)


def _norm(tensors):
    return np.sqrt(sum(np.sum(np.square(t)) for t in tensors))


@pytest.mark.parametrize("name", ["cnn", "lenet"])
@pytest.mark.parametrize("norm", ["none", "public_bn", "group"])
@pytest.mark.parametrize("adv_weight", [0.0, 0.5, 1.0])
def test_neighbouring_batches_move_the_clipped_sum_by_at_most_c(tiny_images, name, norm, adv_weight):
    """The whole pre-noise step (public-statistics refresh, attack without random start,
    row folding, clipping) run on a batch with and without example k: the clipped sum moves
    by at most C, and every other example's clipped gradient is unchanged."""
    x_all, y_all, public = tiny_images
    clip, n = 1e-3, 5
    cfg = TrainConfig(expected_batch_size=n, adv_weight=adv_weight,
                      attack=attacks.AttackConfig(name="pgd_linf", eps=0.1, steps=2, random_start=False),
                      dp=DPConfig(l2_clip=clip, noise_multiplier=0.0))
    model = PrivateRobustModel(build_model(ModelConfig(name=name, norm=norm), seed=5), cfg, public)

    def clipped_rows(x, y):
        model.refresh_public_statistics()
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
        for f, r in zip(full, rest):  # the others' contributions do not depend on example k
            np.testing.assert_allclose(f[keep], r, rtol=1e-4, atol=1e-9)


def _one_step_weights(tiny_images, insecure_noise_seed):
    x, y, _ = tiny_images
    tf.keras.utils.set_random_seed(0)  # same --seed, same initialization and batch
    dp = DPConfig(l2_clip=1.0, noise_multiplier=1.0, insecure_noise_seed=insecure_noise_seed)
    model = PrivateRobustModel(build_model(ModelConfig(norm="group"), seed=0),
                               TrainConfig(expected_batch_size=8, attack=None, dp=dp))
    model.compile()
    model.train_step((tf.constant(x[:8]), tf.constant(y[:8])))
    return np.concatenate([v.numpy().ravel() for v in model.net.trainable_variables])


def test_same_seed_gives_different_noise_unless_insecure(tiny_images):
    a, b = _one_step_weights(tiny_images, None), _one_step_weights(tiny_images, None)
    assert not np.allclose(a, b)
    c, d = _one_step_weights(tiny_images, 0), _one_step_weights(tiny_images, 0)
    np.testing.assert_array_equal(c, d)


class _RowGuard(tf.keras.layers.Layer):
    """Identity that fails whenever the network is run on a batch with no rows: on CPUs
    without AVX2, TensorFlow's oneDNN kernels return wrong shapes or abort on one, so the
    train step must never let a zero-row batch reach the network (on any CPU)."""

    def call(self, x):
        if x.shape[0] == 0:
            raise AssertionError("a zero-row batch reached the network")
        with tf.control_dependencies([tf.debugging.assert_positive(
                tf.shape(x)[0], message="a zero-row batch reached the network")]):
            return tf.identity(x)


per_example.register_per_example_layer(_RowGuard)


def _guarded_net():
    return tf.keras.Sequential([
        tf.keras.Input((28, 28, 1)), _RowGuard(), tf.keras.layers.Conv2D(4, 3, activation="relu"),
        tf.keras.layers.GroupNormalization(groups=2), tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("path", ["book_keeping", "vectorized_map"])
@pytest.mark.parametrize("adv_weight,clip", [(0.0, "flat"), (0.5, "flat"), (1.0, "automatic"), (0.5, "adaptive")])
def test_an_empty_poisson_batch_is_exactly_the_noise_on_every_dp_path(tiny_images, monkeypatch, compiled, path,
                                                                      adv_weight, clip):
    """An empty batch is a pure-noise step: the update is exactly -lr sigma C z / B with z the
    secret generator's next draws (replayed here from an insecure seed), adaptive clipping
    moves C by the noised count of zero examples, and the network never sees zero rows."""
    x, y, _ = tiny_images
    if path == "vectorized_map":
        monkeypatch.setattr(per_example, "supports", lambda net: False)
    sigma, c, b, lr, seed = 2.0, 0.5, 4, 0.1, 123
    dp = DPConfig(l2_clip=c, noise_multiplier=sigma, insecure_noise_seed=seed, clipping=clip)
    model = PrivateRobustModel(_guarded_net(), TrainConfig(
        expected_batch_size=b, learning_rate=lr, dp=dp, adv_weight=adv_weight, attack=ATTACK))
    model.compile()
    spec = (tf.TensorSpec([None, 28, 28, 1], tf.float32), tf.TensorSpec([None], tf.int64))
    step = tf.function(model.train_step, input_signature=[spec]) if compiled else model.train_step
    step((tf.constant(x[:3]), tf.constant(y[:3])))  # a real batch first: the same graph then meets an empty one
    before = [v.numpy().copy() for v in model.net.trainable_variables]
    bound = float(model.clip_bound.numpy())
    state = model.noise_generator.state.numpy().copy()
    logs = step((tf.zeros([0, 28, 28, 1]), tf.zeros([0], tf.int64)))

    replay = tf.random.Generator.from_state(state, alg="philox")
    for b0, v in zip(before, model.net.trainable_variables):
        noise = replay.normal(v.shape, stddev=sigma * bound).numpy()
        np.testing.assert_allclose(v.numpy() - b0, -lr * noise / b, rtol=1e-5, atol=1e-7)
    if clip == "adaptive":
        count = replay.normal([], stddev=b / 20.0).numpy()
        fraction = count / b + 0.5
        np.testing.assert_allclose(model.clip_bound.numpy(), bound * np.exp(-0.2 * (fraction - 0.5)), rtol=1e-5)
    assert int(logs["dropped"]) == 0


def test_an_empty_batch_without_dp_is_a_zero_gradient_not_nan(tiny_images):
    model = PrivateRobustModel(_guarded_net(), TrainConfig(expected_batch_size=4, dp=DPConfig(enabled=False),
                                                           attack=ATTACK))
    model.compile()
    before = [v.numpy().copy() for v in model.net.trainable_variables]
    model.train_step((tf.zeros([0, 28, 28, 1]), tf.zeros([0], tf.int64)))
    for b0, v in zip(before, model.net.trainable_variables):
        np.testing.assert_array_equal(v.numpy(), b0)


def test_empty_poisson_batch_is_a_pure_noise_step(tiny_images):
    model = _model(tiny_images, norm="group", dp=DPConfig(l2_clip=1.0, noise_multiplier=1.0), attack=None)
    before = [v.numpy().copy() for v in model.net.trainable_variables]
    empty_x, empty_y = tf.zeros([0, 28, 28, 1]), tf.zeros([0], tf.int64)
    model.train_step((empty_x, empty_y))
    moved = [np.abs(b - v.numpy()).max() for b, v in zip(before, model.net.trainable_variables)]
    assert all(np.isfinite(m) and m > 0 for m in moved)


def test_a_non_finite_example_does_not_poison_the_step(tiny_images):
    model = _model(tiny_images, norm="none", dp=DPConfig(l2_clip=1.0, noise_multiplier=0.0), attack=None)
    x, y = _batch(tiny_images)
    x = tf.tensor_scatter_nd_update(x, [[3, 0, 0, 0]], [np.nan])
    logs = model.train_step((x, y))
    assert int(logs["dropped"]) == 1
    assert all(np.all(np.isfinite(v.numpy())) for v in model.net.trainable_variables)


def test_attack_and_evaluation_update_no_state(tiny_images):
    model = _model(tiny_images)
    x, y = _batch(tiny_images)
    model.refresh_public_statistics()
    before = [v.numpy().copy() for v in model.net.variables]
    model.adversarial(x, y)
    model.evaluate(x, y, verbose=0)
    for b, v in zip(before, model.net.variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_train_step_with_zero_noise_applies_the_clipped_mean(tiny_images):
    dp = DPConfig(l2_clip=0.05, noise_multiplier=0.0)
    model = _model(tiny_images, norm="group", dp=dp, attack=None, learning_rate=1.0)
    x, y = _batch(tiny_images)
    grads, _ = model.per_example_gradients(x, x, y)
    expected, _ = clipping.clipped_sum(grads, dp.l2_clip)
    before = [v.numpy().copy() for v in model.net.trainable_variables]
    model.train_step((x, y))
    for b, v, g in zip(before, model.net.trainable_variables, expected):
        np.testing.assert_allclose(b - v.numpy(), g.numpy() / 8, atol=1e-6)


def test_noise_reaches_the_update_with_std_sigma_c_over_b(tiny_images):
    sigma, clip = 5.0, 1.0
    model = _model(tiny_images, norm="group", dp=DPConfig(l2_clip=clip, noise_multiplier=sigma),
                   attack=None, learning_rate=1.0)
    x, y = _batch(tiny_images)
    grads, _ = model.per_example_gradients(x, x, y)
    clean_mean = clipping.clipped_sum(grads, clip)[0][0].numpy() / 8
    before = model.net.trainable_variables[0].numpy().copy()
    model.train_step((x, y))
    residual = (before - model.net.trainable_variables[0].numpy()) - clean_mean
    # 1,024 kernel coordinates, each N(0, (sigma C / B)^2): the sample std is within 10%
    assert np.std(residual) == pytest.approx(sigma * clip / 8, rel=0.1)


@pytest.mark.parametrize("kwargs", [
    dict(dp=DPConfig(enabled=False)),
    dict(attack=None),
    pytest.param(dict(dp=DPConfig(path="tf_privacy"), attack=None), marks=pytest.mark.tfprivacy),
])
def test_baselines_train(tiny_images, kwargs):
    x, y, _ = tiny_images
    model = _model(tiny_images, **kwargs)
    history = model.fit(_fixed_batches(x, y, 8), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "rmsprop", "adagrad"])
def test_every_optimizer_trains_with_dp_and_pgd(tiny_images, tiny_dense_model, optimizer):
    # The one-layer network: the step's optimizer wiring does not depend on the network
    # (the CNN's DP + PGD step is trained above and in test_baselines_train).
    x, y, _ = tiny_images
    model = _model(tiny_images, net=tiny_dense_model, optimizer=optimizer)
    before = [v.numpy().copy() for v in model.net.trainable_variables]
    history = model.fit(_fixed_batches(x, y, 8), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert int(model.optimizer.iterations.numpy()) == 4
    assert all(np.any(a != b.numpy()) for a, b in zip(before, model.net.trainable_variables))


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_fit_traces_the_step_once(tiny_images, tiny_dense_model, optimizer):
    # Had the optimizer created its variables inside the first step, TensorFlow would
    # trace the whole DP step a second time (what PrivateRobustModel.fit prevents).
    x, y, _ = tiny_images
    model = _model(tiny_images, net=tiny_dense_model, optimizer=optimizer)
    model.fit(_fixed_batches(x, y, 8), epochs=1, verbose=0)
    assert model.train_function.experimental_get_tracing_count() == 1


def test_fit_reports_epsilon_per_epoch(tiny_images, tiny_dense_model):
    x, y, _ = tiny_images
    model = _model(tiny_images, net=tiny_dense_model, attack=None)
    spec = accounting.AccountingSpec(32, 8, 2, 7.1, 1e-3, "shuffle")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    history = fit(model, ds, steps_per_epoch=4, epochs=2, spec=spec, verbose=0)
    assert history.history["epsilon"] == pytest.approx(
        [accounting.epsilon(spec.replace(steps=4)), accounting.epsilon(spec.replace(steps=8))])


@pytest.mark.parametrize("layer", [
    tf.keras.layers.Lambda(lambda t: t - tf.reduce_mean(t, axis=0)),  # mixes the batch
    tf.keras.layers.UnitNormalization(),                              # unknown to us
])
def test_unknown_layers_are_refused_under_dp_naming_the_layer(layer):
    net = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), tf.keras.layers.Flatten(), layer,
                               tf.keras.layers.Dense(10)])
    with pytest.raises(UsageError, match=f"layer {layer.name} .*not known to be per-example"):
        PrivateRobustModel(net, TrainConfig())
    PrivateRobustModel(net, TrainConfig(dp=DPConfig(enabled=False)))  # fine without DP


def test_known_per_example_layers_pass_and_rule_less_layers_take_the_exact_path(tiny_images):
    net = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), tf.keras.layers.Conv2D(4, 3),
                               tf.keras.layers.DepthwiseConv2D(3), tf.keras.layers.Dropout(0.5),
                               tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])
    model = PrivateRobustModel(net, TrainConfig(expected_batch_size=4, attack=None))
    assert per_example.supports(net)  # DepthwiseConv2D has no rule: it alone takes the per-layer fallback
    assert per_example.rule_for(net.layers[1]) is None
    x, y = _batch(tiny_images, 4)
    grads, _ = model.per_example_gradients(x, x, y)
    assert [g.shape[0] for g in grads] == [4] * len(net.trainable_variables)
    slow, _ = per_example.vectorized_map_gradients(net, x, y, tf.ones([4]))
    for g, s in zip(grads, slow):
        np.testing.assert_allclose(g.numpy(), s.numpy(), rtol=1e-4, atol=1e-6)
    grouped = tf.keras.Sequential([tf.keras.Input((8, 8, 4)), tf.keras.layers.Conv2D(4, 3, groups=2)])
    assert per_example.rule_for(grouped.layers[0]) is None  # not the dense-conv rule (wrong shapes)


def test_batch_normalization_is_refused_under_dp():
    net = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), tf.keras.layers.Conv2D(2, 3),
                               tf.keras.layers.BatchNormalization(), tf.keras.layers.Flatten(),
                               tf.keras.layers.Dense(10)])
    with pytest.raises(UsageError, match="--norm=public_bn"):
        PrivateRobustModel(net, TrainConfig())


def test_public_norm_without_public_images_is_refused():
    with pytest.raises(UsageError, match="--public_examples"):
        PrivateRobustModel(build_model(ModelConfig(norm="public_bn")), TrainConfig())


@pytest.mark.parametrize("kwargs,flag", [
    (dict(learning_rate=0), "--learning_rate"), (dict(adv_weight=1.5), "--adv_weight"),
    (dict(learning_rate=1e30), "--learning_rate"),
    (dict(optimizer="lion"), "optimizer"),
])
def test_bad_train_config_names_the_flag(kwargs, flag):
    with pytest.raises(UsageError, match=flag):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("kwargs,flag", [(dict(l2_clip=0), "--l2_clip"), (dict(noise_multiplier=-1), "--noise"),
                                         (dict(l2_clip=float("inf")), "--l2_clip"),
                                         (dict(noise_multiplier=float("inf")), "--noise"),
                                         (dict(path="jax"), "--dp_path"), (dict(chunk_rows=1), "--dp_chunk_rows")])
def test_bad_dp_config_names_the_flag(kwargs, flag):
    with pytest.raises(UsageError, match=flag):
        DPConfig(**kwargs)


@pytest.mark.parametrize("on", [False, True])
def test_clip_bias_cosine_is_opt_in_and_equals_the_per_example_reference(tiny_images, tiny_dense_model, on):
    """With the flag, the step's cosine is that of the clipped and unclipped sums of the
    written-out per-example gradients; without it, the key is absent (no second sum)."""
    x, y = _batch(tiny_images)
    model = _model(tiny_images, net=tiny_dense_model, dp=DPConfig(l2_clip=0.05, clip_bias_cosine=on))
    x_adv = model.adversarial(x, y)
    _, _, diag = model.private_step(x, x_adv, y)
    assert ("diag_clip_bias_cosine" in diag) == on
    assert {"diag_clipped_fraction", "diag_snr", "clip_bound"} <= set(diag)
    if on:
        grads, _ = model.per_example_gradients(x, x_adv, y)
        flat = np.concatenate([g.numpy().reshape(len(x), -1) for g in grads], 1)
        norms = np.linalg.norm(flat, axis=1)
        clipped = (flat * np.minimum(1, 0.05 / norms)[:, None]).sum(0)
        cosine = clipped @ flat.sum(0) / np.linalg.norm(clipped) / np.linalg.norm(flat.sum(0))
        assert float(diag["diag_clip_bias_cosine"]) == pytest.approx(cosine, abs=1e-5) and cosine < 0.9999


@pytest.mark.tfprivacy
def test_the_tensorflow_privacy_path_refuses_an_empty_batch_in_one_line(tiny_images):
    """tensorflow-privacy divides by the batch's size; its path runs only on fixed-size
    (shuffled) batches, and an empty one is refused with a message naming the fix."""
    model = _model(tiny_images, norm="group", dp=DPConfig(path="tf_privacy"), attack=None)
    with pytest.raises(tf.errors.InvalidArgumentError, match="--dp_path=vectorized"):
        model.train_step((tf.zeros([0, 28, 28, 1]), tf.zeros([0], tf.int64)))


def test_without_tensorflow_privacy_its_path_is_refused_in_one_line_naming_the_extra(monkeypatch):
    from tfdprobust import compat

    monkeypatch.setattr(compat, "has_tf_privacy", lambda: False)
    with pytest.raises(UsageError) as err:
        TrainConfig(dp=DPConfig(path="tf_privacy"))
    assert "--dp_path=tf_privacy" in str(err.value) and "[tfprivacy]" in str(err.value)
    assert "--dp_path=vectorized" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("dp,second_conv", [(True, False), (False, False), (True, True)])
def test_the_xla_compiled_step_equals_the_graph_step(tiny_images, dp, second_conv):
    """TrainConfig.jit_compile (--jit_compile) compiles the whole step, the PGD loop included,
    with XLA: one step from the same weights on the same batch gives the same weights (no noise,
    no random start, so both steps are deterministic) up to float rounding. ``second_conv``: a
    convolution with 8 input channels at 13 x 13 positions, whose per-example gradients take
    the filter-gradient-op layout (a loop over the rows, ConvFactors.layout)."""
    x, y, _ = tiny_images
    attack = attacks.AttackConfig(name="pgd_linf", eps=0.1, steps=2, random_start=False)
    def small_net():
        tf.keras.utils.set_random_seed(0)
        L = tf.keras.layers
        extra = [L.Conv2D(8, 3, padding="same", activation="tanh")] if second_conv else []
        return tf.keras.Sequential([tf.keras.Input((28, 28, 1)), L.Conv2D(4 if not second_conv else 8, 3, strides=2),
                                    L.GroupNormalization(2), L.Activation("tanh"), *extra,
                                    L.Flatten(), L.Dense(10)])

    weights = []
    for jit in (False, True):
        net = small_net()
        cfg = TrainConfig(expected_batch_size=8, attack=attack, jit_compile=jit,
                          dp=DPConfig(enabled=dp, l2_clip=0.1, noise_multiplier=0.0))
        model = PrivateRobustModel(net, cfg)
        model.compile()
        assert model._jit_compile is jit  # noqa: SLF001  (Keras' record of the compile option)
        batches = iter(tf.data.Dataset.from_tensors((tf.constant(x[:8]), tf.constant(y[:8]))).repeat())
        model.make_train_function()(batches)
        weights.append(np.concatenate([v.numpy().ravel() for v in net.trainable_variables]))
    initial = np.concatenate([v.numpy().ravel() for v in small_net().trainable_variables])
    assert np.abs(weights[0] - initial).max() > 1e-4  # the step moved the weights
    np.testing.assert_allclose(weights[1], weights[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch, attack, adv_weight, chunk_rows, expected", [
    (250, None, 0.5, None, None),       # 250 rows: one pass (faster there)
    (250, ATTACK, 0.5, None, 128),      # 500 rows (adversarial + clean): chunks of 128 rows
    (250, ATTACK, 1.0, None, None),     # adversarial rows only: 250 rows, one pass
    (128, ATTACK, 0.5, None, None),     # exactly 256 rows: one pass
    (257, None, 0.5, None, 128),
    (1000, None, 0.5, 0, None),         # 0: one pass, whatever the size
    (64, None, 0.5, 32, 32),            # given: used as is
])
def test_the_clipped_sum_chunks_by_the_documented_rule_of_the_expected_rows(batch, attack, adv_weight, chunk_rows,
                                                                          expected):
    model = PrivateRobustModel(build_model(ModelConfig(norm="none"), seed=0), TrainConfig(
        expected_batch_size=batch, attack=attack, adv_weight=adv_weight, dp=DPConfig(chunk_rows=chunk_rows)))
    assert model.chunk_rows == expected


def test_the_default_chunk_size_switches_above_256_expected_rows():
    assert [auto_chunk_rows(n) for n in (1, 128, 256, 257, 500, 2000)] == [None, None, None, 128, 128, 128]


def test_the_default_chunks_hold_at_most_the_documented_written_out_floats():
    """Above 2 x AUTO_CHUNK_FLOATS written-out floats per batch, chunks of whole examples
    holding AUTO_CHUNK_FLOATS; the row rule still applies, and the smaller chunk wins."""
    floats = train_step.AUTO_CHUNK_FLOATS
    per_example = 267_408  # ResNet-20's convolution weights
    fit = floats // per_example
    assert fit == 62
    assert auto_chunk_rows(64, 1, per_example) is None            # 17 M floats: one pass
    assert auto_chunk_rows(250, 1, per_example) == fit            # 67 M: chunks of 62 examples
    assert auto_chunk_rows(500, 2, per_example) == 2 * fit        # with the attack: 124 rows < 128
    assert auto_chunk_rows(250, 1, floats) == 1                   # an example alone over the budget: one per chunk
    assert auto_chunk_rows(250, 1, 9_264) is None                 # the CNN: neither rule
    assert auto_chunk_rows(2000, 1, 9_264) == 128                 # the row rule alone
    n = 2 * floats // per_example                                 # the threshold itself: one pass
    assert auto_chunk_rows(n, 1, per_example) is None and auto_chunk_rows(n + 1, 1, per_example) == fit


def test_written_out_floats_counts_the_convolutions_weights_only():
    net = build_model(ModelConfig(name="lenet", norm="none"), seed=0)
    convs = [layer for layer in net.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    dense = [layer for layer in net.layers if isinstance(layer, tf.keras.layers.Dense)]
    assert convs and dense
    expected = sum(int(np.prod(w.shape)) for layer in convs for w in layer.trainable_weights)
    assert per_example.costs.written_out_floats(net) == expected < models.count_parameters(net)
    # Nested: a network inside another model counts the same (the docstring's promise).
    outer = tf.keras.Sequential([tf.keras.Input((28, 28, 1)), net, tf.keras.layers.Dense(3)])
    assert per_example.costs.written_out_floats(outer) == expected


def test_resnet20_at_b250_takes_the_memory_chunks_by_default():
    net = build_model(ModelConfig(name="resnet20", norm="group"), seed=0)
    floats = per_example.costs.written_out_floats(net)
    assert floats > 2 * train_step.AUTO_CHUNK_FLOATS // 250
    model = PrivateRobustModel(net, TrainConfig(expected_batch_size=250, attack=None, dp=DPConfig()))
    assert model.chunk_rows == train_step.AUTO_CHUNK_FLOATS // floats
    with_attack = PrivateRobustModel(net, TrainConfig(expected_batch_size=250, attack=ATTACK, adv_weight=0.5,
                                                      dp=DPConfig()))
    assert with_attack.chunk_rows == 2 * (train_step.AUTO_CHUNK_FLOATS // floats)  # 124 rows, below 128
