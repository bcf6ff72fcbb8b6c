"""Empirical privacy audit of trained models by membership inference.

    python -m tfdprobust.audit --model saved_models/A --name non-dp \\
        --model saved_models/B --name dp --out reports/audit

For each model: rebuild the exact training members from the ``data_config`` that
``runs.run`` records in the export's ``metadata.json``, draw as many non-members
(training-pool examples the run's ``max_train`` left out when there are enough, else
the test split; seeded subsample), run the two
attacks of :mod:`~tfdprobust.audit.mia` on the model's logits, and turn each attack into a
lower bound on epsilon at delta that holds with 95% confidence
(:mod:`~tfdprobust.audit.bounds`). Writes ``audit.json``, ``roc.png`` and ``report.md``
(:mod:`~tfdprobust.audit.report`) and prints a table.

The bound comes from a weak auditor (black box, natural examples, average case), so it is
typically far below the true privacy loss; a small value does not certify privacy. It is
useful in one direction: an implied epsilon above the claimed one refutes the claim (the
CLI then exits with status 1).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> logits, labels = rng.normal(size=(400, 10)), rng.integers(0, 10, 400)
    >>> member = np.arange(400) < 200
    >>> r = audit_logits(logits, labels, member, delta=1e-5)
    >>> abs(r["attacks"]["loss_threshold"]["auc"] - 0.5) < 0.1
    True
"""

import dataclasses
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from tfdprobust import flagcheck, roles
from tfdprobust.audit import bounds, mia, report
from tfdprobust.errors import UsageError, require

DEFAULT_DELTA = 1e-5
NONMEMBER_SOURCES = ("auto", "unused_train", "test")


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """How to audit.

    Attributes:
        delta: delta of the implied epsilon (None: the model's own delta, else 1e-5).
        alpha: the bounds of one model hold jointly with probability >= 1 - alpha.
        attacker: ``logreg`` or ``gboost`` (the trained attack's classifier).
        folds: cross-validation folds of the trained attacker.
        max_examples: cap on members (and as many non-members); 0 = all members.
        nonmembers: where non-members come from (see :func:`membership_data`).
        seed: seed of the non-member subsample, the halves and the attacker.
        batch_size: inference batch size.
    """

    delta: Optional[float] = None
    alpha: float = 0.05
    attacker: str = "logreg"
    folds: int = 5
    max_examples: int = 0
    nonmembers: str = "auto"
    seed: int = 0
    batch_size: int = 500

    def __post_init__(self):
        require(self.delta is None or 0 < self.delta < 1, f"--delta must be in (0, 1), got {self.delta}")
        require(0 < self.alpha < 1, f"--alpha must be in (0, 1) (e.g. 0.05 for 95% confidence), got {self.alpha}")
        require(self.attacker in mia.ATTACKERS,
                f"--attacker={self.attacker!r} is unknown; choose one of {', '.join(mia.ATTACKERS)}")
        require(self.folds >= 2, f"--folds must be >= 2, got {self.folds}")
        require(self.max_examples == 0 or self.max_examples >= 20,
                f"--max_examples must be 0 (all members) or >= 20, got {self.max_examples}")
        require(self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}")
        require(self.seed >= 0, f"--seed must be >= 0, got {self.seed}")
        require(self.nonmembers in NONMEMBER_SOURCES,
                f"--nonmembers={self.nonmembers!r} is unknown; choose one of {', '.join(NONMEMBER_SOURCES)}")


# ----------------------------------------------------------------------------- members
def read_metadata(model_path: str) -> Dict:
    """The export's metadata.json (``{}`` if absent), with a one-line error if it is broken."""
    from tfdprobust import evaluate

    require(os.path.exists(model_path),
            f"--model {model_path}: no such file or directory; pass an export folder of "
            "tfdprobust.experiments.mnist (saved_models/<run>)")
    return evaluate.read_metadata(model_path)


def resolve_data_config(meta: Dict, model_path: str, data_dir: Optional[str] = None,
                        dataset: Optional[str] = None):
    """The :class:`~tfdprobust.data.DataConfig` that reproduces the model's training members.

    Returns ``(config, how)`` where ``how`` says whether it was recorded or reconstructed.
    ``data_dir``/``dataset`` override the recorded fields (e.g. the data moved).
    """
    from tfdprobust.data import DataConfig

    recorded = meta.get("data_config")
    if recorded is None:
        require(data_dir is not None or dataset is not None,
                f"--model {model_path} has no recorded data_config in metadata.json (trained before "
                "membership recording, or not by tfdprobust); pass --data_dir (and --dataset) to say "
                "which data it was trained on")
        # Older exports: rebuild the config from what they did record and the training
        # CLI's defaults. Membership may then be inexact, which only weakens the attack.
        norm = (meta.get("model") or {}).get("norm")
        fields = {"dataset": dataset or meta.get("dataset") or "mnist", "data_dir": data_dir,
                  "max_train": int(meta.get("num_train_examples") or 0), "seed": int(meta.get("seed") or 0),
                  "public_examples": 128 if norm == "public_bn" else 0}
        how = "reconstructed from --data_dir/--dataset, the metadata and the training CLI's defaults"
    else:
        known = {f.name for f in dataclasses.fields(DataConfig)}
        fields = {k: v for k, v in recorded.items() if k in known}
        how = "recorded data_config"
        if data_dir is not None:
            fields["data_dir"] = data_dir
            how += ", --data_dir override"
        elif fields.get("data_dir") is not None:
            require(os.path.isdir(fields["data_dir"]),
                    f"--model {model_path} was trained on data_dir={fields['data_dir']}, which does not "
                    "exist here; pass --data_dir with the same files")
        if dataset is not None:
            fields["dataset"] = dataset
            how += ", --dataset override"
    return DataConfig(**fields), how


def _unused_training_examples(experiment, log: Callable[[str], None]):
    """The training-pool examples the run's ``max_train`` left out, or None.

    The loader keeps each pool example by its own keyed hash (:mod:`tfdprobust.roles`,
    the data set's secret key in the user-level store, the one the run used), so members
    and the rest are exchangeable: the setting in which a membership test's error rates
    bound epsilon; a separate test split is only as good as its i.i.d. assumption.
    """
    unused = experiment.unused_train
    if unused is None or len(unused) == 0:
        return None
    return unused


def membership_data(data_cfg, max_examples: int = 0, seed: int = 0, nonmembers: str = "auto",
                    log: Callable[[str], None] = print, expected_members: Optional[int] = None):
    """Members (the training split) and equally many non-members.

    Args:
        data_cfg: the run's :class:`~tfdprobust.data.DataConfig`.
        max_examples: cap on members (0 = all).
        seed: seed of the subsamples.
        nonmembers: ``unused_train`` (training-pool examples the run's ``max_train`` left
            out: same pool, membership decided by a random shuffle), ``test`` (the held-out
            test split; assumes it is i.i.d. with the training split), or ``auto``
            (``unused_train`` when there are enough, else ``test``).
        expected_members: the training-set size the model's metadata records; a rebuilt
            split of another size means the data changed, and the audit stops.

    Returns ``(x, y, is_member, members_source, nonmembers_source)``.
    """
    from tfdprobust import data

    require(nonmembers in NONMEMBER_SOURCES,
            f"--nonmembers={nonmembers!r} is unknown; choose one of {', '.join(NONMEMBER_SOURCES)}")
    experiment = data.load_experiment_data(data_cfg, log=log)
    train = experiment.train
    require(expected_members is None or expected_members == len(train),
            f"the rebuilt training split has {len(train)} examples but the model was trained on {expected_members}; "
            "the data differs from the run's (check --data_dir/--dataset)")
    pool, kind = None, ""
    if nonmembers != "test":
        pool = _unused_training_examples(experiment, log)
        if pool is not None and nonmembers == "auto" and len(pool) < min(len(train), max_examples or len(train)):
            pool = None  # too few to balance all members; the test split has more
        require(pool is not None or nonmembers == "auto",
                "--nonmembers=unused_train needs a model trained with --max_train below the training-pool size; "
                "use --nonmembers=test")
        kind = "unused training examples"
    if pool is None:
        pool, kind = experiment.test, "held-out test examples (assumed i.i.d. with the training split)"
    n = min(len(train), len(pool))
    if max_examples:
        n = min(n, max_examples)
    require(n >= 20, f"only {n} members/non-members available; the audit needs >= 20 of each")
    # Each example is picked by its own hash (tfdprobust.roles; the key is public, derived
    # from --seed): adding one example to the pool moves no other in or out of the audit.
    # About n of each (binomial), so members and non-members stay balanced.
    key = f"tfdprobust audit {seed}".encode()
    mi = (roles.below(train.x, train.y, key, "audit_members", n / len(train)) if n < len(train)
          else np.arange(len(train)))
    ni = (roles.below(pool.x, pool.y, key, "audit_others", n / len(pool)) if n < len(pool)
          else np.arange(len(pool)))
    x = np.concatenate([train.x[mi], pool.x[ni]])
    y = np.concatenate([train.y[mi], pool.y[ni]])
    is_member = np.arange(len(mi) + len(ni)) < len(mi)
    members = f"{len(mi)} of the {len(train)} training examples: {train.source}"
    nonmember_text = f"{len(ni)} of {len(pool)} {kind}, per-example hashed subsample: {pool.source}"
    return x, y, is_member, members, nonmember_text


# ----------------------------------------------------------------------------- attacks
def max_certifiable(n_pos: int, n_neg: int, delta: float, alpha: float) -> float:
    """The bound a perfect attacker would get with these evaluation sizes (the ceiling)."""
    tpr_lo, _ = bounds.clopper_pearson(n_pos, n_pos, alpha / 2)
    _, fpr_hi = bounds.clopper_pearson(0, n_neg, alpha / 2)
    return float(bounds.epsilon_from_rates(tpr_lo, fpr_hi, delta))


def audit_logits(logits: np.ndarray, labels: np.ndarray, is_member: np.ndarray, delta: float,
                 cfg: AuditConfig = AuditConfig()) -> Dict:
    """Both attacks on precomputed logits; the bounds hold jointly at 1 - ``cfg.alpha``."""
    is_member = np.asarray(is_member, dtype=bool)
    # Bonferroni over the attacks: the largest of the per-attack bounds is then valid too.
    per_attack_alpha = cfg.alpha / len(mia.attack_names())
    attacks = mia.run_attacks(logits, labels, is_member, delta, per_attack_alpha, cfg.attacker, cfg.folds, cfg.seed)
    correct = np.argmax(logits, axis=1) == np.asarray(labels)
    b = attacks["loss_threshold"]["bound"]
    return {
        "attacks": attacks,
        "implied_epsilon": max(a["bound"]["epsilon_lower_bound"] for a in attacks.values()),
        "max_certifiable_epsilon": max_certifiable(b["n_pos"], b["n_neg"], delta, per_attack_alpha),
        "member_accuracy": float(correct[is_member].mean()),
        "nonmember_accuracy": float(correct[~is_member].mean()),
        "num_members": int(is_member.sum()),
        "num_nonmembers": int((~is_member).sum()),
        "delta": delta,
        "alpha": cfg.alpha,
    }


def _claim(meta: Dict) -> Tuple[Optional[float], Optional[float], str]:
    eps = meta.get("epsilon")
    if meta.get("dp") and eps is not None and math.isfinite(float(eps)):
        return float(eps), meta.get("delta"), meta.get("guarantee") or f"({eps}, {meta.get('delta')})-DP"
    return None, None, meta.get("guarantee") or "no differential privacy recorded"


def verdict(implied: float, claimed_eps: Optional[float], claimed_delta: Optional[float], delta: float,
            certifiable: float = math.inf) -> str:
    """One line: does the audit refute, fail to refute, or not apply to the model's claim?"""
    if claimed_eps is None:
        return f"no DP claim; the attacks show eps >= {implied:.3f} at delta={delta:g}"
    if claimed_delta is not None and delta < claimed_delta:
        return (f"not comparable: bound at delta={delta:g} is below the claimed delta={claimed_delta:g}; "
                "rerun with the model's delta")
    if implied > claimed_eps:
        return f"VIOLATION: implied eps >= {implied:.3f} exceeds the claimed eps = {claimed_eps:.3f}"
    line = f"consistent: implied eps >= {implied:.3f} <= claimed eps = {claimed_eps:.3f} (not a certificate)"
    if certifiable < claimed_eps:
        # Say so when the check could not have failed: even a perfect attacker could not
        # certify the claimed eps with this many evaluation examples.
        line += (f"; with these sample sizes no attack could certify more than {certifiable:.2f}, "
                 f"so this audit could not refute eps = {claimed_eps:.3f}")
    return line


def predict_logits(model_fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    import tensorflow as tf

    return np.concatenate([np.asarray(model_fn(tf.constant(x[i:i + batch_size])), dtype=np.float64)
                           for i in range(0, len(x), batch_size)])


# ----------------------------------------------------------------------------- driver
@dataclasses.dataclass(frozen=True)
class Target:
    """One model to audit, with its data resolved (checked before anything heavy runs)."""

    path: str
    name: str
    meta: Dict
    data_config: object
    data_how: str


def prepare(model_paths: Sequence[str], names: Optional[Sequence[str]], out_dir: Optional[str],
            data_dir: Optional[str] = None, dataset: Optional[str] = None) -> List[Target]:
    """Validates every input without TensorFlow; raises :class:`UsageError` on bad input."""
    require(len(model_paths) >= 1, "pass at least one --model (an export folder, e.g. saved_models/<run>)")
    names = list(names or [])
    require(not names or len(names) == len(model_paths),
            f"--name given {len(names)} times for {len(model_paths)} --model; give one per model or none")
    if out_dir is not None:
        require(report.is_ours(out_dir),
                f"--out {out_dir} exists and is not an earlier audit's output; choose a new folder or remove it")
        flagcheck.writable_dir(out_dir, "--out")
    require(data_dir is None or os.path.isdir(data_dir),
            f"--data_dir {data_dir}: no such directory; pass the folder with the raw training files the "
            "model was trained on")
    targets, seen = [], set()
    for i, path in enumerate(model_paths):
        meta = read_metadata(path)
        cfg, how = resolve_data_config(meta, path, data_dir, dataset)
        name = names[i] if names else os.path.basename(os.path.normpath(path))
        while name in seen:
            name += "'"
        seen.add(name)
        targets.append(Target(path, name, meta, cfg, how))
    return targets


def run_audit(model_paths: Sequence[str], names: Optional[Sequence[str]] = None, out_dir: Optional[str] = None,
              cfg: AuditConfig = AuditConfig(), data_dir: Optional[str] = None, dataset: Optional[str] = None,
              command: str = "", log: Callable[[str], None] = print) -> Dict:
    """Audits every model and writes the report to ``out_dir`` (if given).

    Returns the payload of ``audit.json``: ``{"command", "alpha", "caveat", "models": [...]}``.
    """
    from tfdprobust import evaluate

    targets = prepare(model_paths, names, out_dir, data_dir, dataset)
    results = []
    for t in targets:
        log(f"[{t.name}] loading {t.path}; members from the {t.data_how}")
        x, y, is_member, members, nonmembers = membership_data(
            t.data_config, cfg.max_examples, cfg.seed, cfg.nonmembers, log, t.meta.get("num_train_examples"))
        model = evaluate.load_model(t.path, t.name)
        evaluate.check_model_on_data(model, x, int(y.max()) + 1)
        logits = predict_logits(model.model_fn, x, cfg.batch_size)
        claimed_eps, claimed_delta, guarantee = _claim(t.meta)
        delta = cfg.delta if cfg.delta is not None else (claimed_delta or DEFAULT_DELTA)
        r = audit_logits(logits, y, is_member, delta, cfg)
        r.update({
            "name": t.name, "path": t.path, "claimed_epsilon": claimed_eps,
            "claimed_delta": claimed_delta, "guarantee": guarantee,
            "members_source": members, "nonmembers_source": nonmembers, "data_config_source": t.data_how,
            "data_config": dataclasses.asdict(t.data_config),
            "verdict": verdict(r["implied_epsilon"], claimed_eps, claimed_delta, delta,
                               r["max_certifiable_epsilon"]),
        })
        log(f"[{t.name}] {r['verdict']}")
        results.append(r)
    payload = {"command": command, "alpha": cfg.alpha, "config": dataclasses.asdict(cfg),
               "caveat": report.CAVEAT, "models": results}
    if out_dir is not None:
        files = report.write_outputs(payload, out_dir)
        log(f"wrote {', '.join(files)} to {out_dir}")
    return payload
