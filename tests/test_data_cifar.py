"""CIFAR-10 raw python-pickle batches (synthetic files in CIFAR's exact layout: offline)."""

import os
import pickle

import numpy as np
import pytest

from tfdprobust import data
from tfdprobust.errors import UsageError


def test_cifar_batches_load_as_nhwc_unit_images(cifar_dir):
    train = data.load_raw("cifar10", "train", cifar_dir)
    test = data.load_raw("cifar10", "test", cifar_dir)
    assert train.x.shape == (60, 32, 32, 3) and test.x.shape == (20, 32, 32, 3)
    assert train.x.dtype == np.float32 and 0.0 <= train.x.min() and train.x.max() <= 1.0
    # channel planes are R, G, B in that order: pixel (0, 0) of image 0 from the raw bytes
    with open(os.path.join(cifar_dir, "cifar-10-batches-py", "data_batch_1"), "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    row = raw[b"data"][0]
    np.testing.assert_allclose(train.x[0, 0, 0], [row[0] / 255, row[1024] / 255, row[2048] / 255], rtol=1e-6)
    np.testing.assert_allclose(train.x[0, 2, 5, 1], row[1024 + 2 * 32 + 5] / 255, rtol=1e-6)
    assert list(train.y[:3]) == raw[b"labels"][:3]


def test_experiment_data_for_cifar_uses_the_raw_files(cifar_dir):
    exp = data.load_experiment_data(data.DataConfig(dataset="cifar10", public_dataset="sklearn_digits",
                                                    public_examples=8, data_dir=cifar_dir), log=lambda m: None)
    assert len(exp.train) == 60 and len(exp.test) == 20 and exp.public.x.shape == (8, 32, 32, 3)
    assert "cifar-10-batches-py" in exp.train.source


def test_a_pickle_that_is_not_a_cifar_batch_is_refused_without_running_it(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": os.system}, f)  # a callable reference: must not be resolved
    with pytest.raises(UsageError, match="not a CIFAR python batch"):
        data.load_raw("cifar10", "test", str(tmp_path))


def test_load_split_reads_raw_cifar_for_evaluation_and_names_the_fix_offline(cifar_dir, tmp_path, monkeypatch):
    test = data.load_split("cifar10", "test", cifar_dir)
    assert test.x.shape == (20, 32, 32, 3)
    monkeypatch.setattr(data, "tfds_prepared", lambda name, tfds_dir: False)
    monkeypatch.setattr(data, "tfds_reachable", lambda timeout=3.0: False)
    with pytest.raises(UsageError, match="--data_dir"):
        data.load_split("cifar10", "test", str(tmp_path))
