"""Shared fixtures: tiny data and the optional real data in ../shared/data."""

import atexit
import os
import shutil
import tempfile

import numpy as np
import tfdprobust  # noqa: F401  (selects Keras 2 as tf.keras before any test touches it)
import pytest

from tfdprobust import compat

SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))

# The suite never writes into the user's real privacy-ledger store (tfdprobust.ledger):
# every test process (and the CLIs it starts, which inherit the environment) uses a
# temporary one, and each test a fresh one of its own (below).
LEDGER_ENV = "TFDPROBUST_LEDGER_DIR"
_SESSION_LEDGERS = tempfile.mkdtemp(prefix="tfdprobust-test-ledgers-")
os.environ[LEDGER_ENV] = _SESSION_LEDGERS
atexit.register(shutil.rmtree, _SESSION_LEDGERS, True)
# Nor into the user's cache (tfdprobust.per_example.calibration's per-machine probe results).
CACHE_ENV = "TFDPROBUST_CACHE_DIR"
_SESSION_CACHE = tempfile.mkdtemp(prefix="tfdprobust-test-cache-")
os.environ[CACHE_ENV] = _SESSION_CACHE
atexit.register(shutil.rmtree, _SESSION_CACHE, True)


@pytest.fixture(autouse=True)
def _own_ledger_store(tmp_path_factory, monkeypatch):
    """A fresh ledger store per test: one test's runs never count in another's budget."""
    monkeypatch.setenv(LEDGER_ENV, str(tmp_path_factory.mktemp("ledgers")))


@pytest.fixture(scope="session")
def shared_data():
    """The real offline MNIST/KMNIST test sets; tests needing them skip when absent."""
    if not os.path.isdir(os.path.join(SHARED_DATA, "mnist")):
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the checkout on CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_images():
    """32 random 28x28 images in [0, 1], labels and 16 'public' images (deterministic)."""
    rng = np.random.default_rng(0)
    x = rng.random((32, 28, 28, 1), dtype=np.float32)
    y = (np.arange(32) % 10).astype(np.int64)
    public = rng.random((16, 28, 28, 1), dtype=np.float32)
    return x, y, public


def write_cifar_batches(folder, n_train=60, n_test=20, seed=0):
    """Synthetic CIFAR-10 'python version' files (random pixels, CIFAR's exact layout).

    CIFAR-10 cannot be downloaded offline; these files let the raw loader and the CLI run
    on CIFAR-shaped data. Five training batches of ``n_train / 5`` and one test batch.
    """
    import pickle

    rng = np.random.default_rng(seed)
    root = os.path.join(str(folder), "cifar-10-batches-py")
    os.makedirs(root, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    sizes = [n_train // 5] * 5 + [n_test]
    for name, n in zip(names, sizes):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)], b"batch_label": name.encode()}
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump(batch, f)
    return str(folder)


@pytest.fixture
def cifar_dir(tmp_path):
    """A folder with synthetic CIFAR-10 python batches (see :func:`write_cifar_batches`)."""
    return write_cifar_batches(tmp_path / "cifar_data")


@pytest.fixture
def tiny_dense_model(monkeypatch):
    """A ``ModelConfig`` of a one-layer network registered for this test only.

    For tests of what does not depend on the network (the noise, the sampling, the
    accounting): its DP step traces in about a second, the MNIST CNN's (64 kernel offsets
    of its 8x8 convolution) in several.
    """
    import tensorflow as tf

    from tfdprobust import models

    def tiny(cfg):
        return tf.keras.layers.Flatten(), tf.keras.layers.Dense(cfg.num_classes)

    monkeypatch.setitem(models.MODELS._entries, "tiny_test_dense", tiny)  # noqa: SLF001 - test-only entry
    return models.ModelConfig(name="tiny_test_dense", norm="none")


def pytest_runtest_setup(item):
    """Tests marked ``tfprivacy`` cross-check against tensorflow-privacy. It installs only on
    the reference stack (Python < 3.12, the ``tfprivacy`` extra): elsewhere they skip with
    that reason; on the reference stack its absence is a failure, since a skipped privacy
    cross-check there would hide a broken install."""
    if item.get_closest_marker("tfprivacy") is None or compat.has_tf_privacy():
        return
    if compat.reference_stack():
        pytest.fail("tensorflow-privacy is missing on the reference stack (Python < 3.12): "
                    "pip install -e '.[test,tfprivacy]'", pytrace=False)
    pytest.skip("needs tensorflow-privacy: only on the reference stack (Python 3.11 with the tfprivacy extra)")
