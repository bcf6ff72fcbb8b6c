"""Public pre-training, weights from a file, and frozen layers for DP fine-tuning.

Seed 001 ("To be private and robust") names pre-training on public data as one of the
factors that decide the privacy-robustness-accuracy trade-off, and Tramèr and Boneh,
"Differentially Private Learning Needs Better Features (or Much More Data)", show that
features learned or designed without the private data carry most of a DP model's
accuracy. This module gives a network such a start before DP training:

1. **pre-training on public data** (non-private, ordinary Keras training through
   :class:`~tfdprobust.train_step.PrivateRobustModel` with DP off, optionally with the
   training attack): a registered :data:`SOURCES` name. Offline, the KMNIST and MNIST
   test images of ``--data_dir``, scikit-learn's 8x8 digits (upsampled) and Fashion-MNIST
   (``/usr/share/datasets/fashion-mnist``); online, the same names through TensorFlow
   Datasets. A source that *is* the private data set is refused.
2. **weights from a file**: Keras weights (``.h5``, ``.weights.h5``), a ``.keras`` file or
   a SavedModel folder (e.g. a tfdprobust export, or a Keras Applications network a user
   saved); layers are matched by their position among the layers with weights.
3. **freezing** layers (by name, or all but the last k layers with weights): a frozen
   layer has no trainable weights, so the DP step computes, clips and noises gradients
   only of the trainable ones (:mod:`tfdprobust.per_example` walks
   ``trainable_weights``), and the frozen weights stay bit-identical.

None of this touches the private data, so it costs no privacy budget and is outside
the DP accounting. The guarantee says so and names what was public
(:meth:`PublicPretraining.clause`).

Layer names: Keras numbers auto-named layers per process (``conv2d_7``), so freezing and
weight matching use *stable* names instead: the layer's class in snake case and its
position among the layers of that class that have weights (``conv2d_0``, ``dense_1``).
A layer the user named explicitly may also be given by its Keras name.

This module imports no TensorFlow at load time: the CLIs check the flags with it first.

Example:
    >>> import numpy as np, tensorflow as tf, tfdprobust as tdp                  # doctest: +SKIP
    >>> from tfdprobust import pretrain                                          # doctest: +SKIP
    >>> net = tdp.models.build_model(tdp.models.ModelConfig(norm="group"))       # doctest: +SKIP
    >>> record = pretrain.prepare(net, pretrain.PretrainConfig(
    ...     source="digits", epochs=2, freeze="all_but_last:1"), private_dataset="mnist")  # doctest: +SKIP
    >>> model = tdp.make_private(net, ..., public_pretraining=record)             # doctest: +SKIP
    >>> model.guarantee   # "...; public pre-training (outside the DP accounting ...)"  # doctest: +SKIP
"""

import dataclasses
import hashlib
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfdprobust.errors import UsageError, require

FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
NONE = "none"
ALL_BUT_LAST = "all_but_last:"


@dataclasses.dataclass(frozen=True)
class Source:
    """A public data source for pre-training.

    Attributes:
        name: the ``--public_pretrain`` name.
        dataset: the data set it is (compared with the private ``--dataset``).
        splits: the splits used, in order (all that are found are concatenated).
        default_dirs: folders searched after ``--data_dir``.
    """

    name: str
    dataset: str
    splits: Tuple[str, ...] = ("train", "test")
    default_dirs: Tuple[str, ...] = ()


#: Registered public sources (one registry; ``--public_pretrain`` takes these names).
SOURCES: Dict[str, Source] = {s.name: s for s in (
    Source("kmnist", "kmnist"),
    Source("mnist", "mnist"),
    Source("fashion_mnist", "fashion_mnist", default_dirs=(FASHION_DIR,)),
    Source("digits", "sklearn_digits", splits=("all",)),
)}


def source(name: str) -> Source:
    """The registered source ``name``; an unknown name names ``--public_pretrain``."""
    require(name in SOURCES, f"--public_pretrain={name!r} is unknown; choose one of "
            f"{', '.join((NONE, *SOURCES))}")
    return SOURCES[name]


# ----------------------------------------------------------------------------- freezing (parsing)
def parse_freeze(spec: str) -> Tuple[str, Any]:
    """``("none", None)``, ``("all_but_last", k)`` or ``("names", (name, ...))``.

    Example:
        >>> parse_freeze("all_but_last:1"), parse_freeze("conv2d_0, conv2d_1")
        (('all_but_last', 1), ('names', ('conv2d_0', 'conv2d_1')))
    """
    spec = (spec or NONE).strip()
    if spec == NONE:
        return NONE, None
    if spec.startswith(ALL_BUT_LAST):
        k = spec[len(ALL_BUT_LAST):]
        require(k.isdigit() and int(k) >= 1, f"--freeze={spec!r}: k of all_but_last:k must be an integer >= 1; "
                "pass e.g. --freeze=all_but_last:1 (train only the last layer with weights)")
        return "all_but_last", int(k)
    names = tuple(n.strip() for n in spec.split(","))
    require(all(re.fullmatch(r"[A-Za-z0-9_./-]+", n) for n in names),
            f"--freeze={spec!r} must be none, all_but_last:k or comma-separated layer names (e.g. conv2d_0,conv2d_1)")
    return "names", names


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """How a network gets its start before DP training (all public; see the module docstring).

    Attributes:
        source: a :data:`SOURCES` name, or ``"none"`` (no pre-training).
        epochs: passes over the public data.
        examples: use at most this many public images (0 = all).
        learning_rate: of the non-private Adam optimizer of the pre-training.
        batch_size: of the pre-training.
        attack: pre-train adversarially with this :class:`tfdprobust.attacks.AttackConfig`
            (``None``: clean pre-training).
        weights: a weights file or SavedModel loaded before (and instead of the random
            initialization for) the pre-training, or ``None``.
        freeze: ``none``, ``all_but_last:k`` or comma-separated (stable) layer names.
        data_dir: folders (comma-separated) with the source's raw files.
        tfds_dir: TensorFlow Datasets data dir (online, or prepared).
        seed: order of the public batches and choice of the public subset.
    """

    source: str = NONE
    epochs: int = 3
    examples: int = 0
    learning_rate: float = 1e-3
    batch_size: int = 128
    attack: Optional[Any] = None
    weights: Optional[str] = None
    freeze: str = NONE
    data_dir: Optional[str] = None
    tfds_dir: Optional[str] = None
    seed: int = 0

    def __post_init__(self):
        if self.source != NONE:
            source(self.source)
        require(isinstance(self.epochs, int) and self.epochs >= 1, f"--pretrain_epochs must be >= 1, got {self.epochs}")
        require(self.examples >= 0, f"--pretrain_examples must be >= 0, got {self.examples}")
        require(0 < self.learning_rate <= 10, f"--pretrain_learning_rate must be in (0, 10], got {self.learning_rate}")
        require(self.batch_size >= 1, f"pretrain batch_size must be >= 1, got {self.batch_size}")
        require(self.weights is None or os.path.exists(self.weights),
                f"--pretrained_weights={self.weights} does not exist; pass a Keras weights file (.h5, "
                ".weights.h5), a .keras file or a SavedModel folder")
        parse_freeze(self.freeze)

    @property
    def active(self) -> bool:
        return self.source != NONE or self.weights is not None or parse_freeze(self.freeze)[0] != NONE


def check_not_private(cfg: PretrainConfig, private_dataset: Optional[str]) -> None:
    """Refuses pre-training on the private data set itself: its images are not public."""
    if cfg.source == NONE:
        return
    src = source(cfg.source)
    others = [n for n, s in SOURCES.items() if s.dataset != private_dataset]
    require(src.dataset != private_dataset,
            f"--public_pretrain={cfg.source} is the private --dataset itself: its images are not public and "
            f"pre-training on them is outside the DP accounting; choose another source ({', '.join(others)})")


def locate_files(cfg: PretrainConfig) -> List[str]:
    """The raw files of the source found under ``data_dir`` and its default folders (no
    reading, no TensorFlow); ``[]`` for scikit-learn's digits or when TFDS must serve it."""
    from tfdprobust import data

    src = source(cfg.source)
    found = []
    dirs = [*data.data_dirs(cfg.data_dir or ""), *[d for d in src.default_dirs if os.path.isdir(d)]]
    for split in src.splits:
        entry = data._RAW_FILES.get((src.dataset, split))  # noqa: SLF001 - the one table of raw names
        if entry is None:
            continue
        sub, images, _ = entry
        for folder in dirs:
            path = data._find(folder, sub, images)  # noqa: SLF001
            if path is not None:
                found.append(path)
                break
    return found


def load_public(cfg: PretrainConfig, image_shape: Tuple[int, ...], log: Callable[[str], None] = print):
    """The public pre-training images of ``cfg.source`` as one :class:`tfdprobust.data.ImageData`
    (every split found, concatenated, at most ``cfg.examples`` of them).

    Raises:
        UsageError: the source is not available here (names ``--public_pretrain`` and
            ``--data_dir``), or its images have another shape than the private ones.
    """
    from tfdprobust import data

    src = source(cfg.source)
    if src.dataset == data.SKLEARN_DIGITS:
        parts = [data.load_sklearn_digits(tuple(image_shape))]
    else:
        dirs = [*data.data_dirs(cfg.data_dir or ""), *[d for d in src.default_dirs if os.path.isdir(d)]]
        parts = [p for p in (_load_raw(src.dataset, split, dirs) for split in src.splits) if p is not None]
        if not parts and (data.tfds_prepared(src.dataset, cfg.tfds_dir) or data.tfds_reachable()):
            parts = [data.load_tfds(src.dataset, "train", cfg.tfds_dir)]
        require(parts, f"--public_pretrain={cfg.source}: no {src.dataset} files in --data_dir="
                f"{cfg.data_dir} and TensorFlow Datasets cannot download offline; pass --data_dir with its files"
                + (f" (or install them under {src.default_dirs[0]})" if src.default_dirs else ""))
    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts])
    require(x.shape[1:] == tuple(image_shape),
            f"--public_pretrain={cfg.source}: its images are {'x'.join(map(str, x.shape[1:]))} but the private "
            f"ones are {'x'.join(map(str, image_shape))}; choose a source of the same shape")
    what = " + ".join(p.source for p in parts)
    if 0 < cfg.examples < len(x):
        idx = np.random.default_rng(cfg.seed).choice(len(x), cfg.examples, replace=False)
        x, y, what = x[idx], y[idx], f"{what}, {cfg.examples} random images"
    log(f"public pre-training data: {what}")
    return data.ImageData(x, y, src.dataset, what)


def _load_raw(name: str, split: str, folders: Sequence[str]):
    """``name``/``split`` from the first folder that has it. A folder holding another data
    set's files under these names (Fashion-MNIST's IDX files are named like MNIST's) is
    passed over, as :func:`tfdprobust.data.load_experiment_data` does for public data."""
    from tfdprobust import data

    for folder in folders:
        try:
            found = data.load_raw(name, split, folder)
        except data.DatasetMismatch:
            continue
        if found is not None:
            return found
    return None


# ----------------------------------------------------------------------------- layers
def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("2_d", "2d").replace("1_d", "1d").replace(
        "3_d", "3d")


def stable_names(net) -> Dict[str, Any]:
    """``{stable name: layer}`` of the layers of ``net`` that have weights, in order
    (``conv2d_0``, ``conv2d_1``, ``dense_0``, ...): the same in every process, unlike
    Keras' automatic names."""
    counts: Dict[str, int] = {}
    out = {}
    for layer in net.layers:
        if not layer.weights:
            continue
        kind = _snake(type(layer).__name__)
        out[f"{kind}_{counts.get(kind, 0)}"] = layer
        counts[kind] = counts.get(kind, 0) + 1
    return out


def _with_trainable_weights(net) -> Dict[str, Any]:
    return {n: layer for n, layer in stable_names(net).items() if layer.trainable_weights}


def layers_to_freeze(net, spec: str) -> List[str]:
    """The stable names :func:`freeze` would freeze (validates ``spec`` against ``net``)."""
    kind, arg = parse_freeze(spec)
    if kind == NONE:
        return []
    candidates = _with_trainable_weights(net)
    if kind == "all_but_last":
        require(arg < len(candidates),
                f"--freeze={spec}: the network has {len(candidates)} layers with trainable weights "
                f"({', '.join(candidates)}); k must be below that")
        return list(candidates)[:len(candidates) - arg]
    keras_names = {layer.name: n for n, layer in candidates.items()}
    chosen = []
    for name in arg:
        stable = name if name in candidates else keras_names.get(name)
        require(stable is not None, f"--freeze: the network has no layer {name!r} with trainable weights; choose "
                f"from {', '.join(candidates)}")
        chosen.append(stable)
    require(len(chosen) < len(candidates), f"--freeze={spec} freezes every layer: nothing would be trained; "
            "leave at least one layer out")
    return chosen


def freeze(net, spec: str) -> List[str]:
    """Sets ``trainable = False`` on the layers ``spec`` names; returns their stable names.

    Call it before the network is wrapped for training (:func:`tfdprobust.make_private`,
    :class:`~tfdprobust.train_step.PrivateRobustModel`): Keras reads ``trainable`` when
    the train step is traced."""
    names = layers_to_freeze(net, spec)
    layers = stable_names(net)
    for name in names:
        layers[name].trainable = False
    return names


# ----------------------------------------------------------------------------- weights
def file_sha256(path: str) -> str:
    """SHA-256 of a file, or of every file of a folder (sorted paths), for the record."""
    digest = hashlib.sha256()
    paths = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, f) for root, _, files in os.walk(path) for f in files)
    for p in paths:
        digest.update(os.path.relpath(p, path).encode() if p != path else b"")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_weights(net, path: str) -> List[str]:
    """Loads ``path`` into ``net``; returns the stable names of the layers loaded.

    A Keras weights file (``.h5``, ``.weights.h5``) of the same architecture is loaded
    whole. From a ``.keras`` file or a SavedModel folder (a tfdprobust export, a Keras
    Applications network saved by its user), every layer with weights is copied onto the
    layer with the same stable name whose weights have the same shapes; a layer whose
    shapes differ (e.g. a classifier for another number of classes) keeps its
    initialization.

    Raises:
        UsageError: the file cannot be read, or no layer matches (names ``--pretrained_weights``).
    """
    import tensorflow as tf

    require(os.path.exists(path), f"--pretrained_weights={path} does not exist; pass a weights file or a "
            "SavedModel folder")
    if os.path.isfile(path) and path.endswith(".h5") and not _is_full_model_h5(path):
        try:
            net.load_weights(path)
        except Exception as err:  # noqa: BLE001 - any Keras failure becomes one line naming the flag
            raise UsageError(f"--pretrained_weights={path} does not fit this network ({type(err).__name__}: "
                             f"{str(err).splitlines()[0][:120]}); pass weights of the same --model") from None
        return list(stable_names(net))
    try:
        source_net = tf.keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001
        raise UsageError(f"--pretrained_weights={path} is not a Keras model, weights file or SavedModel "
                         f"({type(err).__name__}); pass a .h5/.weights.h5/.keras file or a SavedModel folder") from None
    theirs = stable_names(source_net)
    loaded = []
    for name, layer in stable_names(net).items():
        other = theirs.get(name)
        if other is None or [tuple(w.shape) for w in other.weights] != [tuple(w.shape) for w in layer.weights]:
            continue
        layer.set_weights(other.get_weights())
        loaded.append(name)
    require(loaded, f"--pretrained_weights={path}: no layer matches this network (by position and shape: it has "
            f"{', '.join(theirs) or 'no layers with weights'}); pass weights of the same --model")
    return loaded


def _is_full_model_h5(path: str) -> bool:
    """Whether an ``.h5`` file holds a whole model (then it is loaded like a ``.keras`` file)."""
    try:
        import h5py

        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except Exception:  # noqa: BLE001 - not readable here: let Keras report it
        return False


# ----------------------------------------------------------------------------- the record
@dataclasses.dataclass(frozen=True)
class PublicPretraining:
    """What a network saw before DP training: all public, outside the DP accounting.

    Attributes:
        source: the :data:`SOURCES` name (``"none"`` without pre-training).
        data: where the public images came from (``""`` without pre-training).
        examples: public images pre-trained on.
        epochs: passes over them.
        adversarial: the attack of the pre-training (``None``: clean).
        public_accuracy: the pre-trained network's accuracy on its own public data (public).
        weights: the weights file loaded first, and its SHA-256.
        loaded_layers: stable names of the layers the file set.
        frozen: stable names of the layers frozen during DP training.
        trainable: stable names of the layers DP training updates.
    """

    source: str = NONE
    data: str = ""
    examples: int = 0
    epochs: int = 0
    adversarial: Optional[str] = None
    public_accuracy: Optional[float] = None
    weights: Optional[str] = None
    weights_sha256: Optional[str] = None
    loaded_layers: Tuple[str, ...] = ()
    frozen: Tuple[str, ...] = ()
    trainable: Tuple[str, ...] = ()

    def as_dict(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["note"] = ("public: pre-training and loaded weights touched no private data, so they are outside "
                       "the DP accounting; epsilon covers the DP training that followed")
        return out

    def clause(self) -> str:
        """The clause the guarantee appends: what was public, and that it is not accounted."""
        parts = []
        if self.source != NONE:
            parts.append(f"pre-trained non-privately{' with ' + self.adversarial if self.adversarial else ''} "
                         f"for {self.epochs} epoch(s) on {self.examples} public images ({self.data})")
        if self.weights is not None:
            parts.append(f"started from the weights {self.weights} (sha256 {self.weights_sha256[:12]}; "
                         f"{len(self.loaded_layers)} layer(s)), which the user states are public")
        if self.frozen:
            parts.append(f"frozen (not updated under DP): {', '.join(self.frozen)}")
        return ("public pre-training (outside the DP accounting: it touched no private data): "
                + "; ".join(parts) if parts else "")


def extend_guarantee(text: str, record: Optional[PublicPretraining]) -> str:
    """``text`` with the record's clause appended (unchanged without one)."""
    clause = record.clause() if record is not None else ""
    return f"{text}; {clause}" if clause else text


# ----------------------------------------------------------------------------- the work
def pretrain(net, public, cfg: PretrainConfig, public_images=None, verbose: int = 0) -> float:
    """Trains ``net`` non-privately on ``public`` (an ImageData); returns its accuracy there.

    Uses :class:`~tfdprobust.train_step.PrivateRobustModel` with DP off (the same loss,
    attack and public-statistics handling as the DP training that follows); batches are
    Keras' shuffled ones, seeded by ``cfg.seed`` (public data: nothing to protect).
    """
    import tensorflow as tf

    from tfdprobust import train_step

    config = train_step.TrainConfig(optimizer="adam", learning_rate=cfg.learning_rate,
                                    expected_batch_size=cfg.batch_size, dp=train_step.DPConfig(enabled=False),
                                    attack=cfg.attack, adv_weight=0.5 if cfg.attack is not None else 0.0)
    model = train_step.PrivateRobustModel(net, config, public_images=public_images)
    model.compile()
    ds = (tf.data.Dataset.from_tensor_slices((public.x, public.y))
          .shuffle(len(public), seed=cfg.seed).batch(cfg.batch_size))
    model.fit(ds, epochs=cfg.epochs, verbose=verbose)
    model.refresh_public_statistics()
    return train_step.accuracy(net, public.x, public.y)


def prepare(net, cfg: PretrainConfig, private_dataset: Optional[str], public_images=None,
            log: Callable[[str], None] = print, verbose: int = 0) -> PublicPretraining:
    """Loads weights, pre-trains on public data and freezes layers, as ``cfg`` says.

    Args:
        net: the built network (trained in place).
        private_dataset: the private data set's name (a :data:`SOURCES` dataset is refused
            as a source when it is this one); ``None`` if it is none of them.
        public_images: public normalization images, for a network with
            :class:`~tfdprobust.normalization.PublicBatchNormalization`.

    Returns:
        The :class:`PublicPretraining` record the guarantee and the metadata carry.
    """
    check_not_private(cfg, private_dataset)
    frozen = layers_to_freeze(net, cfg.freeze)  # a bad name fails before any work
    record: Dict[str, Any] = {}
    if cfg.weights is not None:
        loaded = load_weights(net, cfg.weights)
        record.update(weights=cfg.weights, weights_sha256=file_sha256(cfg.weights), loaded_layers=tuple(loaded))
        log(f"public weights: {cfg.weights} set {len(loaded)} layer(s): {', '.join(loaded)}")
    if cfg.source != NONE:
        public = load_public(cfg, tuple(net.input_shape[1:]), log)
        accuracy = pretrain(net, public, cfg, public_images, verbose=verbose)
        record.update(source=cfg.source, data=public.source, examples=len(public), epochs=cfg.epochs,
                      adversarial=(f"{cfg.attack.name} eps={cfg.attack.eps:g}" if cfg.attack is not None else None),
                      public_accuracy=accuracy)
        log(f"public pre-training: {cfg.epochs} epoch(s) on {len(public)} {cfg.source} images, accuracy on them "
            f"{accuracy:.4f} (public; outside the DP accounting)")
    freeze(net, cfg.freeze)
    trainable = tuple(_with_trainable_weights(net))
    if frozen:
        log(f"frozen under DP: {', '.join(frozen)}; trained: {', '.join(trainable)}")
    return PublicPretraining(frozen=tuple(frozen), trainable=trainable, **record)


def check(cfg: PretrainConfig, build: Callable[[], Any], private_dataset: Optional[str],
          image_shape: Optional[Sequence[int]] = None) -> None:
    """Everything :func:`prepare` could refuse, checked on a throw-away network from
    ``build()`` before any run writes anything: the source is not the private data and is
    available, the freeze names exist, the weights file fits."""
    check_not_private(cfg, private_dataset)
    net = build()
    layers_to_freeze(net, cfg.freeze)
    if cfg.weights is not None:
        load_weights(net, cfg.weights)
    if cfg.source != NONE:
        load_public(cfg, tuple(image_shape or net.input_shape[1:]), log=lambda _: None)
