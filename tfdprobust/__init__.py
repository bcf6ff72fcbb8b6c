"""tfdprobust: differentially private and adversarially robust Keras models.

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
"""

__version__ = "0.1.0"
