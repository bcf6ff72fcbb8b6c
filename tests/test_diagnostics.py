"""Clipping diagnostics equal their NumPy definitions."""

import math
import os

import numpy as np
import pytest
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


def _event_tags(folder):
    from tensorflow.core.util import event_pb2

    tags = set()
    for root, _, files in os.walk(folder):
        for name in files:
            if name.startswith("events.out.tfevents"):
                for record in tf.data.TFRecordDataset(os.path.join(root, name)):
                    event = event_pb2.Event.FromString(record.numpy())
                    tags.update(v.tag for v in event.summary.value)
    return tags


def _fit_with_logger(tiny_images, log_dir, callbacks=()):
    from tfdprobust.models import ModelConfig, build_model
    from tfdprobust.train_step import DPConfig, PrivateRobustModel, TrainConfig

    x, y, _ = tiny_images
    model = PrivateRobustModel(build_model(ModelConfig(norm="group"), seed=0),
                               TrainConfig(expected_batch_size=8, attack=None, dp=DPConfig(noise_multiplier=1.0)))
    model.compile()
    logger = diagnostics.DiagnosticsLogger(log_dir)
    model.fit(tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8), epochs=1, verbose=0,
              callbacks=[logger, *callbacks])
    return logger


def test_every_tensorboard_diagnostic_and_its_folder_say_not_covered_by_epsilon(tiny_images, tmp_path):
    _fit_with_logger(tiny_images, str(tmp_path / "run"))
    tags = _event_tags(tmp_path)
    assert any("diag_clipped_fraction" in t for t in tags)  # the walk found the diagnostics
    assert all(t.startswith("not_covered_by_epsilon/") for t in tags), tags
    with open(tmp_path / "run" / "README.txt") as f:
        assert "NOT COVERED BY EPSILON" in f.read()


def test_an_aborted_run_deletes_its_diagnostics_and_says_so(tiny_images, tmp_path):
    """training.train stopped mid-run (here by a callback; the divergence guard does the
    same, "nothing was exported"): its event files are gone, its README says why."""
    from tfdprobust import data, run_config, training
    from tfdprobust.models import ModelConfig
    from tfdprobust.train_step import DPConfig, TrainConfig

    wrote = []

    class Abort(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            wrote.extend(_event_tags(tmp_path))
            if batch == 2:
                raise RuntimeError("diverged: nothing was exported")

    x, y, _ = tiny_images
    cfg = run_config.RunConfig.make(train=TrainConfig(attack=None, dp=DPConfig(noise_multiplier=1.0)), batch_size=4,
                                  model=ModelConfig(norm="group"), export_dir=None, eval_attack=None, verbose=0)
    log_dir = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match="diverged"):
        training.train(cfg, data.ImageData(x, y, "mnist", "tiny"), None, run_config.accounting_spec(cfg, len(x)),
                       log=lambda m: None, log_dir=log_dir, callbacks=[Abort()])
    assert wrote  # it had written diagnostics before the abort
    assert not _event_tags(tmp_path) and not [n for n in os.listdir(log_dir) if n.startswith("events.out")]
    with open(os.path.join(log_dir, "README.txt")) as f:
        text = f.read()
    assert "NOT COVERED BY EPSILON" in text and "aborted" in text
