"""The per-layer choice of the norm method (tfdprobust.per_example.calibration): the cost model
where it is decisive, a probe on synthetic data where it is not, cached per machine; and the two
methods (and both materialized layouts) give the per-example tape's norms. No time is asserted:
the probe's measurements are replaced by given ones wherever the choice is checked."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tfdprobust import per_example
from tfdprobust.per_example import calibration, factors
from tfdprobust.train_step import DPConfig, PrivateRobustModel, TrainConfig
from per_example_util import per_example_reference

L = tf.keras.layers


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(calibration.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(calibration.PROBE_ENV, raising=False)
    calibration.forget()
    yield tmp_path
    calibration.forget()


def _conv_factors(rows=3, size=9, channels=16, filters=32, kernel=4, stride=2, seed=0, dtype=tf.float64):
    rng = np.random.default_rng(seed)
    out = (size - kernel) // stride + 1
    return factors.ConvFactors(tf.constant(rng.standard_normal((rows, size, size, channels)), dtype),
                               tf.constant(rng.standard_normal((rows, out, out, filters)), dtype),
                               (kernel, kernel), (stride, stride), (1, 1), "valid")


def _undecided():
    """A convolution the cost model does not decide: the MNIST CNN's second one (T = 9 here)."""
    f = _conv_factors()
    t, d, p = f.dims
    costs = per_example.norm_costs(t, d, p)
    assert max(costs.values()) / min(costs.values()) < calibration.DECISIVE
    return f


def _measured(monkeypatch, times):
    calls = []

    def fake(parts, sums):
        calls.append(calibration.layer_key(parts, sums))
        return dict(times)

    monkeypatch.setattr(calibration, "measure", fake)
    return calls


@pytest.mark.parametrize("faster", ["ghost", "materialized"])
def test_an_undecided_layer_takes_the_measured_faster_method_and_the_cache_keeps_it(cache, monkeypatch, faster):
    f = _undecided()
    other = "ghost" if faster == "materialized" else "materialized"
    calls = _measured(monkeypatch, {faster: 1.0, other: 2.0})
    assert calibration.choose([f], *f.dims, sums=1) == faster
    assert len(calls) == 1
    stored = json.load(open(calibration.cache_path()))
    assert stored == {calibration.machine_key(): {calibration.layer_key([f], 1): faster}}
    assert not [n for n in os.listdir(cache) if n != calibration.CACHE_FILE]  # no temporary file left
    calibration.forget()  # a new process: the file answers, nothing is measured again
    assert calibration.choose([f], *f.dims, sums=1) == faster
    assert len(calls) == 1
    # another number of sums is another probe
    calibration.choose([f], *f.dims, sums=2)
    assert len(calls) == 2


def test_another_machine_setting_probes_again(cache, monkeypatch):
    f = _undecided()
    calls = _measured(monkeypatch, {"ghost": 1.0, "materialized": 2.0})
    calibration.choose([f], *f.dims, sums=1)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX")  # oneDNN's kernels differ: a different machine
    calibration.choose([f], *f.dims, sums=1)
    assert len(calls) == 2
    assert len(json.load(open(calibration.cache_path()))) == 2


@pytest.mark.parametrize("dims", [(196, 64, 16), (1, 800, 500), (2, 512, 32), (784, 9, 16)])
def test_a_decisive_cost_model_chooses_without_a_probe(cache, monkeypatch, dims):
    calls = _measured(monkeypatch, {"ghost": 1.0, "materialized": 1.0})
    costs = per_example.norm_costs(*dims)
    assert max(costs.values()) / min(costs.values()) >= calibration.DECISIVE
    f = factors.DenseFactors(tf.zeros([2, dims[0], dims[1]]), tf.zeros([2, dims[0], dims[2]]))
    assert calibration.choose([f], *dims, sums=1) == min(costs, key=costs.get)
    assert calls == []


def test_probing_off_follows_the_cost_model(cache, monkeypatch):
    f = _undecided()
    calls = _measured(monkeypatch, {"ghost": 1.0, "materialized": 2.0})
    monkeypatch.setenv(calibration.PROBE_ENV, "off")
    costs = per_example.norm_costs(*f.dims)
    assert calibration.choose([f], *f.dims, sums=1) == min(costs, key=costs.get)
    assert calls == [] and not os.path.exists(calibration.cache_path())


def test_an_unknown_number_of_positions_materializes(cache, monkeypatch):
    calls = _measured(monkeypatch, {"ghost": 1.0, "materialized": 2.0})
    assert calibration.choose([], None, 10, 10, 1) == "materialized"
    assert calls == []


def test_the_real_probe_times_both_methods_on_synthetic_factors(cache):
    times = calibration.measure([_undecided()], 1)
    assert set(times) == {"ghost", "materialized"}
    assert all(np.isfinite(t) and t >= 0 for t in times.values())


def test_synthetic_factors_keep_the_shapes_and_not_the_values():
    f = _undecided()
    fake = f.synthetic(5, np.random.default_rng(1))
    assert fake.dims == f.dims and fake.geometry() == f.geometry()
    assert fake.a.shape[0] == 5 and not np.allclose(fake.a.numpy()[:3], f.a.numpy())


@pytest.mark.parametrize("size,channels,kernel,stride", [(9, 16, 4, 2), (12, 20, 5, 1), (9, 40, 3, 1), (20, 16, 3, 1)])
def test_every_materialized_layout_writes_the_same_per_example_gradient(monkeypatch, size, channels, kernel, stride):
    """The unfolded patches, the per-kernel-offset matmuls and the filter-gradient op on one
    example at a time (ConvFactors.layout picks one) give the same rows, and they equal one
    convolution-filter gradient per example."""
    f = _conv_factors(size=size, channels=channels, filters=6, kernel=kernel, stride=stride)
    out = []
    for layout in ("unfold", "offsets", "filter_op"):
        monkeypatch.setattr(factors.ConvFactors, "layout", lambda self, u=layout: u)
        out.append(f.materialize().numpy())
    np.testing.assert_allclose(out[0], out[1], rtol=1e-10)
    np.testing.assert_allclose(out[0], out[2], rtol=1e-10)
    for i in range(f.a.shape[0]):
        kernel_var = tf.zeros([kernel, kernel, channels, 6], tf.float64)
        with tf.GradientTape() as tape:
            tape.watch(kernel_var)
            pre = tf.nn.conv2d(f.a[i:i + 1], kernel_var, stride, "VALID")
        g = tape.gradient(pre, kernel_var, output_gradients=f.dz[i:i + 1])
        np.testing.assert_allclose(out[0][i], tf.reshape(g, [-1, 6]).numpy(), rtol=1e-10)


@pytest.mark.parametrize("shape,dilation,want", [
    ((28, 1, 16, 8, 2), 1, "unfold"),      # one input channel: the CNN's first convolution
    ((14, 16, 32, 4, 2), 1, "unfold"),     # few positions and channels: the CNN's second
    ((8, 20, 50, 5, 1), 1, "unfold"),      # 64 positions, 20 channels: LeNet's second
    ((28, 16, 16, 3, 1), 1, "filter_op"),  # ResNet-20's first stage: many positions
    ((14, 32, 32, 3, 1), 1, "filter_op"),  # its second
    ((7, 64, 64, 3, 1), 1, "offsets"),     # its third: few positions, many channels
    ((28, 16, 16, 3, 1), 2, "offsets"),    # dilated: the filter-gradient op has no CPU dilation
])
def test_the_layout_is_the_documented_rule(shape, dilation, want):
    size, channels, filters, kernel, stride = shape
    out = -(-size // stride)
    f = factors.ConvFactors(tf.zeros([2, size, size, channels]), tf.zeros([2, out, out, filters]), (kernel, kernel),
                            (stride, stride), (dilation, dilation), "SAME")
    assert f.layout() == want


def test_the_filter_op_layout_handles_an_empty_batch():
    """Poisson sampling can draw an empty batch: the loop over rows then returns no rows."""
    f = factors.ConvFactors(tf.zeros([0, 32, 32, 16]), tf.zeros([0, 32, 32, 16]), (3, 3), (1, 1), (1, 1), "SAME")
    assert f.layout() == "filter_op" and f.materialize().shape == (0, 144, 16)


@pytest.mark.parametrize("faster", ["ghost", "materialized"])
def test_the_model_records_each_layer_s_choice_and_both_give_the_tape_s_norms(cache, monkeypatch, faster):
    """An undecided convolution goes the measured way, decisive layers the cost model's way;
    PrivateRobustModel.norm_methods records it; the norms equal one tape per example."""
    other = "ghost" if faster == "materialized" else "materialized"
    calls = _measured(monkeypatch, {faster: 1.0, other: 2.0})
    tf.keras.utils.set_random_seed(3)
    net = tf.keras.Sequential([tf.keras.Input((9, 9, 16)), L.Conv2D(32, 4, strides=2, activation="tanh"),
                               L.Flatten(), L.Dense(3)])
    rng = np.random.default_rng(4)
    x = tf.constant(rng.random((8, 9, 9, 16), dtype=np.float32))
    y = tf.constant(np.arange(8) % 3)
    w = tf.constant(np.full(8, 0.5, dtype=np.float32))
    squared, _, methods = per_example.squared_norms(net, x, y, w, copies=2)
    conv_kernel, _, dense_kernel, _ = net.trainable_variables
    assert methods[conv_kernel.name] == faster and len(calls) == 1
    dense_costs = per_example.norm_costs(2, 9 * 32, 3)
    assert methods[dense_kernel.name] == min(dense_costs, key=dense_costs.get)
    reference = np.array([[float(np.sum(np.square(g[i]))) for i in range(len(g))]
                          for g in per_example_reference(net, x, y, w, copies=2)])
    for s, r in zip(squared, reference):
        np.testing.assert_allclose(s.numpy(), r, rtol=1e-4)

    model = PrivateRobustModel(net, TrainConfig(expected_batch_size=4, attack=None,
                                                dp=DPConfig(noise_multiplier=0.0)))
    assert model.norm_methods == {}
    model.clipped_sum(x[:4], x[:4], y[:4])
    assert model.norm_methods[conv_kernel.name] == faster
    assert set(model.norm_methods) == {v.name for v in net.trainable_variables}
