"""tfdprobust: differentially private and adversarially robust Keras models.

Bring your own Keras model::

    import tfdprobust as tdp
    model = tdp.make_private(net, num_examples=len(x), expected_batch_size=64, epochs=5,
                             target_epsilon=3.0, attack="pgd_linf")
    model.fit(x, y, epochs=5)      # Poisson batches drawn by the trainer itself
    print(model.guarantee)         # "(2.98, 1e-06)-DP, example-level, ..."

The package is flat; each module names one concept:

* ``data``          real loaders (TFDS, raw IDX/npz) with a fast, visible offline fallback
* ``models``        model registry (MNIST CNN, LeNet) with a choice of normalization
* ``normalization`` batch normalization whose statistics come only from public data
* ``attacks``       attack registry (CleverHans attacks, APGD) used in training and evaluation
* ``clipping``      per-example clipping and Gaussian noise (the DP core)
* ``randomness``    secret (OS-entropy) generators for the noise and the batch sampling
* ``sampling``      batch samplers (Poisson, shuffle) that also state their DpEvent
* ``train_step``    the Keras model whose ``train_step`` does PGD + DP-SGD
* ``distribute``    DP data-parallel training on tf.distribute (mirrored devices, multiple workers)
* ``accounting``    RDP/PLD accounting through dp_accounting (epsilon, noise calibration)
* ``export``        atomic SavedModel export with metadata
* ``evaluate``      robustness evaluation of exported models
* ``audit``         membership-inference privacy audit (empirical lower bounds on epsilon)
* ``tuning``        Keras Tuner search over clipping norm x learning rate (``python -m tfdprobust.tune``)
* ``recipes``       named configurations that follow published private models (``--recipe``)
* ``precompute``    fixed features (the scattering) computed once; the head trains on them
* ``engine``        the facade: :func:`make_private` wraps a user's model, with the guarantee attached

Importing the package loads no TensorFlow (the CLIs check their flags first); the names
below load on first use.
"""

import importlib
import os



def _select_keras_2() -> None:
    """Keras 2 as tf.keras on TensorFlow >= 2.16, from the `tf-keras` package (see
    tfdprobust.compat). TensorFlow reads TF_USE_LEGACY_KERAS when tf.keras is first touched,
    so this works after `import tensorflow` too, as long as nothing used tf.keras yet
    (compat.check_keras refuses Keras 3 in one line otherwise). Only where tf-keras is
    installed: TensorFlow 2.15 (the reference stack) would then look for it and fail."""
    import importlib.metadata

    try:
        importlib.metadata.version("tf-keras")
    except importlib.metadata.PackageNotFoundError:
        return
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


_select_keras_2()

_LAZY = {
    "make_private": "tfdprobust.engine", "PrivateTrainer": "tfdprobust.engine",
    "StopAtEpsilon": "tfdprobust.engine", "AttackConfig": "tfdprobust.attacks",
    "DPConfig": "tfdprobust.train_step", "TrainConfig": "tfdprobust.train_step",
    "PrivateRobustModel": "tfdprobust.train_step",
}


# Submodules reachable as attributes (``tdp.recipes.get(...)``) without an import of their own.
_SUBMODULES = ("recipes",)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"tfdprobust.{name}")
    raise AttributeError(f"module 'tfdprobust' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY, *_SUBMODULES])

__version__ = "0.1.0"
