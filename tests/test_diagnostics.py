"""Clipping diagnostics equal their NumPy definitions."""

import math

import numpy as np
import tensorflow as tf

from tfdprobust import clipping, diagnostics


def test_diagnostics_equal_numpy_definitions():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(10, 3, 2)).astype(np.float32) * np.linspace(0.1, 5, 10, dtype=np.float32)[:, None, None]
    b = rng.normal(size=(10, 5)).astype(np.float32)
    grads = [tf.constant(a), tf.constant(b)]
    bound, sigma = 1.5, 2.0
    clipped, norms = clipping.clip(grads, bound)
    summed = [tf.reduce_sum(c, 0) for c in clipped]
    d = {k: float(v) for k, v in diagnostics.clipping_diagnostics(grads, summed, norms, tf.constant(bound),
                                                                     sigma).items()}
    n = np.sqrt((a ** 2).sum((1, 2)) + (b ** 2).sum(1))
    assert d["diag_clipped_fraction"] == np.mean(n > bound)
    s = np.sort(n)
    for q, key in [(0.1, "diag_norm_p10"), (0.5, "diag_norm_p50"), (0.9, "diag_norm_p90")]:
        assert d[key] == np.float32(s[math.ceil(q * 10) - 1])
    flat_clipped = np.concatenate([t.numpy().ravel() for t in summed])
    flat_raw = np.concatenate([a.sum(0).ravel(), b.sum(0).ravel()])
    cos = flat_clipped @ flat_raw / np.linalg.norm(flat_clipped) / np.linalg.norm(flat_raw)
    assert abs(d["diag_clip_bias_cosine"] - cos) < 1e-5 and cos < 0.9999
    assert abs(d["diag_snr"] - np.linalg.norm(flat_clipped) / (sigma * bound * math.sqrt(11))) < 1e-5
    assert d["clip_bound"] == bound


def test_an_empty_batch_gives_nan_quantiles_not_an_error():
    grads = [tf.zeros([0, 3])]
    norms = clipping.per_example_norms(grads)
    d = diagnostics.clipping_diagnostics(grads, [tf.zeros([3])], norms, tf.constant(1.0), 1.0)
    assert math.isnan(float(d["diag_norm_p50"])) and float(d["diag_clipped_fraction"]) == 0.0
