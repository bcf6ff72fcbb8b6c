"""Ghost / book-keeping clipping: per-layer norms chosen by cost, the clipped sum from one
weight-gradient op per layer, checked against the slowest reference there is (one
``GradientTape`` per example, clip, sum)."""

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import attacks, clipping, layers, per_example, randomness, sampling
from tfdprobust.per_example import driver
from tfdprobust.models import ModelConfig, build_model
from tfdprobust.normalization import PublicBatchNormalization, update_public_statistics
from tfdprobust.train_step import DPConfig, PrivateRobustModel, TrainConfig
from per_example_util import per_example_reference

L = tf.keras.layers
FORCED = ("ghost", "materialized", "auto")


def _fixed_batches(x, y, size):
    """Fixed-size batches as an explicit dataset: PrivateRobustModel.fit refuses NumPy
    arrays under DP (Keras would batch them silently), and these tests check the step's
    mechanics, not the sampling."""
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(size)


@pytest.fixture
def float64():
    tf.keras.backend.set_floatx("float64")
    yield
    tf.keras.backend.set_floatx("float32")


def _rows(n, copies, shape, seed, dtype):
    """``copies * n`` rows (example i owns rows i, n + i, ...), labels and unequal weights."""
    rng = np.random.default_rng(seed)
    x = rng.random((copies * n, *shape)).astype(dtype)
    y = np.tile(np.arange(n) % 3, copies).astype(np.int64)
    w = rng.uniform(0.2, 1.5, copies * n).astype(dtype)
    return tf.constant(x), tf.constant(y), tf.constant(w)


def _clipped_reference(grads, bound):
    norms = np.sqrt(sum((g.reshape(len(g), -1) ** 2).sum(1) for g in grads))
    scale = np.minimum(1.0, bound / np.maximum(norms, 1e-12))
    return [np.tensordot(scale, g, axes=1) for g in grads], norms


def _check(net, x, y, w, copies, rtol=1e-5, compiled=False):
    """Norms and clipped sums of every method equal the reference; returns the auto methods."""
    ref = per_example_reference(net, x, y, w, copies)
    ref_squared = [(g.reshape(len(g), -1) ** 2).sum(1) for g in ref]
    bound = float(np.median(np.sqrt(sum(ref_squared))))  # about half the examples are clipped
    ref_sum, ref_norms = _clipped_reference(ref, bound)
    assert (ref_norms > bound).any() and (ref_norms < bound).any()
    methods = None
    for method in FORCED:
        squared, _, methods = per_example.squared_norms(net, x, y, w, copies, method)
        for s, r, v in zip(squared, ref_squared, net.trainable_variables):
            np.testing.assert_allclose(s.numpy(), r, rtol=rtol, atol=rtol * r.max(), err_msg=f"{method} {v.name}")
        def run(method=method):
            out = per_example.clipped_sum(net, x, y, w, bound, copies, method=method)
            return out.clipped, out.norms

        clipped, norms = tf.function(run)() if compiled and method == "auto" else run()
        np.testing.assert_allclose(norms.numpy(), ref_norms, rtol=rtol)
        for s, r, v in zip(clipped, ref_sum, net.trainable_variables):
            np.testing.assert_allclose(s.numpy(), r, rtol=rtol, atol=rtol * np.abs(r).max(), err_msg=f"{method} {v.name}")
    return methods


# --------------------------------------------------------------------------- every registered layer
LAYER_CASES = {
    "dense": lambda: [L.Flatten(), L.Dense(5, activation="tanh")],
    "dense_no_bias": lambda: [L.Flatten(), L.Dense(5, use_bias=False)],
    "dense_on_a_sequence": lambda: [L.Reshape((6, -1)), L.Dense(4, activation="tanh")],  # T = 6 positions
    "conv_valid": lambda: [L.Conv2D(3, 3, activation="tanh")],
    "conv_same_stride2_even_kernel": lambda: [L.Conv2D(3, 4, strides=2, padding="same")],
    "conv_valid_stride2": lambda: [L.Conv2D(3, 3, strides=2)],
    "conv_same_stride2_odd_size": lambda: [L.Conv2D(3, 3, strides=2, padding="same")],
    "conv_valid_stride_2x1_kernel_3x2": lambda: [L.Conv2D(3, (3, 2), strides=(2, 1))],
    "conv_same_dilated": lambda: [L.Conv2D(3, 3, dilation_rate=2, padding="same")],
    "conv_valid_dilated_2x1": lambda: [L.Conv2D(3, 3, dilation_rate=(2, 1), use_bias=False)],
    "conv_1x1": lambda: [L.Conv2D(3, 1)],
    "public_bn": lambda: [L.Conv2D(4, 3), PublicBatchNormalization(), L.Activation("tanh")],
    "group_norm": lambda: [L.Conv2D(4, 3), L.GroupNormalization(2), L.Activation("tanh")],
    "group_norm_scale_only": lambda: [L.Conv2D(4, 3), L.GroupNormalization(2, center=False), L.Activation("tanh")],
    "ws_conv": lambda: [layers.WSConv2D(3, 3), L.Activation("tanh")],
}


def _layer_net(case, channels):
    net = tf.keras.Sequential([tf.keras.Input((9, 9, channels)), *LAYER_CASES[case](), L.Flatten(), L.Dense(3)])
    if any(isinstance(layer, PublicBatchNormalization) for layer in net.layers):
        update_public_statistics(net, tf.constant(np.random.default_rng(9).random((16, 9, 9, channels))))
    return net


@pytest.mark.parametrize("channels", [2, 8])  # the unfolded and the per-offset convolution paths
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_every_registered_layer_ghost_materialized_and_reference_agree(float64, case, channels):
    """float64, two copies per example (clean + adversarial rows): ghost norms = materialized
    norms = the per-example tape, and so do the flat-clipped sums."""
    tf.keras.utils.set_random_seed(1)
    net = _layer_net(case, channels)
    assert per_example.supports(net)
    x, y, w = _rows(5, 2, (9, 9, channels), seed=2, dtype=np.float64)
    methods = _check(net, x, y, w, copies=2)
    assert "fallback" not in methods.values()


def test_registered_layer_types_are_all_covered():
    covered = {type(layer) for case in LAYER_CASES for layer in LAYER_CASES[case]()}
    registered = set(per_example.REGISTRY._layer_class_dict.values())  # noqa: SLF001
    assert registered <= covered


@pytest.mark.parametrize("name,norm", [("cnn", "public_bn"), ("lenet", "group")])
def test_sequential_models_float32(tiny_images, name, norm):
    x_all, y_all, public = tiny_images
    net = build_model(ModelConfig(name=name, norm=norm, activation="tanh"), seed=3)
    if norm == "public_bn":
        update_public_statistics(net, tf.constant(public))
    x = tf.constant(x_all[:12])
    y = tf.constant(y_all[:12])
    w = tf.constant(np.r_[np.full(6, 0.5), np.full(6, 0.5)].astype(np.float32))
    methods = _check(net, x, y, w, copies=2, compiled=True)
    assert set(methods.values()) == {"ghost", "materialized"}


@pytest.mark.parametrize("norm", ["group", "public_bn"])
def test_functional_resnet20_float64(float64, norm):
    tf.keras.utils.set_random_seed(0)
    net = build_model(ModelConfig(name="resnet20", norm=norm, input_shape=(8, 8, 3), groups=4), seed=0)
    if norm == "public_bn":
        update_public_statistics(net, tf.constant(np.random.default_rng(1).random((16, 8, 8, 3))))
    x, y, w = _rows(4, 2, (8, 8, 3), seed=4, dtype=np.float64)
    _check(net, x, y, w, copies=2)


def test_shared_layers_join_their_uses_in_one_norm(float64):
    """A conv and a dense layer each used twice: an example's norm is that of the sum of
    its per-use gradients (joined factors), not a sum of per-use norms."""
    tf.keras.utils.set_random_seed(2)
    inputs = tf.keras.Input((7, 7, 2))
    conv = L.Conv2D(2, 3, padding="same", activation="tanh")
    h = L.Add()([conv(conv(inputs)), inputs])
    h = L.Flatten()(h)
    dense = L.Dense(h.shape[-1], activation="tanh")
    h = L.Concatenate()([dense(dense(h)), h])
    net = tf.keras.Model(inputs, L.Dense(3)(h))
    x, y, w = _rows(4, 2, (7, 7, 2), seed=5, dtype=np.float64)
    _check(net, x, y, w, copies=2)


# --------------------------------------------------------------------------- the cost chooser
def test_the_cost_chooser_takes_the_cheaper_computed_cost():
    early = (32 * 32, 3 * 3 * 16, 16)   # many positions, few channels (ResNet-20 stage 1)
    late = (2 * 2, 3 * 3 * 256, 256)    # few positions, many channels
    dense = (1, 800, 500)               # LeNet's hidden dense layer
    for dims in (early, late, dense):
        for sums in (1, 2):
            costs = per_example.norm_costs(*dims, sums=sums)
            assert per_example.choose_method(*dims, sums=sums) == min(costs, key=costs.get)
    assert per_example.norm_costs(*early)["materialized"] < per_example.norm_costs(*early)["ghost"]
    assert per_example.norm_costs(*late)["ghost"] < per_example.norm_costs(*late)["materialized"]
    assert per_example.norm_costs(*dense)["ghost"] < per_example.norm_costs(*dense)["materialized"]
    assert per_example.choose_method(None, 10, 10) == "materialized"  # unknown T: never guess
    # LeNet's dense kernel under PGD (clean + adversarial rows: T = 2) with two sums: writing
    # out 800 x 500 floats per example must not win on multiply-adds alone.
    assert per_example.choose_method(2, 800, 500, sums=2) == "ghost"


def test_lenet_layers_get_the_method_of_their_computed_costs(tiny_images):
    x, y, _ = tiny_images
    net = build_model(ModelConfig(name="lenet", norm="none"), seed=0)
    _, _, methods = per_example.squared_norms(net, tf.constant(x[:2]), tf.constant(y[:2]), tf.ones([2]))
    for layer in net.layers:
        if not layer.trainable_weights:
            continue
        kernel = layer.kernel
        positions = int(np.prod(layer.output_shape[1:-1])) if isinstance(layer, L.Conv2D) else 1
        d, p = int(np.prod(kernel.shape[:-1])), int(kernel.shape[-1])
        assert methods[kernel.name] == per_example.choose_method(positions, d, p), layer.name
    assert {methods[v.name] for v in net.trainable_variables if "kernel" in v.name} == {"ghost", "materialized"}


# --------------------------------------------------------------------------- per-layer fallback
def test_grouped_conv_falls_back_per_layer_and_gives_the_reference_sum(tiny_images):
    tf.keras.utils.set_random_seed(3)
    net = tf.keras.Sequential([tf.keras.Input((8, 8, 4)), L.Conv2D(4, 3, groups=2, activation="tanh"),
                               L.Conv2D(3, 3), L.Flatten(), L.Dense(3)])
    assert per_example.supports(net) and per_example.rule_for(net.layers[0]) is None
    x, y, w = _rows(5, 2, (8, 8, 4), seed=6, dtype=np.float32)
    methods = _check(net, x, y, w, copies=2, rtol=2e-5, compiled=True)
    assert methods[net.layers[0].kernel.name] == "fallback"
    assert methods[net.layers[1].kernel.name] != "fallback"  # the rest keeps its rules
    # and the whole private step runs compiled
    model = PrivateRobustModel(net, TrainConfig(expected_batch_size=5, attack=None,
                                                dp=DPConfig(noise_multiplier=0.0)))
    model.compile()
    history = model.fit(_fixed_batches(x[:5], y[:5], 5), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_depthwise_conv_falls_back_per_layer(float64):
    tf.keras.utils.set_random_seed(4)
    net = tf.keras.Sequential([tf.keras.Input((7, 7, 3)), L.DepthwiseConv2D(3, activation="tanh"),
                               L.Conv2D(2, 3), L.Flatten(), L.Dense(3)])
    x, y, w = _rows(4, 1, (7, 7, 3), seed=7, dtype=np.float64)
    methods = _check(net, x, y, w, copies=1)
    assert methods[net.layers[0].depthwise_kernel.name] == "fallback"


RULE_LESS = {  # every trainable per-example layer the safety list admits without a rule
    "conv1d": ((9, 3), lambda: [L.Conv1D(2, 3)]),
    "grouped_conv1d": ((9, 4), lambda: [L.Conv1D(4, 3, groups=2)]),
    "conv3d": ((4, 4, 4, 2), lambda: [L.Conv3D(2, 2)]),
    "depthwise": ((6, 6, 2), lambda: [L.DepthwiseConv2D(3)]),
    "separable": ((6, 6, 2), lambda: [L.SeparableConv2D(3, 3)]),
    "transpose": ((5, 5, 2), lambda: [L.Conv2DTranspose(2, 3, strides=2)]),
    "layer_norm": ((6, 4), lambda: [L.LayerNormalization()]),
    "einsum_dense": ((6, 4), lambda: [L.EinsumDense("btd,de->bte", output_shape=(6, 3), bias_axes="e")]),
    "embedding": ((5,), lambda: [L.Lambda(lambda t: tf.cast(tf.abs(t) * 7, tf.int32) % 7), L.Embedding(7, 3)]),
}


@pytest.mark.parametrize("case", sorted(RULE_LESS))
def test_every_admitted_rule_less_layer_takes_the_fallback_compiled(float64, case):
    """``supports`` accepts these networks, so the compiled book-keeping step must trace and
    give the reference clipped sum (the rule-less layer alone on the exact fallback)."""
    shape, make = RULE_LESS[case]
    tf.keras.utils.set_random_seed(6)
    net = tf.keras.Sequential([tf.keras.Input(shape), *make(), L.Flatten(), L.Dense(3)])
    assert per_example.supports(net)
    x, y, w = _rows(4, 2, shape, seed=8, dtype=np.float64)
    methods = _check(net, x, y, w, copies=2, compiled=True)
    assert "fallback" in methods.values()


def test_what_the_walk_cannot_follow_is_not_accepted():
    """``supports`` is false for a rule-less layer with two inputs (it could not take the
    per-layer fallback); the train step then takes the whole-network vectorized path."""

    @per_example.register_per_example_layer
    class Bilinear(L.Layer):
        def build(self, shapes):
            self.w = self.add_weight(name="w", shape=(shapes[0][-1], shapes[1][-1]))

        def call(self, inputs):
            a, b = inputs
            return tf.reduce_sum(tf.matmul(a, self.w) * b, axis=-1, keepdims=True) + a

    inputs = tf.keras.Input((4,))
    h = L.Dense(4)(inputs)
    net = tf.keras.Model(inputs, L.Dense(3)(Bilinear()([h, inputs])))
    assert not per_example.supports(net)
    model = PrivateRobustModel(net, TrainConfig(expected_batch_size=4, attack=None))
    model.compile()
    x = np.random.default_rng(0).random((8, 4), np.float32)
    history = model.fit(_fixed_batches(x, np.arange(8) % 3, 4), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


# --------------------------------------------------------------------------- strategies, drops, tf-privacy
@pytest.mark.parametrize("strategy", ["flat", "per_layer", "automatic", "adaptive"])
def test_every_clipping_strategy_equals_the_rows_path(tiny_images, strategy):
    x, y, _ = tiny_images
    x, y, w = tf.constant(x[:8]), tf.constant(y[:8]), tf.ones([8])
    net = build_model(ModelConfig(name="lenet", norm="group"), seed=1)
    grads, _ = per_example.per_example_gradients(net, x, y, w)
    rows, norms = clipping.clip(grads, 0.5, strategy, 0.01)
    out = per_example.clipped_sum(net, x, y, w, 0.5, clipping_name=strategy, gamma=0.01)
    np.testing.assert_allclose(out.norms.numpy(), norms.numpy(), rtol=1e-5)
    for s, r in zip(out.clipped, rows):
        np.testing.assert_allclose(s.numpy(), r.numpy().sum(0), rtol=1e-4, atol=1e-6)


def test_a_non_finite_example_adds_exactly_nothing_on_both_paths(tiny_images):
    """Example 2 has a NaN pixel: it is dropped, from the ghost (dense) and the materialized
    (conv) layers alike, and the rest sum as if it were absent."""
    x_all, y_all, _ = tiny_images
    x = x_all[:6].copy()
    x[2, 3, 3, 0] = np.nan
    net = build_model(ModelConfig(name="lenet", norm="none"), seed=2)
    keep = [0, 1, 3, 4, 5]

    @tf.function
    def run(a, b):
        out = per_example.clipped_sum(net, a, b, tf.ones([tf.shape(b)[0]]), 0.1, unclipped=True)
        return out.clipped + out.unclipped, out.norms

    sums, norms = run(tf.constant(x), tf.constant(y_all[:6]))
    rest, _ = run(tf.constant(x[keep]), tf.constant(y_all[:6][keep]))
    assert int(clipping.dropped_count(norms)) == 1
    _, _, methods = per_example.squared_norms(net, tf.constant(x[:1]), tf.constant(y_all[:1]), tf.ones([1]))
    assert set(methods.values()) == {"ghost", "materialized"}
    for a, b in zip(sums, rest):
        assert np.all(np.isfinite(a.numpy()))
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_an_empty_batch_gives_zero_sums_compiled(tiny_images):
    net = build_model(ModelConfig(name="cnn", norm="group"), seed=0)

    @tf.function
    def run(a, b):
        out = per_example.clipped_sum(net, a, b, tf.ones([tf.shape(b)[0]]), 1.0, copies=2, unclipped=True)
        return out.clipped + out.unclipped, out.norms

    sums, norms = run(tf.zeros([0, 28, 28, 1]), tf.zeros([0], tf.int64))
    assert norms.shape == (0,)
    assert all(float(tf.reduce_max(tf.abs(s))) == 0.0 for s in sums)


@pytest.mark.tfprivacy
def test_the_registry_is_a_tensorflow_privacy_layer_registry(tiny_images):
    """tensorflow-privacy's own ghost-norm driver, given our registry, gets our norms on a
    convolutional network (its default registry has no Conv2D)."""
    from tensorflow_privacy.privacy.fast_gradient_clipping import clip_grads
    from tensorflow_privacy.privacy.fast_gradient_clipping.layer_registry import LayerRegistry

    assert isinstance(per_example.REGISTRY, LayerRegistry)
    x, y, _ = tiny_images
    x, y = tf.constant(x[:6]), tf.constant(y[:6])
    net = build_model(ModelConfig(name="lenet", norm="group"), seed=4)

    def loss_fn(labels, logits, weights):
        del weights
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)

    theirs = clip_grads.compute_gradient_norms(net, per_example.REGISTRY, x, y, per_example_loss_fn=loss_fn)
    squared, _, _ = per_example.squared_norms(net, x, y, tf.ones([6]))
    np.testing.assert_allclose(theirs.numpy(), np.sqrt(sum(s.numpy() for s in squared)), rtol=1e-5)
    grouped = L.Conv2D(4, 3, groups=2)
    grouped.build((None, 6, 6, 4))
    assert not per_example.REGISTRY.is_elem(grouped)


# --------------------------------------------------------------------------- the step in the graph
class _CountingModel(PrivateRobustModel):
    """Counts Python executions of the step and of the attack (each is a trace when compiled)
    and records every step's batch size from inside the graph."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.traces = {"train_step": 0, "adversarial": 0}
        self.eager_attack = []
        self.sizes = tf.Variable(tf.fill([16], -1), trainable=False)
        self.calls = tf.Variable(0, trainable=False)

    def train_step(self, data):
        self.traces["train_step"] += 1
        self.sizes.scatter_nd_update([[self.calls]], [tf.shape(data[0])[0]])
        self.calls.assign_add(1)
        return super().train_step(data)

    def adversarial(self, x, y):
        self.traces["adversarial"] += 1
        self.eager_attack.append(tf.executing_eagerly())
        return super().adversarial(x, y)


def test_poisson_batches_of_varying_size_do_not_retrace_and_the_attack_is_compiled_in(tiny_images):
    """Poisson sampling (the secret mask drawn inside tf.data) gives batches of varying size;
    the compiled step is traced once (Keras compiles it with reduce_retracing, and the
    dataset's batch axis is unknown) and the PGD attack runs inside it, never eagerly."""
    x, y, _ = tiny_images
    sampler = sampling.PoissonSampler(len(x), 8)
    dataset = sampler.dataset(x, y, randomness.noise_generator(insecure_seed=0))
    assert dataset.element_spec[0].shape[0] is None
    cfg = TrainConfig(expected_batch_size=8, dp=DPConfig(noise_multiplier=1.0),
                      attack=attacks.AttackConfig(name="pgd_linf", eps=0.1, steps=2))
    model = _CountingModel(build_model(ModelConfig(norm="group"), seed=0), cfg)
    model.compile()
    model.fit(dataset, steps_per_epoch=1, epochs=1, verbose=0)
    # The first call may trace twice (tf.function lifts the variables it creates, e.g. the
    # optimizer's); what matters is that later batches of other sizes add no trace.
    first = dict(model.traces)
    first_count = model.train_function.experimental_get_tracing_count()
    model.fit(dataset, steps_per_epoch=10, epochs=1, verbose=0)
    sizes = model.sizes.numpy()[:11]
    assert len(set(sizes.tolist())) > 2, sizes  # the sizes really varied
    assert model.traces == first and first["train_step"] <= 2, model.traces
    assert model.train_function.experimental_get_tracing_count() == first_count
    assert first["adversarial"] == first["train_step"] and not any(model.eager_attack)


def test_group_norm_statistics_are_computed_once_per_use(float64, monkeypatch):
    """The rule keeps the x̂ of its forward pass for the scale's per-example gradient: the
    group moments are computed once, not by Keras' layer and again by the rule."""
    net = _layer_net("group_norm", 2)
    x, y, w = _rows(3, 1, (9, 9, 2), seed=2, dtype=np.float64)
    calls = {"keras": 0, "moments": 0}
    keras_call, moments = L.GroupNormalization.call, tf.nn.moments

    def counted_call(self, *args, **kwargs):
        calls["keras"] += 1
        return keras_call(self, *args, **kwargs)

    def counted_moments(*args, **kwargs):
        calls["moments"] += 1
        return moments(*args, **kwargs)

    monkeypatch.setattr(L.GroupNormalization, "call", counted_call)
    monkeypatch.setattr(tf.nn, "moments", counted_moments)
    per_example.clipped_sum(net, x, y, w, 1.0)
    assert calls == {"keras": 0, "moments": 1}


def _ancestors(tensor: tf.Tensor) -> set:
    """Every op ``tensor`` waits for, through data and control edges."""
    seen, todo = set(), [tensor.op]
    while todo:
        op = todo.pop()
        if op in seen:
            continue
        seen.add(op)
        todo.extend(t.op for t in op.inputs)
        todo.extend(op.control_inputs)
    return seen


def test_each_layer_norm_is_computed_before_the_backward_pass_goes_below_it(float64):
    """The clipped sum taps every layer's pre-activation: its norms (ghost or materialized)
    exist before the backward pass continues to the layer below, so the one-thread executor
    never holds every layer's output gradient at once. Dense and Conv2D with an activation
    inside the layer are tapped too; a shared layer waits for all of its uses."""
    shared = L.Dense(4, activation="tanh")
    inputs = L.Input((6, 6, 2))
    h = L.Conv2D(3, 3, activation="relu")(inputs)
    h = L.GroupNormalization(groups=1)(h)
    h = L.Dense(4, activation="relu")(L.Flatten()(h))
    h = shared(shared(h))
    net = tf.keras.Model(inputs, L.Dense(3)(h))
    x, y, w = _rows(4, 2, (6, 6, 2), seed=3, dtype=np.float64)
    books = []

    @tf.function
    def squared():
        books.append(driver._Book(net, x, y, w, copies=2, method="auto", sums=1))
        return [e.squared for e in books[-1].entries]

    squared.get_concrete_function()
    book = books[0]
    entry = {id(e.variable): e for e in book.entries}
    names = [u.layer.name for u in book.uses]
    for k in range(1, len(book.uses)):
        below, layer = book.uses[k - 1], book.uses[k].layer
        waits_for = _ancestors(below.dpre)
        norms_first = [entry[id(v)].squared.op in waits_for for v in layer.trainable_weights]
        assert all(norms_first) == (layer is not shared), (names[k], norms_first)
    # the values are unchanged: the reference test covers them (test_shared_layers_...)
    ref = per_example_reference(net, x, y, w, 2)
    got, _, _ = per_example.squared_norms(net, x, y, w, copies=2)
    np.testing.assert_allclose(got, [(g.reshape(len(g), -1) ** 2).sum(1) for g in ref], rtol=1e-8)


def test_an_outer_tape_through_the_clipped_sum_leaves_the_ledger_as_it_was(float64):
    """Differentiating the clipped sum with respect to the inputs (a gradient-inversion audit
    does) runs the taps' gradients a second time; the norms already booked stay as they are."""
    net = _layer_net("conv_valid", 2)
    x, y, w = _rows(3, 1, (9, 9, 2), seed=4, dtype=np.float64)
    books = []
    real_book = driver._Book

    def booked(*args, **kwargs):
        books.append(real_book(*args, **kwargs))
        return books[-1]

    with tf.GradientTape() as outer:
        outer.watch(x)
        driver._Book = booked
        try:
            result = per_example.clipped_sum(net, x, y, w, 1.0)
        finally:
            driver._Book = real_book
        pieces_before = [len(e.pieces) for e in books[0].entries]
        squared_before = [e.squared for e in books[0].entries]
        total = tf.add_n([tf.reduce_sum(g * g) for g in result.clipped])
    assert outer.gradient(total, x) is not None
    assert [len(e.pieces) for e in books[0].entries] == pieces_before
    assert all(a is b for a, b in zip(squared_before, [e.squared for e in books[0].entries]))


@pytest.mark.parametrize("clip,compiled", [("flat", False), ("per_layer", True)])
def test_chunks_of_examples_give_the_one_pass_clipped_sum(tiny_images, compiled, clip):
    """clipped_sum(chunk_rows=...) runs the batch in chunks of whole examples (an example's
    clean and adversarial rows stay together): the sums, norms and logits equal one pass, also
    for a batch of unknown size that does not divide into chunks, and for an empty one."""
    x_all, y_all, _ = tiny_images
    net = build_model(ModelConfig(name="cnn", norm="group", activation="tanh"), seed=3)
    x = tf.constant(np.concatenate([x_all[:7], 1 - x_all[:7]]))  # 7 examples, 2 copies
    y = tf.constant(np.tile(y_all[:7], 2))
    w = tf.constant(np.r_[np.full(7, 0.3), np.full(7, 0.7)].astype(np.float32))

    def runner(chunk_rows):
        def run(x, y, w):
            out = per_example.clipped_sum(net, x, y, w, 0.05, copies=2, clipping_name=clip, unclipped=True,
                                          chunk_rows=chunk_rows)
            out.norms.shape.assert_has_rank(1)  # the diagnostics' boolean_mask needs a known rank
            return out.clipped, out.unclipped, out.norms, out.logits

        if not compiled:
            return run
        # unknown batch size, as under Poisson sampling
        spec = [tf.TensorSpec([None, *x.shape[1:]]), tf.TensorSpec([None], tf.int64), tf.TensorSpec([None])]
        return tf.function(run, input_signature=spec)

    whole = runner(None)(x, y, w)
    chunked_run = runner(6)  # 3 examples per chunk: 3 + 3 + 1
    chunked = chunked_run(x, y, w)
    assert whole[2].shape == [7] and whole[3].shape == [14, 10]
    for a, b in zip(tf.nest.flatten(whole), tf.nest.flatten(chunked)):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5 * np.abs(a.numpy()).max())
    assert (whole[2].numpy() > 0.05).any()  # some examples are clipped
    empty = chunked_run(x[:0], y[:0], w[:0])
    assert all(not np.any(g.numpy()) for g in empty[0]) and empty[2].shape == [0] and empty[3].shape == [0, 10]


def test_the_clipped_sum_as_run_holds_no_batch_sized_constant():
    """The graph TensorFlow actually runs (after Grappler) keeps no constant that grows
    with the batch. A ``tf.zeros_like`` of the per-example rows in the dropped-example
    branch was folded into constants as large as the rows (here 800,000 floats for one
    layer), held for the model's lifetime."""
    batch = 32
    graph = tf.Graph()
    with graph.as_default():
        # Placeholders, so nothing computed from the data can be folded either.
        x = tf.compat.v1.placeholder(tf.float32, [batch, 28, 28, 1])
        y = tf.compat.v1.placeholder(tf.int64, [batch])
        net = build_model(ModelConfig(name="lenet", norm="none"), seed=2)
        out = per_example.clipped_sum(net, x, y, tf.ones([batch]), 1.0)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            metadata = tf.compat.v1.RunMetadata()
            sums = session.run(out.clipped, options=tf.compat.v1.RunOptions(output_partition_graphs=True),
                               run_metadata=metadata,
                               feed_dict={x: np.random.default_rng(0).random((batch, 28, 28, 1)),
                                          y: np.arange(batch) % 10})
    assert all(np.all(np.isfinite(s)) for s in sums)
    sizes = {node.name: int(np.prod([d.size for d in node.attr["value"].tensor.tensor_shape.dim]))
             for g in metadata.partition_graphs for node in g.node if node.op == "Const"}
    assert sizes, "the run recorded no graph"
    largest = max(sizes, key=sizes.get)
    assert sizes[largest] <= batch, f"{largest} holds {sizes[largest]} elements"
