"""The per-example convolution benchmark: every alternative it times computes the same gradients
as an independent reference, and a run's report names its machine and its command."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import conv_per_example as bench
from tfdprobust.per_example.factors import ConvFactors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _one_at_a_time(a, dz, kernel, stride, padding="SAME"):
    """``[B, k, k, C_in, C_out]`` by autodiff of ``tf.nn.conv2d`` on each example alone."""
    out = []
    for i in range(a.shape[0]):
        filt = tf.zeros([kernel, kernel, a.shape[-1], dz.shape[-1]])
        with tf.GradientTape() as tape:
            tape.watch(filt)
            y = tf.nn.conv2d(a[i:i + 1], filt, stride, padding)
        out.append(tape.gradient(y, filt, output_gradients=dz[i:i + 1]).numpy())
    return np.stack(out)


@pytest.mark.parametrize("size,c_in,c_out,kernel,stride,padding", [
    (9, 3, 4, 3, 1, "SAME"), (10, 2, 5, 3, 2, "SAME"), (11, 1, 3, 4, 2, "SAME"), (12, 2, 5, 5, 1, "VALID"),
    (13, 3, 4, 4, 2, "VALID")])
def test_the_folded_convolutions_give_each_examples_own_gradient(size, c_in, c_out, kernel, stride, padding):
    rng = np.random.default_rng(size)
    out = -(-size // stride) if padding == "SAME" else (size - kernel) // stride + 1
    a = tf.constant(rng.standard_normal((3, size, size, c_in)), tf.float32)
    dz = tf.constant(rng.standard_normal((3, out, out, c_out)), tf.float32)
    want = _one_at_a_time(a, dz, kernel, stride, padding)
    assert np.abs(want).max() > 0.1  # not a trivially zero comparison
    np.testing.assert_allclose(bench.depthwise_grads(a, dz, kernel, stride, padding).numpy(), want, rtol=1e-4, atol=1e-4)
    grouped = tf.function(lambda: bench.grouped_grads(a, dz, kernel, stride, padding), jit_compile=True)
    np.testing.assert_allclose(grouped().numpy(), want, rtol=1e-4, atol=1e-4)
    ours = ConvFactors(a, dz, (kernel, kernel), (stride, stride), (1, 1), padding).materialize().numpy()
    np.testing.assert_allclose(ours.reshape(want.shape), want, rtol=1e-4, atol=1e-4)


def test_the_reference_norms_are_the_squared_norms_of_the_reference_gradients():
    rng = np.random.default_rng(1)
    a = tf.constant(rng.standard_normal((2, 6, 6, 2)), tf.float32)
    dz = tf.constant(rng.standard_normal((2, 6, 6, 3)), tf.float32)
    want = (_one_at_a_time(a, dz, 3, 1) ** 2).sum(axis=(1, 2, 3, 4))
    np.testing.assert_allclose(bench.reference_norms(a, dz, 3, 1), want, rtol=1e-5)


def test_a_run_reports_every_method_against_ours_with_its_machine(tmp_path):
    out = tmp_path / "conv.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.conv_per_example", "--layers=cnn", "--batch_size=2",
                           "--seconds=0.01", "--rounds=1", f"--out={out}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    text = out.read_text()
    assert "| conv1 28x28x1->16 8x8 /2 | 2 | unfold | " in text and "(1.00x)" in text
    assert "Machine: " in text and " cores" in text and "TensorFlow " in text  # the machine line
    assert "--layers=cnn" in text
    for method in ("ours", "unfold", "offsets", "filter_op", "ghost", "depthwise"):
        assert f"{method} " in text.split("Max relative error against the reference:")[1]


def test_a_bad_flag_is_named_before_any_work():
    done = subprocess.run([sys.executable, "-m", "benchmarks.conv_per_example", "--layers=vgg"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--layers" in done.stderr


def test_the_layout_step_benchmark_times_every_variant_against_the_non_dp_gradient():
    done = subprocess.run([sys.executable, "-m", "benchmarks.conv_layout_step", "--model=lenet", "--batch_size=4",
                           "--rounds=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| DP clipped sum, ")]
    assert len(rows) == 3 and "| non-DP gradient |" in done.stdout and "1.00x |" in done.stdout
    assert "commit " in done.stdout and "load average" in done.stdout


def test_importing_the_benchmarks_defines_no_flag_of_the_training_cli():
    """absl has one flag namespace: a module-level --batch_size here broke the collection of
    every test file that imports the training CLI in the same worker."""
    code = ("import benchmarks.conv_per_example, benchmarks.conv_layout_step\n"
            "import tfdprobust.experiments.mnist\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
