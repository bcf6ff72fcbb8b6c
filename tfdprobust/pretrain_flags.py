"""The command-line flags of public pre-training (:mod:`tfdprobust.pretrain`): their
definitions, the checks that run before TensorFlow loads, and the config they make.

Used by ``python -m tfdprobust.experiments.mnist``; no TensorFlow at import time.
"""

import os
from typing import Optional

from tfdprobust.errors import require
from tfdprobust.pretrain import FASHION_DIR, NONE, SOURCES, PretrainConfig, check_not_private, locate_files, \
    parse_freeze, source


def define_flags(f) -> None:
    """Defines the pre-training flags on an absl flags module (one name per concept)."""
    f.DEFINE_string("public_pretrain", NONE, "Pre-train non-privately on public data before DP training: "
                    f"{', '.join((NONE, *SOURCES))} (digits = scikit-learn's 8x8 digits, upsampled; files from "
                    f"--data_dir, Fashion-MNIST also from {FASHION_DIR}; TFDS online). Never the private "
                    "--dataset. Outside the DP accounting (no private data); the guarantee names it.")
    f.DEFINE_integer("pretrain_epochs", 3, "Epochs of --public_pretrain.")
    f.DEFINE_integer("pretrain_examples", 0, "Use at most this many public pre-training images (0 = all).")
    f.DEFINE_float("pretrain_learning_rate", 1e-3, "Adam learning rate of --public_pretrain.")
    f.DEFINE_boolean("pretrain_adversarial", False, "Pre-train with the training attack (--attack, --eps, "
                     "--steps) on the public data too.")
    f.DEFINE_string("pretrained_weights", None, "Start from these public weights: a Keras weights file (.h5, "
                    ".weights.h5), a .keras file or a SavedModel folder (layers matched by position and shape).")
    f.DEFINE_string("freeze", NONE, "Layers DP training leaves unchanged: none, all_but_last:k (train only the "
                    "last k layers with weights) or comma-separated layer names (conv2d_0, dense_1, ...: class and "
                    "position among the layers of that class with weights).")


FLAG_NAMES = ("public_pretrain", "pretrain_epochs", "pretrain_examples", "pretrain_learning_rate",
              "pretrain_adversarial", "pretrained_weights", "freeze")


def check_flags(fv, private_dataset: str, attack: str) -> None:
    """The checks that need neither TensorFlow nor data (names, numbers, files, the source
    not being the private data and being available here)."""
    from tfdprobust import data, flagcheck

    flagcheck.choice(fv, "public_pretrain", (NONE, *SOURCES))
    flagcheck.ranges(fv, {"pretrain_epochs": ">=1", "pretrain_examples": ">=0", "pretrain_learning_rate": "(0,10]"})
    off = fv.public_pretrain == NONE
    flagcheck.refuse_ignored(fv, [
        *[(name, off, "--public_pretrain=none does no pre-training")
          for name in ("pretrain_epochs", "pretrain_examples", "pretrain_learning_rate", "pretrain_adversarial")],
    ])
    require(not (fv.pretrain_adversarial and attack == "none"),
            "--pretrain_adversarial uses the training attack but --attack=none; pass --attack=pgd_linf or drop "
            "--pretrain_adversarial")
    parse_freeze(fv.freeze)
    require(fv.pretrained_weights is None or os.path.exists(fv.pretrained_weights),
            f"--pretrained_weights={fv.pretrained_weights} does not exist; pass a Keras weights file (.h5, "
            ".weights.h5), a .keras file or a SavedModel folder")
    cfg = PretrainConfig(source=fv.public_pretrain, freeze=fv.freeze, data_dir=fv.data_dir)
    check_not_private(cfg, private_dataset)
    if not off and source(fv.public_pretrain).dataset != data.SKLEARN_DIGITS and fv.tfds_dir is None:
        require(locate_files(cfg) or data.tfds_reachable(),
                f"--public_pretrain={fv.public_pretrain}: no {fv.public_pretrain} files in --data_dir={fv.data_dir} "
                "and TensorFlow Datasets cannot download offline; pass --data_dir with its files (or "
                "--public_pretrain=digits)")


def config_from_flags(fv, attack=None) -> Optional[PretrainConfig]:
    """The :class:`PretrainConfig` of the flags (``None`` when they ask for nothing)."""
    cfg = PretrainConfig(source=fv.public_pretrain, epochs=fv.pretrain_epochs, examples=fv.pretrain_examples,
                         learning_rate=fv.pretrain_learning_rate,
                         attack=attack if fv.pretrain_adversarial else None, weights=fv.pretrained_weights,
                         freeze=fv.freeze, data_dir=fv.data_dir, tfds_dir=fv.tfds_dir, seed=fv.seed)
    return cfg if cfg.active else None
