"""Data roles decided per example: which private examples train, validate or stay unused.

A split that permutes the pool (``default_rng(seed).permutation(n)``, then "the first k")
depends on the pool's size and on every other example: adding one example to a 5,000-digit
pool moved 634 others between training and validation. Under add-or-remove-one adjacency
each part must then differ in that one example only.

Here each example gets a uniform number ``u`` in [0, 1) from a keyed hash of its own bytes
(image + label, :func:`tfdprobust.ledger.example_digests`): ``blake2b(digest, key=key,
person=purpose)``, so ``u`` depends on that example alone, and distinct purposes
(validation, ``--max_train``, ...) draw independent numbers. A role is the threshold rule
``u < rate``: adding or removing one example changes that example's role and no other.

Why a threshold and not "the k smallest u": the k smallest depend on the others (adding
an example with a small u pushes the k-th out: two examples change, which is group
privacy of size 2). A threshold gives about ``rate * N`` examples (binomial), not exactly k.
The rate is computed from counts the toolkit treats as public, e.g. ``--max_train / N`` with
N the pool size (which also sets the sampling rate q = B / N and is published as
``num_train_examples``); neighbouring pools are compared at the same rate, as DP-SGD's
analysis compares them at the same q.

The key of a private split comes from OS entropy, once per data set, and is kept in the
user-level store beside the data set's ledger (``<ledger_dir>/<fingerprint>.roles.SECRET.key``,
mode 0600, never in a run's output): every run and search on the data set then sees the
same roles (a resumed run, the audit's members), and nothing published or derived from
``--seed`` reveals them. A split that is itself published (the offline fallback's test
hold-out, reported on) uses a fixed public key, so it stays the same across runs.
"""

import hashlib
import os
from typing import Optional

import numpy as np

from tfdprobust import ledger

KEY_SUFFIX = ".roles.SECRET.key"
#: The key of splits that are published anyway (the offline test hold-out): stable, not secret.
PUBLIC_KEY = b"tfdprobust: public data roles"


def uniforms(x: np.ndarray, y: np.ndarray, key: bytes, purpose: str) -> np.ndarray:
    """One number in [0, 1) per example, from a keyed hash of that example's bytes alone.

    Example:
        >>> x = np.arange(12, dtype=np.float32).reshape(3, 4); y = np.array([0, 1, 2])
        >>> u = uniforms(x, y, b"k", "validation")
        >>> bool(np.all(uniforms(x[1:], y[1:], b"k", "validation") == u[1:]))
        True
    """
    person = purpose.encode()[:16]
    out = np.empty(len(x), np.float64)
    for i, digest in enumerate(ledger.example_digests(x, y)):
        word = int.from_bytes(hashlib.blake2b(digest, digest_size=8, key=key, person=person).digest(), "little")
        out[i] = (word >> 11) / float(1 << 53)  # 53 bits: exactly representable, < 1
    return out


def below(x: np.ndarray, y: np.ndarray, key: bytes, purpose: str, rate: float) -> np.ndarray:
    """The indices of the examples whose ``u`` is below ``rate`` (the threshold rule)."""
    return np.flatnonzero(uniforms(x, y, key, purpose) < rate)


def key_path(data_fingerprint: str, ledger_dir: Optional[str] = None) -> str:
    return os.path.join(ledger.resolve_dir(ledger_dir), data_fingerprint + KEY_SUFFIX)


def secret_key(data_fingerprint: str, ledger_dir: Optional[str] = None) -> bytes:
    """The data set's secret roles key: read from the store, or made from OS entropy once.

    Created with ``O_EXCL`` (mode 0600), so concurrent first runs agree on one key.
    """
    path = key_path(data_fingerprint, ledger_dir)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, os.urandom(32).hex().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # atomic, fails if another run made the key first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    with open(path) as f:
        return bytes.fromhex(f.read().strip())
