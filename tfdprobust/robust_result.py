"""What :func:`tfdprobust.ensemble.robust_accuracy` returns: per-example robust accuracy
by eps, the accuracy after each attack, and exact (Clopper-Pearson) 95% intervals.

Kept apart from the attacks so that reports, the tuner and the sanity checks can read and
fold results without importing the attack code.
"""

import dataclasses
import math
from typing import Dict, Tuple

import numpy as np


def clopper_pearson(k: int, n: int, level: float = 0.95) -> Tuple[float, float]:
    """Exact binomial confidence interval for an accuracy of ``k`` out of ``n``.

    Example:
        >>> lo, hi = clopper_pearson(50, 100)
        >>> round(lo, 3), round(hi, 3)
        (0.398, 0.602)
    """
    # The audit's vectorized one-sided bounds, each at (1 - level) / 2: one formula in the project.
    from tfdprobust.audit.bounds import clopper_pearson as one_sided_bounds

    if n == 0:
        return 0.0, 1.0
    lo, hi = one_sided_bounds(k, n, (1 - level) / 2)
    return float(lo), float(hi)


@dataclasses.dataclass(frozen=True)
class EpsResult:
    """Robust accuracy at one eps.

    Attributes:
        eps: radius.
        correct: per example, robust against every attack that ran (bool array).
        after_each: ``(attack, accuracy)`` in order, starting with ``clean`` (and, for
            eps after the first, ``smaller eps``: the points already broken there).
    """

    eps: float
    correct: np.ndarray
    after_each: Tuple[Tuple[str, float], ...]

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct)) if len(self.correct) else 0.0

    @property
    def ci95(self) -> Tuple[float, float]:
        return clopper_pearson(int(np.sum(self.correct)), len(self.correct))


@dataclasses.dataclass(frozen=True)
class RobustAccuracy:
    """What :func:`robust_accuracy` returns. ``results`` is sorted by eps."""

    preset: str
    norm: str
    clean_accuracy: float
    results: Tuple[EpsResult, ...]
    seconds: float

    def at(self, eps: float) -> EpsResult:
        for r in self.results:
            if math.isclose(r.eps, eps, rel_tol=1e-9, abs_tol=1e-12):
                return r
        raise KeyError(f"eps={eps} was not evaluated; have {[r.eps for r in self.results]}")

    def accuracy(self, eps: float) -> float:
        """Robust accuracy at ``eps``."""
        return self.at(eps).accuracy

    def ci95(self, eps: float) -> Tuple[float, float]:
        """95% Clopper-Pearson interval of the robust accuracy at ``eps``."""
        return self.at(eps).ci95

    def fold(self, eps: float, attack: str, correct: np.ndarray) -> "RobustAccuracy":
        """Folds another attack's per-example result (e.g. SPSA or Square from the sanity
        checks) into the per-example minimum at ``eps`` and every larger eps."""
        correct = np.asarray(correct, bool)
        out = []
        for r in self.results:
            if r.eps >= eps - 1e-12:
                new = r.correct & correct
                out.append(EpsResult(r.eps, new, r.after_each + ((attack, float(np.mean(new))),)))
            else:
                out.append(r)
        return dataclasses.replace(self, results=tuple(out))

    def to_dict(self) -> Dict:
        return {
            "preset": self.preset, "norm": self.norm, "clean_accuracy": self.clean_accuracy,
            "seconds": self.seconds, "n": len(self.results[0].correct) if self.results else 0,
            "eps": [r.eps for r in self.results],
            "robust_accuracy": [r.accuracy for r in self.results],
            "ci95": [list(r.ci95) for r in self.results],
            "after_each": [[{"attack": a, "accuracy": v} for a, v in r.after_each] for r in self.results],
        }

    def summary(self) -> str:
        """One line per eps, e.g. ``linf eps=0.1: 0.512 [0.468, 0.556] (quick)``."""
        return "\n".join(
            f"{self.norm} eps={r.eps:g}: {r.accuracy:.3f} [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}] ({self.preset}: "
            + ", ".join(f"{a} {v:.3f}" for a, v in r.after_each) + ")" for r in self.results)
