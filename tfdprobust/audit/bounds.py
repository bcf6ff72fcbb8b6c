"""Statistically sound lower bounds on epsilon from a membership-inference test.

A membership test turns a score into a decision "member" (score >= threshold). Its
true-positive rate on training members and false-positive rate on non-members obey,
for any (eps, delta)-DP training algorithm and any test (Kairouz, Oh & Viswanath,
"The composition theorem for differential privacy"; used for auditing by Jagielski,
Ullman & Oprea, "Auditing differentially private machine learning: how private is
private SGD?" and Nasr et al., "Adversary instantiation: lower bounds for
differentially private machine learning"):

    TPR <= e^eps * FPR + delta     and     1 - FPR <= e^eps * (1 - TPR) + delta.

Rearranged, every test implies eps >= log((TPR - delta) / FPR) and
eps >= log((1 - FPR - delta) / (1 - TPR)). Plugging in *empirical* rates would overstate
eps (sampling noise, and the best of many thresholds is an optimistic pick), so here:

* TPR and FPR are replaced by one-sided Clopper-Pearson bounds (TPR from below, FPR from
  above). Both inequalities only get weaker when TPR falls or FPR rises, so the same two
  bounds serve both. Each is taken at level alpha / 2, so both hold together with
  probability >= 1 - alpha (union bound), and the resulting eps bound holds with
  probability >= 1 - alpha.
* The threshold is chosen on one half of the examples and the bound is evaluated on the
  other half (:func:`split_bound`), so the reported threshold is a single, pre-registered
  test on the evaluation half and no correction for the choice is needed.

Example:
    >>> round(epsilon_lower_bound(tp=100, n_pos=100, fp=0, n_neg=100, delta=0.0, alpha=0.1), 3)
    3.493
"""

import dataclasses
import math
from typing import Dict, Tuple

import numpy as np


def clopper_pearson(k, n, alpha: float) -> Tuple[np.ndarray, np.ndarray]:
    """One-sided exact binomial bounds: ``(lower, upper)``, each at level ``1 - alpha``.

    ``lower`` is the Clopper-Pearson lower bound (P[p < lower] <= alpha), ``upper`` the upper
    bound; vectorized over ``k``.

    Args:
        k: successes (array-like of ints in [0, n]).
        n: trials (> 0).
        alpha: one-sided error probability of *each* bound, in (0, 1).
    """
    k = np.asarray(k, dtype=np.float64)
    from scipy import stats  # imported here: scipy.stats takes seconds, and the CLI validates flags first

    # beta.ppf(q, 0, .) is undefined; the exact bounds at the ends are 0 and 1.
    lower = np.where(k > 0, stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)
    upper = np.where(k < n, stats.beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1)), 1.0)
    return lower, upper


def epsilon_from_rates(tpr, fpr, delta: float) -> np.ndarray:
    """The largest eps the two DP inequalities force for given rates (>= 0; may be inf).

    No sampling correction: pass confidence bounds (TPR from below, FPR from above) to get
    a sound bound. Vectorized.
    """
    tpr = np.asarray(tpr, dtype=np.float64)
    fpr = np.asarray(fpr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        # TPR <= e^eps FPR + delta; with FPR = 0 and TPR > delta no finite eps works.
        a = np.where(tpr - delta > 0, np.log(np.maximum(tpr - delta, 1e-300)) - np.log(fpr), 0.0)
        # 1 - FPR <= e^eps (1 - TPR) + delta.
        b = np.where(1 - fpr - delta > 0,
                     np.log(np.maximum(1 - fpr - delta, 1e-300)) - np.log(1 - tpr), 0.0)
    return np.maximum(np.maximum(a, b), 0.0)


def epsilon_lower_bound(tp: int, n_pos: int, fp: int, n_neg: int, delta: float, alpha: float = 0.05) -> float:
    """Eps lower bound, valid with probability >= ``1 - alpha``, from one fixed test's counts.

    Args:
        tp: members flagged as members, out of ``n_pos`` members.
        fp: non-members flagged as members, out of ``n_neg`` non-members.
        delta: the delta at which eps is bounded.
        alpha: total error probability (split equally between the TPR and FPR bounds).

    The test (its threshold) must not have been chosen on these same examples.
    """
    tpr_lo, _ = clopper_pearson(tp, n_pos, alpha / 2)
    _, fpr_hi = clopper_pearson(fp, n_neg, alpha / 2)
    return float(epsilon_from_rates(tpr_lo, fpr_hi, delta))


def threshold_counts(scores: np.ndarray, is_member: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every distinct score t: (t, #members with score >= t, #non-members with score >= t)."""
    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member, dtype=bool)
    thresholds = np.unique(scores)  # ascending
    # Counts of scores >= t via sorted search; every distinct value is a candidate threshold.
    pos = np.sort(scores[is_member])
    neg = np.sort(scores[~is_member])
    tp = len(pos) - np.searchsorted(pos, thresholds, side="left")
    fp = len(neg) - np.searchsorted(neg, thresholds, side="left")
    return thresholds, tp, fp


def best_threshold(scores: np.ndarray, is_member: np.ndarray, delta: float, alpha: float) -> Tuple[float, float]:
    """The threshold whose Clopper-Pearson eps bound is largest on these examples.

    Returns ``(threshold, bound)``. The bound is optimistic (selected on the same data);
    use it only to pick the test, then evaluate on fresh examples.
    """
    is_member = np.asarray(is_member, dtype=bool)
    thresholds, tp, fp = threshold_counts(scores, is_member)
    tpr_lo, _ = clopper_pearson(tp, int(is_member.sum()), alpha / 2)
    _, fpr_hi = clopper_pearson(fp, int((~is_member).sum()), alpha / 2)
    eps = epsilon_from_rates(tpr_lo, fpr_hi, delta)
    i = int(np.argmax(eps))
    return float(thresholds[i]), float(eps[i])


@dataclasses.dataclass(frozen=True)
class SplitBound:
    """A threshold picked on the selection half and its eps bound on the evaluation half."""

    epsilon_lower_bound: float
    threshold: float
    selection_bound: float
    tp: int
    n_pos: int
    fp: int
    n_neg: int
    tpr: float
    fpr: float
    tpr_lower: float
    fpr_upper: float
    delta: float
    alpha: float

    def to_dict(self) -> Dict[str, float]:
        return dataclasses.asdict(self)


def split_bound(select_scores, select_member, eval_scores, eval_member, delta: float,
                alpha: float = 0.05) -> SplitBound:
    """Chooses the threshold on the selection examples, bounds eps on the evaluation examples.

    The evaluation examples must be independent of whatever produced the scores' scale and
    the threshold (for a trained attacker: fit it on the selection half only).
    """
    eval_member = np.asarray(eval_member, dtype=bool)
    eval_scores = np.asarray(eval_scores, dtype=np.float64)
    threshold, selection_bound = best_threshold(select_scores, select_member, delta, alpha)
    flagged = eval_scores >= threshold
    tp, fp = int(flagged[eval_member].sum()), int(flagged[~eval_member].sum())
    n_pos, n_neg = int(eval_member.sum()), int((~eval_member).sum())
    tpr_lo, _ = clopper_pearson(tp, n_pos, alpha / 2)
    _, fpr_hi = clopper_pearson(fp, n_neg, alpha / 2)
    return SplitBound(
        epsilon_lower_bound=float(epsilon_from_rates(tpr_lo, fpr_hi, delta)), threshold=threshold,
        selection_bound=selection_bound, tp=tp, n_pos=n_pos, fp=fp, n_neg=n_neg,
        tpr=tp / n_pos, fpr=fp / n_neg, tpr_lower=float(tpr_lo), fpr_upper=float(fpr_hi),
        delta=delta, alpha=alpha)


def halves(is_member: np.ndarray, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A seeded split into two halves with equal member/non-member proportions (indices)."""
    is_member = np.asarray(is_member, dtype=bool)
    rng = np.random.default_rng(seed)
    first, second = [], []
    for group in (np.flatnonzero(is_member), np.flatnonzero(~is_member)):
        group = rng.permutation(group)
        first.append(group[: len(group) // 2])
        second.append(group[len(group) // 2:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def perfect_attacker_bound(n: int, delta: float, alpha: float) -> float:
    """Closed form: the bound from a test that is right on all ``n`` members and ``n`` non-members.

    TPR_lower = (alpha/2)^(1/n) and FPR_upper = 1 - (alpha/2)^(1/n), so the bound is
    log(((alpha/2)^(1/n) - delta) / (1 - (alpha/2)^(1/n))): the most a sample of this
    size can certify, however leaky the model.
    """
    p = (alpha / 2) ** (1.0 / n)
    return max(0.0, math.log((p - delta) / (1 - p)))
