"""Black-box membership-inference attacks on a classifier's outputs.

Two attacks, both scoring "how much does this example look like a training member":

* ``loss_threshold``: the score is minus the cross-entropy loss of the true label
  (Yeom, Giacomelli, Fredrikson & Jha, "Privacy risk in machine learning: analyzing the
  connection to overfitting"), computed as a monotone transform that does not underflow
  (:func:`log_odds_others`). Nothing is fitted, so its ROC on all examples is honest.
* ``trained``: a scikit-learn classifier (logistic regression, or gradient boosting) on
  loss / margin / sorted-softmax features, in the spirit of the threshold and
  logistic-regression attacks of tensorflow-privacy's ``membership_inference_attack``
  (whose ``privacy_tests`` package the 0.9.0 wheel does not ship). Its scores are
  out-of-fold (stratified k-fold), so no example is scored by a model that saw its label.

:func:`run_attacks` returns, per attack, the ROC, AUC, attacker advantage, TPR at low
FPR and the split-sample epsilon lower bound of :mod:`tfdprobust.audit.bounds`.
"""

import math
from typing import Dict, List

import numpy as np

from tfdprobust.audit import bounds

ATTACKERS = ("logreg", "gboost")
LOW_FPRS = (0.001, 0.01, 0.1)
FEATURE_NAMES = ("neg_log_odds", "loss", "margin", "log_p1", "log_p2", "log_p3", "entropy")


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax in float64 (float32 rounds small losses to 0)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def log_odds_others(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log(sum_{j != y} exp(z_j - z_y)) = -log(p_y / (1 - p_y)), per example.

    The cross-entropy loss is softplus of this, so ranking by it is ranking by the loss,
    but it does not underflow: a memorized member's loss is often below 1e-16 and rounds to
    exactly 0 in float64, which would tie all confident members with confident
    non-members. (Carlini et al., "Membership inference attacks from first principles",
    use the same logit-scaled confidence for the same reason.)
    """
    z = np.asarray(logits, dtype=np.float64)
    idx = np.arange(len(labels))
    d = z - z[idx, labels][:, None]
    d[idx, labels] = -np.inf
    top = d.max(axis=1, keepdims=True)
    return top[:, 0] + np.log(np.exp(d - top).sum(axis=1))


def per_example_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy of the true label, per example: softplus of :func:`log_odds_others`."""
    return np.logaddexp(0.0, log_odds_others(logits, labels))


def features(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Attack features per example (columns: :data:`FEATURE_NAMES`).

    ``neg_log_odds`` (minus :func:`log_odds_others`) orders examples exactly like minus the
    loss; the loss also appears raw, because the two scales separate different regions
    (confident members vs misclassified non-members) for a linear attacker.
    """
    logp = log_softmax(logits)
    idx = np.arange(len(labels))
    log_odds = log_odds_others(logits, labels)
    loss = np.logaddexp(0.0, log_odds)
    z = np.asarray(logits, dtype=np.float64)
    others = z.copy()
    others[idx, labels] = -np.inf
    margin = z[idx, labels] - others.max(axis=1)
    top = -np.sort(-logp, axis=1)[:, :3]
    if top.shape[1] < 3:
        top = np.pad(top, ((0, 0), (0, 3 - top.shape[1])), constant_values=-50.0)
    entropy = -(np.exp(logp) * logp).sum(axis=1)
    # Clip log-probabilities: exp underflow gives -inf, which no attacker can use.
    return np.column_stack([-log_odds, loss, margin, np.maximum(top, -50.0), entropy])


def make_attacker(name: str, seed: int):
    """An unfitted scikit-learn attacker; ``decision_function``/``predict_proba`` give scores."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    if name == "gboost":
        # Small and regularized: the attacker sees at most a few thousand examples.
        return HistGradientBoostingClassifier(max_iter=100, max_depth=3, learning_rate=0.05,
                                              l2_regularization=1.0, random_state=seed)
    raise ValueError(f"unknown attacker {name!r}; choose one of {', '.join(ATTACKERS)}")


def _scores(model, x: np.ndarray) -> np.ndarray:
    return model.predict_proba(x)[:, 1]


def out_of_fold_scores(x: np.ndarray, is_member: np.ndarray, attacker: str, folds: int, seed: int) -> np.ndarray:
    """Each example scored by an attacker fitted on the other folds (stratified k-fold)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(make_attacker(attacker, seed), x, is_member.astype(int), cv=cv,
                             method="predict_proba")[:, 1]


def roc_summary(scores: np.ndarray, is_member: np.ndarray) -> Dict:
    """AUC (with a Hanley-McNeil standard error), advantage, TPR at low FPR and the ROC."""
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(is_member.astype(int), scores)
    auc = float(roc_auc_score(is_member.astype(int), scores))
    n1, n0 = int(is_member.sum()), int((~is_member).sum())
    # Hanley & McNeil, "The meaning and use of the area under a receiver operating
    # characteristic (ROC) curve": the standard error of an empirical AUC.
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    se = math.sqrt(max(auc * (1 - auc) + (n1 - 1) * (q1 - auc ** 2) + (n0 - 1) * (q2 - auc ** 2), 0.0) / (n1 * n0))
    tpr_at = {}
    for target in LOW_FPRS:
        ok = fpr <= target
        tpr_at[f"{target:g}"] = float(tpr[ok].max()) if ok.any() else 0.0
    return {
        "auc": auc,
        "auc_stderr": se,
        "auc_ci95": [max(0.0, auc - 1.96 * se), min(1.0, auc + 1.96 * se)],
        # Yeom et al.'s membership advantage, maximized over thresholds.
        "advantage": float(np.max(tpr - fpr)),
        "tpr_at_fpr": tpr_at,
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
    }


def run_attacks(logits: np.ndarray, labels: np.ndarray, is_member: np.ndarray, delta: float,
                alpha: float = 0.05, attacker: str = "logreg", folds: int = 5, seed: int = 0) -> Dict[str, Dict]:
    """Both attacks on one model's logits; returns ``{attack name: summary}``.

    Args:
        logits: model outputs, shape [n, classes].
        labels: true labels.
        is_member: True for training members, False for held-out non-members.
        delta: delta of the epsilon lower bound.
        alpha: the bound of *each* attack holds with probability >= 1 - alpha; a caller
            reporting the maximum over attacks should pass alpha / (number of attacks).
        attacker: ``logreg`` or ``gboost`` for the trained attack.
        folds: cross-validation folds of the trained attacker.
        seed: seed of the split, the folds and the attacker.
    """
    is_member = np.asarray(is_member, dtype=bool)
    labels = np.asarray(labels)
    x = features(logits, labels)
    sel, ev = bounds.halves(is_member, seed)
    out: Dict[str, Dict] = {}

    score = x[:, 0]  # minus the loss, on a scale that keeps tiny losses apart
    loss_result = roc_summary(score, is_member)
    loss_result["bound"] = bounds.split_bound(score[sel], is_member[sel], score[ev], is_member[ev],
                                              delta, alpha).to_dict()
    loss_result["mean_loss_members"] = float(x[is_member, 1].mean())
    loss_result["mean_loss_nonmembers"] = float(x[~is_member, 1].mean())
    out["loss_threshold"] = loss_result

    trained = roc_summary(out_of_fold_scores(x, is_member, attacker, folds, seed), is_member)
    # For the bound the attacker may only learn from the selection half: the threshold is
    # chosen on its out-of-fold scores there, then the attacker refitted on the whole
    # selection half scores the untouched evaluation half once.
    sel_scores = out_of_fold_scores(x[sel], is_member[sel], attacker, folds, seed)
    model = make_attacker(attacker, seed).fit(x[sel], is_member[sel].astype(int))
    trained["bound"] = bounds.split_bound(sel_scores, is_member[sel], _scores(model, x[ev]), is_member[ev],
                                          delta, alpha).to_dict()
    trained["attacker"] = attacker
    trained["features"] = list(FEATURE_NAMES)
    out["trained_attacker"] = trained
    return out


def attack_names() -> List[str]:
    return ["loss_threshold", "trained_attacker"]
