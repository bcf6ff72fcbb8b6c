"""Secret randomness: where the DP noise and the Poisson batches get their random bits.

DP-SGD's guarantee rests on an adversary *not* knowing the noise and the batch
membership. An adversary who reads our code and the recorded ``--seed`` could otherwise
replay a run on D and on D' and see which one matches the released weights. So:

* Every noise draw and every Poisson membership mask comes from a
  ``tf.random.Generator`` whose full 192-bit Philox state is read from the operating
  system's entropy pool (``os.urandom``) when the generator is made: fresh for every
  run and every tuning trial, never derived from ``--seed``, never written anywhere.
  (Opacus calls the same idea ``secure_mode``; jax_privacy notes that batch indices are
  sensitive too.)
* ``--seed`` still fixes what does not protect privacy: weight initialization, data
  splits and the attack's random starts *before* training.
* Reproducible noise exists only behind ``--insecure_reproducible_noise``. A run made
  with it carries no DP guarantee, and its output and metadata say so.

Sharp edges (documented, not solved here): Philox4x32-10 is a strong counter-based
generator but not a proven cryptographic one (Opacus uses AES-CTR through torchcsprng);
and floating-point Gaussian sampling has the known precision side channel of Mironov,
"On significance of the least significant bits for differential privacy".

Example:
    >>> a, b = noise_generator(), noise_generator()
    >>> bool((a.state.numpy() != b.state.numpy()).any())          # fresh per call
    True
    >>> c, d = noise_generator(insecure_seed=3), noise_generator(insecure_seed=3)
    >>> bool((c.state.numpy() == d.state.numpy()).all())          # insecure: replayable
    True
"""

import os
from typing import Optional

import tensorflow as tf

#: Printed and stored with every run made with reproducible noise.
INSECURE_WARNING = (
    "NOT PRIVATE: --insecure_reproducible_noise derives the DP noise and the batch sampling "
    "from --seed, so anyone who knows the seed can replay them; this run has no DP guarantee")


def secret_int(bits: int = 192) -> int:
    """A fresh integer from the OS entropy pool (never logged, never derived from a seed)."""
    return int.from_bytes(os.urandom(bits // 8), "little")


def noise_generator(insecure_seed: Optional[int] = None) -> tf.random.Generator:
    """A Philox generator for DP noise or batch sampling.

    Args:
        insecure_seed: ``None`` (the default, and the only private choice) seeds the whole
            generator state from ``os.urandom``. An integer makes the stream replayable,
            which voids the DP guarantee; only ``--insecure_reproducible_noise`` passes one.
    """
    seed = secret_int() if insecure_seed is None else insecure_seed
    return tf.random.Generator.from_seed(seed, alg="philox")


def reseed_global(insecure_seed: Optional[int] = None) -> None:
    """Reseeds TensorFlow's *global* stateful RNG, after initialization, before training.

    Ops that draw from the global RNG during training (tensorflow-privacy's optimizers
    add their noise with ``tf.random.normal``; PGD's random starts) then cannot be
    replayed from ``--seed``. Initialization and data splits happened before, from
    ``--seed``, and stay reproducible.
    """
    seed = secret_int(63) if insecure_seed is None else insecure_seed
    tf.random.set_seed(seed)
