"""Bad input at every command line: one line, exit status 2, nothing written, fast.

One parametrized test per CLI (training, tuner, evaluation, audit, the experiment entry
points). Each case runs the CLI as a user would, in a subprocess with this checkout on
``PYTHONPATH`` and a fresh working folder, and asserts:

* exit status 2, and no ``Traceback``;
* exactly one line on stderr, ``error: ...``, holding every expected fragment: the flag or
  file it is about, and the fix (``choose``, ``pass``, ``drop``, ``must be``, ...);
* nothing written: the working folder (which holds every destination of the case) is
  byte-for-byte unchanged, and no destination was created.

No case asserts a wall time (under load any bound fails). How long each refusal takes is
measured by ``python -m tfdprobust.experiments.time_refusals``, which runs these same
cases; ``fast`` marks the ones refused before TensorFlow is imported (flags, destinations,
and the data's size read from file headers).
"""

import dataclasses
import gzip
import os
import re
import struct
import subprocess
import sys
import time
import types
from typing import Callable, Optional, Tuple

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the CLIs set it themselves
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    for name in ("KERASTUNER_ORACLE_IP", "KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_PORT"):
        env.pop(name, None)
    return env


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input: the flags, fragments the error line must hold, and its kind.

    ``{tmp}`` in the flags is the working folder; ``setup`` prepares it (user files, a
    taken destination, corrupt data); ``fast`` marks refusals before TensorFlow loads;
    ``read_only`` names a folder of the working folder that the CLI sees as a read-only
    mount (a private mount namespace, :func:`read_only_command`).
    """

    id: str
    argv: Tuple[str, ...]
    needles: Tuple[str, ...]
    fast: bool = True
    setup: Optional[Callable] = None
    read_only: str = ""


def case(id, argv, *needles, fast=True, setup=None, slow=False, read_only=""):
    """A parametrized :class:`Case`. ``slow``: it imports TensorFlow (15-25 s on the shared
    machine); one such case per kind stays in the default run, the rest run with ``-m slow``."""
    return pytest.param(Case(id, tuple(argv.split()) if isinstance(argv, str) else tuple(argv), needles, fast,
                             setup, read_only), id=id, marks=[pytest.mark.slow] if slow else [])


_MOUNT_RO = 'mount -t tmpfs -o ro,size=64k tmpfs "$1" && shift && exec "$@"'


def read_only_command(folder, command):
    """``command`` run with ``folder`` a read-only mount, in a private user and mount
    namespace (``unshare -rm``: no root needed, nothing mounted outside). Skips the test
    when this kernel or container does not allow such namespaces."""
    import shutil

    probe = ["unshare", "-rm", "sh", "-c", _MOUNT_RO, "sh", str(folder), "true"]
    if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True, timeout=60).returncode:
        pytest.skip("a read-only mount needs `unshare -rm` (user and mount namespaces), not available here")
    return ["unshare", "-rm", "sh", "-c", _MOUNT_RO, "sh", str(folder), *command]


def _snapshot(folder):
    """Every path below ``folder`` with its size, mode and content hash."""
    import hashlib

    out = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha1(f.read()).hexdigest()
            out[os.path.relpath(path, folder)] = (st.st_size if digest else None, st.st_mode, digest)
    return out


def run_case(module: str, c: Case, tmp_path, extra=()):
    """Runs ``python -m module`` on the case in ``tmp_path/work``; asserts the contract."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious").mkdir()
    (work / "precious" / "thesis.txt").write_text("four years of work\n")
    (work / "a_file").write_text("not a folder\n")
    if c.setup is not None:
        c.setup(work)
    argv = [a.replace("{tmp}", str(work)) for a in (*extra, *c.argv)]
    command = [sys.executable, "-m", module, *argv]
    if c.read_only:
        (work / c.read_only).mkdir()
        command = read_only_command(work / c.read_only, command)
    before = _snapshot(work)
    start = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=work, env=_env(), timeout=600)
    seconds = time.time() - start  # shown on failure; time_refusals reports it
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    shown = f"{module} {' '.join(argv)}\nexit {proc.returncode} after {seconds:.1f} s\nstderr:\n{proc.stderr[-2000:]}"
    assert proc.returncode == 2, shown
    assert "Traceback" not in proc.stderr + proc.stdout, shown
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for needle in c.needles:
        assert needle.replace("{tmp}", str(work)) in lines[0], f"{needle!r} missing\n{shown}"
    assert _snapshot(work) == before, f"the CLI wrote or changed files\n{shown}"
    assert (work / "precious" / "thesis.txt").read_text() == "four years of work\n"
    return lines[0], seconds


# ----------------------------------------------------------------------------- data and model files
def _idx_images(n, mean=0.13, seed=0):
    rng = np.random.default_rng(seed)
    pixels = (rng.random((n, 28, 28)) < mean).astype(np.uint8) * 255
    return struct.pack(">HBBIII", 0, 8, 3, n, 28, 28) + pixels.tobytes()


def _idx_labels(n):
    return struct.pack(">HBBI", 0, 8, 1, n) + (np.arange(n) % 10).astype(np.uint8).tobytes()


def _mnist_dir(work, images: bytes, n=200, name="mnist"):
    """``work/data/mnist`` with gzipped IDX files; ``images`` replaces the training images."""
    folder = work / "data" / name
    folder.mkdir(parents=True)
    for split in ("train", "t10k"):
        (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_labels(n)))
        (folder / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_images(n)))
    (folder / "train-images-idx3-ubyte.gz").write_bytes(images)


def _truncated_gz(work):
    whole = gzip.compress(_idx_images(200))
    _mnist_dir(work, whole[: len(whole) // 2])


def _not_gzip(work):
    _mnist_dir(work, _idx_images(200))  # raw bytes under a .gz name


def _empty_gz(work):
    _mnist_dir(work, b"")


def _fashion_under_mnist(work):
    # Fashion-MNIST's IDX files are named like MNIST's; their mean pixel (0.29) gives them away.
    _mnist_dir(work, gzip.compress(_idx_images(200, mean=0.29)))


def _wrong_shape_idx(work):
    # 200 images of 32x32 under MNIST's names, with 28x28 test images.
    rng = np.random.default_rng(0)
    pixels = (rng.random((200, 32, 32)) < 0.13).astype(np.uint8) * 255
    _mnist_dir(work, gzip.compress(struct.pack(">HBBIII", 0, 8, 3, 200, 32, 32) + pixels.tobytes()))


def _mnist_200(work):
    """``work/data/mnist``: 200 training and 200 test images in gzipped IDX files."""
    _mnist_dir(work, gzip.compress(_idx_images(200)))


def _taken_run(work):
    (work / "out" / "taken").mkdir(parents=True)


# ----------------------------------------------------------------------------- training CLI
TRAINING = [
    case("noise-negative", "--noise=-1", "--noise", "must be >= 0"),
    case("noise-inf", "--noise=inf", "--noise", "finite"),
    case("noise-nan", "--noise=nan", "--noise", "finite"),
    case("l2_clip-zero", "--l2_clip=0", "--l2_clip", "must be > 0"),
    case("l2_clip-inf", "--l2_clip=inf", "--l2_clip", "finite"),
    case("learning_rate-1e30", "--learning_rate=1e30", "--learning_rate", "must be in"),
    case("learning_rate-zero", "--learning_rate=0", "--learning_rate", "must be in"),
    case("delta-above-one", "--delta=1.5", "--delta", "must be in (0,1)"),
    case("batch_size-zero", "--batch_size=0", "--batch_size", "must be >= 1"),
    case("epochs-zero", "--epochs=0", "--epochs", "must be >= 1"),
    case("seed-negative", "--seed=-1", "--seed", "must be >= 0"),
    case("eps-above-one", "--eps=1.5", "--eps", "must be in [0, 1]"),
    case("adv_weight-above-one", "--adv_weight=1.5", "--adv_weight", "must be in [0,1]"),
    case("target_epsilon-negative", "--target_epsilon=-1", "--target_epsilon", "must be > 0"),
    case("unknown-dataset", "--dataset=imagenet", "--dataset", "choose one of"),
    case("unknown-public_dataset", "--public_dataset=svhn", "--public_dataset", "choose one of"),
    case("unknown-model", "--model=vgg16", "--model", "choose one of", "resnet20"),
    case("unknown-recipe", "--recipe=scatternet", "--recipe='scatternet' is unknown", "scatternet_fmnist_eps3",
         "tempered_sigmoid_fmnist_eps3"),
    case("precompute-with-an-attack", "--recipe=scatternet_fmnist_eps3 --attack=pgd_linf",
         "--precompute_features conflicts with --attack=pgd_linf", "--noprecompute_features"),
    case("precompute-without-features", "--precompute_features --attack=none --model=cnn",
         "--precompute_features needs a --model", "scatternet_cnn", "drop --precompute_features"),
    case("unknown-optimizer", "--optimizer=adamw", "--optimizer", "choose one of", "dp_adambc"),
    case("unknown-attack", "--attack=deepfool", "--attack", "choose one of"),
    case("unknown-norm", "--norm=batch", "--norm", "choose one of"),
    case("unknown-sampling", "--sampling=random", "--sampling", "choose one of"),
    case("unknown-accountant", "--accountant=gdp", "--accountant", "choose one of"),
    case("unknown-eval_preset", "--eval_preset=strong", "--eval_preset", "choose one of"),
    case("unknown-clipping", "--clipping=soft", "--clipping", "choose one of"),
    case("nodp-with-target_epsilon", "--nodp --target_epsilon=1", "--target_epsilon", "--nodp", "drop"),
    case("no-attack-with-adv_weight", "--attack=none --adv_weight=0.7", "--adv_weight", "--attack=none", "drop"),
    case("norm-none-public_from_private", "--norm=none --public_from_private", "--public_from_private", "drop"),
    case("tf_privacy-with-poisson", "--dp_path=tf_privacy", "--dp_path=tf_privacy", "--sampling=shuffle"),
    case("public-is-private", "--public_dataset=mnist", "--public_dataset", "--public_from_private"),
    case("unknown-flag", "--no_such_flag=1", "no_such_flag", "--helpshort"),
    case("unparsable-integer", "--epochs=two", "--epochs", "--helpshort"),
    case("stray-argument", "stray", "stray", "--name=value"),
    case("missing-data_dir", "--data_dir={tmp}/nowhere", "--data_dir", "point it at"),
    case("taken-run_name", "--run_name=taken", "taken already exists", "--run_name", setup=_taken_run),
    case("run_name-with-slash", "--run_name=a/b", "--run_name", "plain folder name"),
    case("export_dir-under-a-file", "--export_dir={tmp}/a_file/models", "--export_dir", "not a writable folder"),
    case("tensorboard_dir-is-a-file", "--tensorboard_dir={tmp}/a_file", "--tensorboard_dir", "give a folder"),
    case("export_dir-in-proc", "--export_dir=/proc/x", "--export_dir=/proc/x", "not a writable folder",
         "choose a writable --export_dir"),
    case("export_dir-on-read-only-mount", "--export_dir={tmp}/ro/models", "--export_dir", "not a writable folder",
         read_only="ro"),
    case("run_name-on-read-only-mount", "--export_dir={tmp}/ro --run_name=r", "--export_dir", "not a writable folder",
         read_only="ro"),
    # Flags the chosen mode ignores.
    case("nodp-with-noise", "--nodp --noise=3", "--noise", "--nodp", "drop --noise"),
    case("nodp-with-l2_clip", "--nodp --l2_clip=2", "--l2_clip", "--nodp", "drop --l2_clip"),
    case("nodp-with-delta", "--nodp --delta=1e-6", "--delta", "--nodp", "drop --delta"),
    case("nodp-with-accountant", "--nodp --accountant=pld", "--accountant", "--nodp", "drop --accountant"),
    case("nodp-with-dp_path", "--nodp --dp_path=tf_privacy --sampling=shuffle", "--dp_path", "drop --dp_path"),
    case("target_epsilon-with-noise", "--target_epsilon=3 --noise=2", "--noise", "--target_epsilon", "drop --noise"),
    case("no-attack-with-steps", "--attack=none --steps=3", "--steps", "--attack=none", "drop --steps"),
    case("no-attack-with-random_start", "--attack=none --norandom_start", "--random_start", "drop --random_start"),
    case("eps-zero-with-eval_steps", "--eps=0 --eval_steps=5", "--eval_steps", "--eps=0", "drop --eval_steps"),
    case("norm-none-with-public_examples", "--norm=none --public_examples=64", "--public_examples", "--norm=none",
         "drop --public_examples"),
    case("kmnist-public-is-private", "--dataset=kmnist --public_dataset=kmnist", "--public_dataset",
         "e.g. mnist or sklearn_digits"),
    # The data's size, from the IDX header of the training images (200), before any decoding.
    case("delta-at-least-1-over-N", "--data_dir={tmp}/data --batch_size=50 --delta=0.01", "--delta=0.01",
         "the 200 training images", "pass e.g. --delta=0.0001", setup=_mnist_200),
    case("batch_size-above-N", "--data_dir={tmp}/data --batch_size=300", "--batch_size=300 exceeds the 200",
         "pass --batch_size=200 or less", setup=_mnist_200),
    case("batch_size-above-max_train", "--max_train=100 --batch_size=150", "--batch_size=150 exceeds the 100",
         "pass --batch_size=100 or less"),
    case("public_from_private-too-large", "--data_dir={tmp}/data --batch_size=50 --public_from_private "
         "--public_examples=100", "--public_examples=100 is too large for the 200", "pass --public_examples=99",
         setup=_mnist_200),
    case("public_examples-beyond-the-pool", "--data_dir={tmp}/data --batch_size=50 --public_dataset=sklearn_digits "
         "--public_examples=2000", "--public_examples=2000 exceeds the 1797 public images",
         "pass --public_examples=1797", setup=_mnist_200),
    # Data files are decoded after TensorFlow loads (runs.run): not fast.
    case("truncated-gz", "--data_dir={tmp}/data --batch_size=50", "train-images-idx3-ubyte.gz", "truncated",
         "download", fast=False, setup=_truncated_gz),
    case("not-gzip", "--data_dir={tmp}/data --batch_size=50", "train-images-idx3-ubyte.gz", "download", fast=False,
         slow=True, setup=_not_gzip),
    case("empty-data-file", "--data_dir={tmp}/data --batch_size=50", "train-images-idx3-ubyte.gz", "download",
         fast=False, slow=True, setup=_empty_gz),
    case("fashion-files-as-mnist", "--data_dir={tmp}/data --batch_size=50", "does not look like mnist",
         "--dataset=fashion_mnist", fast=False, slow=True, setup=_fashion_under_mnist),
    case("data_dir-without-the-dataset", "--dataset=fashion_mnist --data_dir={tmp}/precious",
         "--data_dir=", "has no fashion_mnist", "expected e.g.", fast=False, slow=True),
    case("wrong-image-shape", "--data_dir={tmp}/data --batch_size=50", "train-images-idx3-ubyte.gz",
         "pass files of one dataset", fast=False,
         slow=True, setup=_wrong_shape_idx),    # public pre-training (tfdprobust.pretrain)
    case("public_pretrain-unknown", "--public_pretrain=imagenet", "--public_pretrain='imagenet'", "choose one of"),
    case("public_pretrain-is-the-private-data", "--public_pretrain=mnist", "--public_pretrain=mnist",
         "private --dataset", "choose another source"),
    case("pretrained_weights-missing", "--pretrained_weights={tmp}/nope.h5", "--pretrained_weights={tmp}/nope.h5",
         "does not exist", "pass"),
    case("freeze-bad-k", "--freeze=all_but_last:x", "--freeze", "pass e.g."),
    case("pretrain_epochs-without-a-source", "--pretrain_epochs=2", "--pretrain_epochs", "drop --pretrain_epochs"),
    case("freeze-unknown-layer", "--data_dir={tmp}/data --batch_size=50 --freeze=conv2d_9", "--freeze",
         "no layer 'conv2d_9'", "choose from", fast=False, slow=True, setup=_mnist_200),
]


@pytest.mark.parametrize("c", TRAINING)
def test_training_cli_bad_input(c, tmp_path):
    run_case("tfdprobust.experiments.mnist", c, tmp_path, extra=("--export_dir={tmp}/out", "--verbose=0"))


# ----------------------------------------------------------------------------- tuner
def _foreign_search_folder(work):
    (work / "tuning" / "search").mkdir(parents=True)
    (work / "tuning" / "search" / "notes.txt").write_text("mine\n")


def _corrupt_search_config(work):
    (work / "tuning" / "search" / "trial_0000").mkdir(parents=True)
    (work / "tuning" / "search" / "search_config.json").write_text("{truncated")


@pytest.fixture
def held_lock(tmp_path):
    """Another tuner's lock on ``<work>/tuning``, held by this process for the case."""
    from tfdprobust.tuning.lock import SearchLock

    holder = {}

    def take(work):
        holder["lock"] = SearchLock(types.SimpleNamespace(tuning_dir=str(work / "tuning"),
                                                          project="search")).acquire()

    yield take
    if "lock" in holder:
        holder["lock"].release()


TUNE = [
    case("noise-inf", "--noise=inf", "--noise", "finite"),
    case("noise-zero", "--noise=0", "--noise", "must be > 0"),
    case("delta-two", "--delta=2", "--delta", "must be in (0, 1)"),
    case("clip_grid-nan", "--clip_grid=1,nan", "--clip_grid", "finite"),
    case("lr_grid-zero", "--lr_grid=0,1", "--lr_grid", "finite values > 0"),
    case("clip_grid-words", "--clip_grid=big", "--clip_grid", "use e.g."),
    case("random-without-max_trials", "--tuner=random", "--tuner=random", "--max_trials"),
    case("max_trials-zero", "--tuner=random --max_trials=0", "--max_trials", "must be >= 1"),
    case("unknown-tuner", "--tuner=evolution", "--tuner", "choose one of"),
    case("unknown-objective", "--objective=speed", "--objective", "choose one of"),
    case("unknown-validation", "--validation=exact", "--validation", "choose noisy_count"),
    case("public-validation-with-val_noise", "--validation=public --val_noise=5", "--val_noise", "drop --val_noise"),
    case("nondp_lr_grid-without-reference", "--nondp_lr_grid=1", "--nondp_lr_grid", "--nondp_reference"),
    case("new_ledger-with-insecure", "--new_ledger --insecure_reproducible_noise", "--new_ledger",
         "drop one of them"),
    case("unknown-model", "--model=vgg16", "--model", "choose one of"),
    case("unknown-optimizer", "--optimizer=adamw", "--optimizer", "choose one of"),
    case("unknown-dataset", "--dataset=imagenet", "--dataset", "choose one of"),
    case("tf_privacy-with-poisson", "--dp_path=tf_privacy", "--dp_path=tf_privacy", "--sampling=shuffle"),
    case("epochs-zero", "--epochs=0", "--epochs", "must be >= 1"),
    case("seed-negative", "--seed=-1", "--seed", "must be >= 0"),
    case("adv_weight-two", "--adv_weight=2", "--adv_weight", "must be in [0, 1]"),
    case("missing-data_dir", "--data_dir={tmp}/nowhere", "--data_dir", "point it at"),
    case("tuning_dir-is-a-file", "--tuning_dir={tmp}/a_file", "--tuning_dir", "not a writable folder"),
    case("tuning_dir-under-a-file", "--tuning_dir={tmp}/a_file/t", "--tuning_dir", "choose another --tuning_dir"),
    case("project-with-slash", "--project=a/b", "--project", "plain folder name"),
    case("foreign-search-folder", "", "holds no search_config.json", "choose another --tuning_dir",
         setup=_foreign_search_folder),
    case("overwrite-foreign-folder", "--overwrite", "--overwrite would delete it", "choose another",
         setup=_foreign_search_folder),
    case("corrupt-search_config", "", "search_config.json is unreadable or corrupt", "--overwrite", fast=False,
         slow=True, setup=_corrupt_search_config),
    case("unknown-flag", "--clip=1", "clip", "--helpshort"),
    case("tuning_dir-in-proc", "--tuning_dir=/proc/x", "--tuning_dir=/proc/x", "choose another --tuning_dir"),
    case("tuning_dir-on-read-only-mount", "--tuning_dir={tmp}/ro/t", "--tuning_dir", "choose another --tuning_dir",
         read_only="ro"),
    case("norm-none-with-public_examples", "--norm=none --public_examples=64", "--public_examples", "--norm=none",
         "drop --public_examples"),
    case("eps-zero-with-val_steps", "--eps=0 --objective=natural --val_steps=3", "--val_steps", "--eps=0",
         "drop --val_steps"),
    # The data's size (--max_train=400 caps every source), before any decoding.
    case("batch_size-above-N", "--max_train=400 --batch_size=5000", "--batch_size=5000 is not below the 400",
         "pass --batch_size=299 or less"),
    case("validation_examples-leave-less-than-a-batch", "--max_train=400 --batch_size=350",
         "--validation_examples=100 leaves fewer than --batch_size=350", "pass --validation_examples=49 or less"),
    case("delta-at-least-1-over-N", "--max_train=400 --delta=0.01", "--delta=0.01", "pass e.g. --delta=0.0001"),
    case("public-validation-beyond-the-test-split", "--validation=public --validation_examples=9500 "
         "--max_test=1000", "--validation_examples=9500", "--max_test"),
]


@pytest.mark.parametrize("c", TUNE)
def test_tune_cli_bad_input(c, tmp_path):
    run_case("tfdprobust.tune", c, tmp_path, extra=("--tuning_dir={tmp}/tuning", "--max_train=700",
                                                    "--validation_examples=100", "--batch_size=100"))


def test_tune_cli_refuses_a_locked_folder_in_one_line(tmp_path, held_lock):
    c = Case("locked", (), ("is locked by another tuner", "wait for it to finish"), True, held_lock)
    run_case("tfdprobust.tune", c, tmp_path, extra=("--tuning_dir={tmp}/tuning",))


# ----------------------------------------------------------------------------- evaluation
@pytest.fixture(scope="module")
def cifar_shaped_model(tmp_path_factory):
    """A real Keras model for 32x32x3 images: the wrong shape for MNIST."""
    import tensorflow as tf

    net = tf.keras.Sequential([tf.keras.Input((32, 32, 3)), tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])
    path = tmp_path_factory.mktemp("models") / "cifar_shaped.keras"
    net.save(path)
    return str(path)


def _junk_model(work):
    (work / "m.keras").write_bytes(os.urandom(2000))  # passes the path checks; flag errors come first


def _junk_files(work):
    _junk_model(work)
    (work / "empty.keras").write_bytes(b"")
    (work / "notes.txt").write_text("not a model\n")
    (work / "no_saved_model").mkdir()
    (work / "fake_saved_model").mkdir()
    (work / "fake_saved_model" / "saved_model.pb").write_bytes(os.urandom(300))


def _our_report(work):
    _junk_model(work)
    (work / "report").mkdir()
    for name in ("results.json", "report.md"):
        (work / "report" / name).write_text("{}\n")


EVALUATE = [
    case("no-model", "", "--model is required"),
    case("missing-model", "--model={tmp}/nowhere.keras", "nowhere.keras", "no such file", "pass a SavedModel"),
    case("empty-model-file", "--model={tmp}/empty.keras", "empty.keras", "is empty", setup=_junk_files),
    case("unsupported-model-file", "--model={tmp}/notes.txt", "notes.txt", "unsupported file", setup=_junk_files),
    case("folder-without-saved_model", "--model={tmp}/no_saved_model", "no_saved_model", "no saved_model.pb",
         setup=_junk_files),
    case("out-with-user-file", "--model={tmp}/m.keras --out={tmp}/precious", "--out", "precious",
         "choose a new folder", setup=_junk_files),
    case("out-is-our-report", "--model={tmp}/m.keras --out={tmp}/report", "--out", "pass --overwrite",
         setup=_our_report),
    case("out-is-a-file", "--model={tmp}/m.keras --out={tmp}/a_file", "--out", "existing file", setup=_junk_files),
    case("out-under-a-file", "--model={tmp}/m.keras --out={tmp}/a_file/r", "--out", "choose another --out",
         setup=_junk_files),
    case("out-in-proc", "--model={tmp}/m.keras --out=/proc/x", "--out /proc/x", "choose another --out",
         setup=_junk_files),
    case("out-on-read-only-mount", "--model={tmp}/m.keras --out={tmp}/ro/r", "--out", "not a writable folder",
         "choose another --out", setup=_junk_files, read_only="ro"),
    case("eps_linf-inf", "--model={tmp}/m.keras --eps_linf=0,inf", "--eps_linf", "finite", setup=_junk_files),
    case("eps_linf-not-from-zero", "--model={tmp}/m.keras --eps_linf=0.1,0.2", "--eps_linf", "start at 0",
         setup=_junk_files),
    case("eps_l2-words", "--model={tmp}/m.keras --eps_l2=0,big", "--eps_l2", "comma-separated numbers",
         setup=_junk_files),
    case("num_examples-zero", "--model={tmp}/m.keras --num_examples=0", "--num_examples", "must be >= 1",
         setup=_junk_files),
    case("steps-zero", "--model={tmp}/m.keras --steps=0", "--steps", "must be >= 1", setup=_junk_files),
    case("fool_eps-zero", "--model={tmp}/m.keras --fool_eps=0", "--fool_eps", "must be in (0, 1]",
         setup=_junk_files),
    case("unknown-preset", "--model={tmp}/m.keras --preset=strong", "--preset", "choose one of", setup=_junk_files),
    case("unknown-sweep-attack", "--model={tmp}/m.keras --sweep_attacks=deepfool", "--sweep_attacks",
         "choose one of", setup=_junk_files),
    case("unknown-dataset", "--model={tmp}/m.keras --dataset=svhn", "--dataset", "should be one of",
         setup=_junk_files),
    case("unknown-section", "--model={tmp}/m.keras --sections=speed", "--sections", "choose from",
         setup=_junk_files),
    case("unknown-corruption", "--model={tmp}/m.keras --corruptions=rain", "--corruptions", "choose one of",
         setup=_junk_files),
    case("unknown-input_range", "--model={tmp}/m.keras --input_range=percent", "--input_range",
         "should be one of", setup=_junk_files),
    case("names-and-models-differ", "--model={tmp}/m.keras --name=a --name=b", "--name", "one per model",
         setup=_junk_files),
    case("verbose-five", "--model={tmp}/m.keras --verbose=5", "--verbose", "must be 0, 1 or 2", setup=_junk_files),
    case("missing-data_dir", "--model={tmp}/m.keras --data_dir={tmp}/nowhere", "--data_dir", "pass the folder",
         setup=_junk_files),
    case("unknown-flag", "--model={tmp}/m.keras --attack=pgd", "attack", "--helpshort", setup=_junk_files),
    # Model contents are read after TensorFlow loads: not fast.
    case("corrupt-keras-file", "--model={tmp}/m.keras", "m.keras", "corrupt", "model.save()", fast=False,
         setup=_junk_files),
    case("corrupt-saved_model", "--model={tmp}/fake_saved_model", "fake_saved_model", "corrupt",
         "tf.saved_model.save", fast=False, slow=True, setup=_junk_files),
]


@pytest.mark.parametrize("c", EVALUATE)
def test_evaluate_cli_bad_input(c, tmp_path):
    # --out of its own unless the case names one: the default reports/ folder must not appear either
    run_case("tfdprobust.evaluate", c, tmp_path)


@pytest.mark.slow
def test_evaluate_cli_refuses_a_model_of_the_wrong_input_shape(tmp_path, cifar_shaped_model, shared_data):
    c = Case("wrong-input-shape", (f"--model={cifar_shaped_model}", f"--data_dir={shared_data}", "--quick"),
             ("cifar_shaped", "32, 32, 3"), False, None)
    run_case("tfdprobust.evaluate", c, tmp_path)


# ----------------------------------------------------------------------------- audit
def _export_without_metadata(work):
    (work / "export").mkdir()
    (work / "export" / "saved_model.pb").write_bytes(os.urandom(300))


AUDIT = [
    case("no-model", "--out={tmp}/audit", "--model", "pass at least one"),
    case("missing-model", "--model={tmp}/nowhere --out={tmp}/audit", "nowhere", "no such file", "pass an export"),
    case("no-out", "--model={tmp}/export", "--out is required", setup=_export_without_metadata),
    case("out-with-user-file", "--model={tmp}/export --out={tmp}/precious", "--out", "precious",
         "choose a new folder", setup=_export_without_metadata),
    case("out-under-a-file", "--model={tmp}/export --out={tmp}/a_file/audit", "--out", "choose a writable --out",
         setup=_export_without_metadata),
    case("out-in-proc", "--model={tmp}/export --out=/proc/x", "--out=/proc/x", "choose a writable --out",
         setup=_export_without_metadata),
    case("alpha-inf", "--model={tmp}/export --out={tmp}/audit --alpha=inf", "--alpha", "finite",
         setup=_export_without_metadata),
    case("alpha-two", "--model={tmp}/export --out={tmp}/audit --alpha=2", "--alpha", "must be in (0, 1)",
         setup=_export_without_metadata),
    case("delta-zero", "--model={tmp}/export --out={tmp}/audit --delta=0", "--delta", "must be in (0, 1)",
         setup=_export_without_metadata),
    case("unknown-attacker", "--model={tmp}/export --out={tmp}/audit --attacker=svm", "--attacker", "choose one of",
         setup=_export_without_metadata),
    case("folds-one", "--model={tmp}/export --out={tmp}/audit --folds=1", "--folds", "must be >= 2",
         setup=_export_without_metadata),
    case("max_examples-five", "--model={tmp}/export --out={tmp}/audit --max_examples=5", "--max_examples", ">= 20",
         setup=_export_without_metadata),
    case("unknown-nonmembers", "--model={tmp}/export --out={tmp}/audit --nonmembers=val", "--nonmembers",
         "choose one of", setup=_export_without_metadata),
    case("seed-negative", "--model={tmp}/export --out={tmp}/audit --seed=-1", "--seed", "must be >= 0",
         setup=_export_without_metadata),
    case("names-and-models-differ", "--model={tmp}/export --out={tmp}/audit --name=a --name=b", "--name",
         "one per model", setup=_export_without_metadata),
    case("missing-data_dir", "--model={tmp}/export --out={tmp}/audit --data_dir={tmp}/nowhere", "--data_dir",
         "pass the folder", setup=_export_without_metadata),
    case("unknown-dataset", "--model={tmp}/export --out={tmp}/audit --dataset=svhn", "--dataset", "choose one of",
         setup=_export_without_metadata),
    case("no-recorded-members", "--model={tmp}/export --out={tmp}/audit", "data_config", "pass --data_dir",
         setup=_export_without_metadata),
    case("stray-argument", "--model={tmp}/export --out={tmp}/audit extra", "extra", "flag",
         setup=_export_without_metadata),
]


@pytest.mark.parametrize("c", AUDIT)
def test_audit_cli_bad_input(c, tmp_path):
    run_case("tfdprobust.audit", c, tmp_path)


# ----------------------------------------------------------------------------- experiment entry points
EXPERIMENTS = [
    case("public_norm-noise-inf", "tfdprobust.experiments.public_norm --noise=inf", "--noise", "finite"),
    case("public_norm-noise-negative", "tfdprobust.experiments.public_norm --noise=-1", "--noise", "must be >= 0"),
    case("public_norm-unknown-row", "tfdprobust.experiments.public_norm --rows=cifar", "--rows", "choose from"),
    case("public_norm-seed-word", "tfdprobust.experiments.public_norm --seeds=one", "--seeds", "integers"),
    case("public_norm-learning_rate-1e30", "tfdprobust.experiments.public_norm --learning_rate=1e30",
         "--learning_rate", "must be in"),
    case("public_norm-missing-data_dir", "tfdprobust.experiments.public_norm --data_dir={tmp}/nowhere",
         "--data_dir", "point it at"),
    case("public_norm-out-taken", "tfdprobust.experiments.public_norm --out={tmp}/precious", "--out",
         "pass --overwrite"),
    case("public_norm-report-without-results", "tfdprobust.experiments.public_norm --report_only",
         "--report_only", "results.json"),
    case("defaults_sweep-batch-zero", "tfdprobust.experiments.defaults_sweep --batch_sizes=0", "--batch_sizes",
         "must be >= 1"),
    case("defaults_sweep-unknown-optimizer", "tfdprobust.experiments.defaults_sweep --optimizers=adamw",
         "--optimizers", "choose from"),
    case("defaults_sweep-clip-inf", "tfdprobust.experiments.defaults_sweep --l2_clips=1,inf", "--l2_clips",
         "finite"),
    case("public_norm-out-in-proc", "tfdprobust.experiments.public_norm --data_dir={tmp}/precious --out=/proc/x",
         "--out=/proc/x",
         "choose a writable --out"),
    case("defaults_sweep-out-under-a-file", "tfdprobust.experiments.defaults_sweep --out={tmp}/a_file/sweep",
         "--out", "choose a writable --out"),
    case("cifar10-unknown-compare", "tfdprobust.experiments.cifar10 --compare=sgd,lion", "--compare", "choose from"),
    case("cifar10-noise-negative", "tfdprobust.experiments.cifar10 --noise=-1", "--noise", "must be >= 0"),
    case("cifar10-table_dir-is-a-file", "tfdprobust.experiments.cifar10 --compare=sgd --table_dir={tmp}/a_file",
         "--table_dir", "give a folder"),
    case("linear_gaussian-clip-inf", "tfdprobust.experiments.linear_gaussian --clip=inf", "--clip", "finite"),
    case("linear_gaussian-out-taken", "tfdprobust.experiments.linear_gaussian --out={tmp}/precious", "--out",
         "pass --overwrite"),
    case("linear_gaussian-n-one", "tfdprobust.experiments.linear_gaussian --n=1", "--n", "must be >= 2"),
    case("linear_gaussian-out-in-proc", "tfdprobust.experiments.linear_gaussian --out=/proc/x", "--out=/proc/x",
         "choose a writable --out"),
    case("linear_gaussian-out-on-read-only-mount", "tfdprobust.experiments.linear_gaussian --out={tmp}/ro/lg",
         "--out", "choose a writable --out", read_only="ro"),
    case("linear_gaussian-delta-at-least-1-over-n", "tfdprobust.experiments.linear_gaussian --out={tmp}/lg "
         "--delta=0.5", "--delta", "pass a smaller --delta"),
    case("linear_gaussian-lr-1e300", "tfdprobust.experiments.linear_gaussian --out={tmp}/lg --lr=1e300", "--lr",
         "must be in"),
    case("linear_gaussian-nosweeps-with-sweep_clips", "tfdprobust.experiments.linear_gaussian --out={tmp}/lg "
         "--nosweeps --sweep_clips=1", "--sweep_clips", "drop --sweep_clips"),
    # Divergence shows only in the results (after the work): refused, and nothing is written.
    case("linear_gaussian-diverged", "tfdprobust.experiments.linear_gaussian --out={tmp}/lg --clip=1e300 --lr=1e6 "
         "--n=2000 --batch_size=100 --delta=1e-4 --epochs=2 --nosweeps", "training diverged", "nothing was written",
         "lower --lr", fast=False),
    case("robustness_threats-noise-inf", "tfdprobust.experiments.robustness_threats --noise=inf", "--noise",
         "finite"),
    case("robustness_threats-out-taken", "tfdprobust.experiments.robustness_threats --out={tmp}/precious", "--out",
         "--overwrite"),
    case("private_robust-epsilon-inf", "tfdprobust.experiments.private_robust --target_epsilon=inf",
         "--target_epsilon", "finite"),
    case("private_robust-out-taken", "tfdprobust.experiments.private_robust --out={tmp}/precious", "--out",
         "--overwrite"),
    case("compare_autoattack-missing-model", "tfdprobust.experiments.compare_autoattack --model={tmp}/nowhere",
         "nowhere", "no such file"),
    case("compare_autoattack-eps-above-one",
         "tfdprobust.experiments.compare_autoattack --model={tmp}/m.keras --eps_linf=2", "--eps_linf", "must be in",
         setup=_junk_files),
    case("compare_autoattack-no-radius",
         "tfdprobust.experiments.compare_autoattack --model={tmp}/m.keras --eps_linf= --eps_l2=", "--eps_l2",
         "at least one norm", setup=_junk_files),
    case("compare_autoattack-folder-is-no-model",
         "tfdprobust.experiments.compare_autoattack --model={tmp}/precious", "precious", "no saved_model.pb"),
    case("train_foreign_cnn-epochs-zero", "tfdprobust.experiments.train_foreign_cnn --epochs=0", "--epochs",
         "must be >= 1"),
    case("train_foreign_cnn-out-not-keras", "tfdprobust.experiments.train_foreign_cnn --out={tmp}/model.h5",
         "--out", ".keras"),
    case("benchmark_training-examples-zero", "tfdprobust.experiments.benchmark_training --examples=0", "--examples",
         "must be >= 1"),
    case("benchmark_training-out-under-a-file", "tfdprobust.experiments.benchmark_training --out={tmp}/a_file/b",
         "--out", "choose a writable --out"),
    case("benchmark_evaluate-examples-zero", "tfdprobust.experiments.benchmark_evaluate --num_examples=0",
         "--num_examples", "must be >= 1"),
    case("benchmark_evaluate-out-with-user-file", "tfdprobust.experiments.benchmark_evaluate --out={tmp}/precious",
         "--out", "choose a new folder"),
    case("benchmark_peers-unknown-model", "benchmarks.benchmark_peers --models=foo --out={tmp}/bench",
         "--models", "cnn, lenet, resnet20"),
    case("benchmark_peers-seconds-negative", "benchmarks.benchmark_peers --seconds=-1 --out={tmp}/bench",
         "--seconds", ">"),
    case("benchmark_peers-rounds-zero", "benchmarks.benchmark_peers --rounds=0 --out={tmp}/bench",
         "--rounds", ">= 1"),
    case("time_refusals-unknown-suite", "tfdprobust.experiments.time_refusals --only=speed", "--only",
         "choose from"),
    case("profile_step-batch-size-zero", "benchmarks.profile_step --batch_size=0", "--batch_size",
         "must be >= 1"),
    case("eps_table-unknown-method", "tfdprobust.experiments.eps_table --methods=dpsgd,magic --out={tmp}/t",
         "--methods", "magic"),
    case("eps_table-epsilon-zero", "tfdprobust.experiments.eps_table --epsilons=3,0 --out={tmp}/t", "--epsilons",
         "> 0"),
    case("eps_table-pretrain-on-the-private-data", "tfdprobust.experiments.eps_table --dataset=mnist "
         "--pretrain_source=mnist --data_dir={tmp}/precious --out={tmp}/t", "--pretrain_source=mnist",
         "choose another source"),
    case("eps_table-report-without-cells", "tfdprobust.experiments.eps_table --report_only --out={tmp}/t",
         "--report_only", "holds no cells"),
    case("eps_table-no-kmnist-for-the-public-statistics", "tfdprobust.experiments.eps_table "
         "--data_dir={tmp}/precious --out={tmp}/t", "--data_dir", "no kmnist/ folder"),
    case("eps_table-unknown-nodp-optimizer", "tfdprobust.experiments.eps_table --nodp_optimizer=lion --out={tmp}/t",
         "--nodp_optimizer", "lion"),
]


@pytest.mark.parametrize("c", EXPERIMENTS)
def test_experiment_entry_point_bad_input(c, tmp_path):
    module, *argv = c.argv
    run_case(module, dataclasses.replace(c, argv=tuple(argv)), tmp_path)


# ----------------------------------------------------------------------------- help, and names read from source
ENTRY_POINTS = ["tfdprobust.experiments.mnist", "tfdprobust.tune", "tfdprobust.evaluate", "tfdprobust.audit",
                "tfdprobust.experiments.cifar10", "tfdprobust.experiments.public_norm",
                "tfdprobust.experiments.defaults_sweep", "tfdprobust.experiments.robustness_threats",
                "tfdprobust.experiments.private_robust", "tfdprobust.experiments.linear_gaussian",
                "tfdprobust.experiments.benchmark_training", "tfdprobust.experiments.benchmark_evaluate",
                "tfdprobust.experiments.compare_autoattack", "tfdprobust.experiments.train_foreign_cnn",
                "benchmarks.benchmark_peers", "benchmarks.profile_step", "benchmarks.compare_stacks",
                "tfdprobust.experiments.time_refusals", "tfdprobust.experiments.eps_table"]

_HELP_PROBE = """
import runpy, sys
module, flag = sys.argv[1:]
sys.argv = [module, flag]
code = 0
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
sys.stdout.flush()
print("TENSORFLOW IMPORTED" if "tensorflow" in sys.modules else "no tensorflow", file=sys.stderr)
sys.exit(code or 0)
"""


def test_every_entry_point_is_listed():
    folder = os.path.join(ROOT, "tfdprobust", "experiments")
    # an entry point is a module that runs as a script; helpers (common, *_report) do not
    modules = {f"tfdprobust.experiments.{n[:-3]}" for n in os.listdir(folder)
               if n.endswith(".py") and '__name__ == "__main__"' in open(os.path.join(folder, n)).read()}
    assert len(modules) >= 10 and modules - set(ENTRY_POINTS) == set()


@pytest.mark.parametrize("flag", ["--help", "--helpshort"])
@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_lists_the_flags_without_importing_tensorflow(module, flag):
    proc = subprocess.run([sys.executable, "-c", _HELP_PROBE, module, flag], capture_output=True, text=True,
                          env=_env(), timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "no tensorflow", proc.stderr[-2000:]
    assert len(re.findall(r"^\s+--", proc.stdout, re.M)) >= 3, proc.stdout[-2000:]


def test_names_read_from_source_are_the_registries_names():
    """The pre-TensorFlow checks read registry names from the source (flagcheck); they must
    be exactly what the imported registries hold."""
    from tfdprobust import (accounting, attacks, clipping, ensemble, flagcheck, models, optimizers, sampling,
                            train_step)

    assert flagcheck.registered_names("tfdprobust.models", "MODELS") == models.MODELS.names()
    assert flagcheck.registered_names("tfdprobust.optimizers", "OPTIMIZERS") == optimizers.OPTIMIZERS.names()
    assert flagcheck.registered_names("tfdprobust.clipping", "CLIPPINGS") == clipping.CLIPPINGS.names()
    assert flagcheck.registered_names("tfdprobust.ensemble", "PRESETS") == ensemble.PRESETS.names()
    assert flagcheck.registered_names("tfdprobust.sampling", "SAMPLERS") == sampling.SAMPLERS.names()
    assert flagcheck.registered_names("tfdprobust.accounting", "ACCOUNTANTS") == accounting.ACCOUNTANTS.names()
    assert flagcheck.attack_names() == attacks.ATTACKS.names()
    assert flagcheck.constant("tfdprobust.models", "NORMS") == models.NORMS
    assert flagcheck.constant("tfdprobust.train_step", "DP_PATHS") == train_step.DP_PATHS
