"""Robust accuracy from the standard attack ensemble: the one evaluation path.

:func:`robust_accuracy` is what the training CLI's summary, the tuner's selection and
``python -m tfdprobust.evaluate`` call. It runs the attacks of a preset in AutoAttack's
order (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), each only on the points no earlier
attack has broken, and reports per eps:

* the robust accuracy: the per-example minimum over every attack that ran (a point
  counts as robust only if every attack failed on it), also across eps: a point broken
  at a smaller eps is broken at every larger one, since the smaller ball lies inside
  the larger one;
* the accuracy after each attack, in order;
* a 95% Clopper-Pearson confidence interval (the test set is a sample).

Presets (registry :data:`PRESETS`):

==========  ================================================================
``quick``   APGD-CE (100 steps) + APGD-T (3 target classes, 100 steps); for
            selection inside training and tuning
``standard``  AutoAttack's standard version: APGD-CE, APGD-T (9 targets),
            FAB-T (9 targets, 100 steps), Square (5,000 queries)
==========  ================================================================

APGD and FAB-T run through this project's graph-safe implementations
(:func:`attacks.apgd`, :mod:`attacks.fab`), compiled once per model; Square is ART's ``SquareAttack`` (Andriushchenko et al.,
"Square Attack: a query-efficient black-box adversarial attack via random search")
on a ``TensorFlowV2Classifier``.

Example:
    >>> r = robust_accuracy(model_fn, x, y, preset="quick", norm="linf", eps=(0.1, 0.3))  # doctest: +SKIP
    >>> r.accuracy(0.1), r.ci95(0.1)  # doctest: +SKIP
"""

import dataclasses
import math
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfdprobust import attacks
from tfdprobust.attacks.apgd import apgd_dynamic, checkpoint_schedule
from tfdprobust.attacks.fab import fab_targeted_dynamic
from tfdprobust.errors import require
from tfdprobust.registry import Registry
# The result types live in their own module; re-exported here, where callers look for them.
from tfdprobust.robust_result import EpsResult, RobustAccuracy, clopper_pearson  # noqa: F401

NORMS = ("linf", "l2")


@dataclasses.dataclass(frozen=True)
class EnsembleAttack:
    """One member of a preset.

    Attributes:
        name: key of :data:`ENSEMBLE_ATTACKS` (apgd-ce, apgd-dlr, apgd-t, fab-t, square).
        steps: iterations (APGD, FAB).
        restarts: random restarts (APGD-CE/DLR: per point; APGD-T: per target class;
            FAB-T ignores it: one run from the clean point per target class, as in
            AutoAttack's standard version).
        targets: target classes of APGD-T and FAB-T (the next-most-likely classes of
            the clean point, as in the reference).
        queries: query budget of Square.
    """

    name: str
    steps: int = 100
    restarts: int = 1
    targets: int = 9
    queries: int = 5000

    def __post_init__(self):
        ENSEMBLE_ATTACKS.get(self.name)
        for f in ("steps", "restarts", "targets", "queries"):
            v = getattr(self, f)
            require(isinstance(v, int) and v >= 1, f"{self.name}: {f} must be an integer >= 1, got {v!r}")

    @property
    def label(self) -> str:
        if self.name in ("apgd-t", "fab-t"):
            return f"{self.name}({self.targets})"
        return self.name


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named, ordered tuple of :class:`EnsembleAttack`."""

    name: str
    attacks: Tuple[EnsembleAttack, ...]
    description: str

    def scaled(self, steps: Optional[int] = None, restarts: Optional[int] = None) -> "Preset":
        """A copy with every APGD member's steps / restarts replaced (convergence check)."""
        members = tuple(dataclasses.replace(
            a, steps=steps or a.steps, restarts=restarts or a.restarts) if a.name.startswith("apgd") else a
            for a in self.attacks)
        return Preset(f"{self.name}(steps={steps},restarts={restarts})", members, self.description)


PRESETS: Registry = Registry("preset")
ENSEMBLE_ATTACKS: Registry = Registry("ensemble attack")

def get_preset(preset) -> Preset:
    """A :class:`Preset` from a name or a preset."""
    return preset if isinstance(preset, Preset) else PRESETS.get(preset)


# ----------------------------------------------------------------------------- attacks
def _cache(model_fn, key, build):
    """Per-model cache of compiled attack functions (kept on the function object so it
    dies with the model; a global dict would keep every model alive)."""
    store = getattr(model_fn, "_tfdp_ensemble_cache", None)
    if store is None:
        store = {}
        try:
            model_fn._tfdp_ensemble_cache = store
        except (AttributeError, TypeError):
            pass
    if key not in store:
        store[key] = build()
    return store[key]


def _apgd_correct_fn(model_fn, loss: str, input_shape):
    def build():
        # One trace per (model, loss, image shape): eps, norm, steps, the checkpoint
        # schedule, targets and the batch size are runtime inputs (tracing APGD's
        # while_loop costs seconds, and the ensemble runs many combinations).
        spec = [tf.TensorSpec([None, *input_shape], tf.float32), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.bool),
                tf.TensorSpec([], tf.int32), tf.TensorSpec([None], tf.bool), tf.TensorSpec([None], tf.float32)]

        @tf.function(input_signature=spec)
        def run(xb, yb, tb, eps, is_linf, steps, is_check, window_len):
            adv = apgd_dynamic(model_fn, xb, yb, eps, steps, is_linf, is_check, window_len, loss,
                               tb if loss == "dlr_targeted" else None)
            # Guard the ball against float drift, as attacks.generate does.
            adv = tf.where(is_linf, attacks.project(adv, xb, eps, "linf"), attacks.project(adv, xb, eps, "l2"))
            return tf.equal(tf.argmax(model_fn(adv), 1, output_type=tf.int32), yb)

        return run

    run = _cache(model_fn, ("apgd", loss, tuple(input_shape)), build)

    def call(xb, yb, tb, eps, norm, steps):
        is_check, window_len = checkpoint_schedule(steps)
        return run(xb, yb, tb, eps, tf.constant(norm == "linf"), tf.constant(steps, tf.int32),
                   tf.constant(is_check), tf.constant(window_len, tf.float32))

    return call


def _batched(fn, x, y, t, eps, norm, steps, batch_size):
    out = []
    for s in range(0, len(x), batch_size):
        out.append(fn(tf.constant(x[s:s + batch_size]), tf.constant(y[s:s + batch_size], tf.int32),
                      tf.constant(t[s:s + batch_size], tf.int32), tf.constant(eps, tf.float32), norm,
                      steps).numpy())
    return np.concatenate(out) if out else np.zeros([0], bool)


def _register_attack(name):
    return ENSEMBLE_ATTACKS.register(name)


@_register_attack("apgd-ce")
def _apgd_ce(model_fn, x, y, norm, eps, member, ctx):
    correct = np.ones(len(x), bool)
    fn = _apgd_correct_fn(model_fn, "ce", x.shape[1:])
    for _ in range(member.restarts):
        idx = np.flatnonzero(correct)
        if not len(idx):
            break
        correct[idx] = _batched(fn, x[idx], y[idx], y[idx], eps, norm, member.steps, ctx["batch_size"])
    return correct


@_register_attack("apgd-dlr")
def _apgd_dlr(model_fn, x, y, norm, eps, member, ctx):
    correct = np.ones(len(x), bool)
    fn = _apgd_correct_fn(model_fn, "dlr", x.shape[1:])
    for _ in range(member.restarts):
        idx = np.flatnonzero(correct)
        if not len(idx):
            break
        correct[idx] = _batched(fn, x[idx], y[idx], y[idx], eps, norm, member.steps, ctx["batch_size"])
    return correct


@_register_attack("apgd-t")
def _apgd_t(model_fn, x, y, norm, eps, member, ctx):
    # Targets: the 2nd, 3rd, ... most likely classes at the clean point (the reference's
    # output.sort()[1][:, -target_class] for target_class = 2, ..., n_target_classes + 1).
    order = np.argsort(-ctx["clean_logits"], axis=1)
    correct = np.ones(len(x), bool)
    fn = _apgd_correct_fn(model_fn, "dlr_targeted", x.shape[1:])
    for k in range(1, min(member.targets, order.shape[1] - 1) + 1):
        for _ in range(member.restarts):
            idx = np.flatnonzero(correct)
            if not len(idx):
                return correct
            correct[idx] = _batched(fn, x[idx], y[idx], order[ctx["index"][idx], k], eps, norm, member.steps,
                                   ctx["batch_size"])
    return correct


def _fab_fn(model_fn, input_shape):
    def build():
        spec = [tf.TensorSpec([None, *input_shape], tf.float32), tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.int32), tf.TensorSpec([], tf.bool)]

        @tf.function(input_signature=spec)
        def run(xb, yb, tb, steps, is_linf):
            return fab_targeted_dynamic(model_fn, xb, yb, tb, steps, is_linf)

        return run

    return _cache(model_fn, ("fab", tuple(input_shape)), build)


@_register_attack("fab-t")
def _fab_t(model_fn, x, y, norm, eps, member, ctx):
    # FAB-T (Croce & Hein, "Minimally distorted adversarial examples with a fast
    # adaptive boundary attack") as in AutoAttack's standard version: one run from the
    # clean point per target class (the next-most-likely classes), on the points no
    # earlier target broke. FAB minimizes the distance without looking at eps, so its
    # closest adversarial point per (example, target) is kept in ctx and reused at every
    # larger eps of the same call (the run is deterministic, so this changes no result).
    order = np.argsort(-ctx["clean_logits"], axis=1)
    fn = _fab_fn(model_fn, x.shape[1:])
    cache = ctx.setdefault("fab", {})
    n_total = len(ctx["clean_logits"])
    gidx = ctx["index"]
    correct = np.ones(len(x), bool)
    for k in range(1, min(member.targets, order.shape[1] - 1) + 1):
        key = (norm, member.steps, k)
        if key not in cache:
            cache[key] = (np.zeros(n_total, bool), np.zeros((n_total, *x.shape[1:]), np.float32),
                          np.full(n_total, np.inf, np.float32))
        done, advs, dists = cache[key]
        idx = np.flatnonzero(correct)
        if not len(idx):
            break
        todo = idx[~done[gidx[idx]]]
        bs = ctx["batch_size"]
        for s in range(0, len(todo), bs):
            sel = todo[s:s + bs]
            adv, dist = fn(tf.constant(x[sel]), tf.constant(y[sel], tf.int32),
                           tf.constant(order[gidx[sel], k], tf.int32), tf.constant(member.steps, tf.int32),
                           tf.constant(norm == "linf"))
            advs[gidx[sel]], dists[gidx[sel]], done[gidx[sel]] = adv.numpy(), dist.numpy(), True
        # A point counts as broken only if its adversarial point, projected onto the
        # ball (a no-op up to rounding), is still misclassified.
        near = idx[dists[gidx[idx]] <= eps * (1 + 1e-5)]
        if len(near):
            cand = attacks.project(tf.constant(advs[gidx[near]]), tf.constant(x[near]), eps, norm).numpy()
            correct[near] = _predict(model_fn, cand, ctx["batch_size"]) == y[near]
    return correct


def import_art():
    """Imports ART without letting it reconfigure the process's logging.

    ``import art`` calls ``logging.config.dictConfig``, which closes every existing
    logging handler (absl's among them, whose stream may be a redirected ``sys.stderr``,
    e.g. pytest's capture: closing it kills the test session) and installs a StreamHandler
    on a logger named ``tests``. A library we call must not do either, so the call is
    skipped for the duration of the import; ART's loggers then propagate to the root.
    """
    import logging.config
    import sys

    if "art" in sys.modules:
        return
    configure = logging.config.dictConfig
    logging.config.dictConfig = lambda config: None
    try:
        import art  # noqa: F401
    finally:
        logging.config.dictConfig = configure


@_register_attack("square")
def _square(model_fn, x, y, norm, eps, member, ctx):
    import_art()
    from art.attacks.evasion import SquareAttack

    clf = art_classifier(model_fn, x.shape[1:], ctx["num_classes"])
    # ART draws from NumPy's global generator; seed it so a report is reproducible.
    np.random.seed(ctx["seed"])
    att = SquareAttack(clf, norm=np.inf if norm == "linf" else 2, max_iter=member.queries, eps=float(eps),
                       p_init=0.8, nb_restarts=member.restarts, batch_size=ctx["batch_size"], verbose=False)
    adv = att.generate(x.astype(np.float32), y=np.asarray(y))
    # ART's l2 Square can divide by a zero window norm and return NaN pixels; a NaN
    # image is no adversarial example (its logits are garbage), so such points keep x.
    bad = ~np.isfinite(adv).reshape(len(adv), -1).all(1)
    adv[bad] = x[bad]
    adv = attacks.project(tf.constant(adv, tf.float32), tf.constant(x), eps, norm).numpy()
    return _predict(model_fn, adv, ctx["batch_size"]) == y


def art_classifier(model_fn, input_shape, num_classes: int):
    """``model_fn`` (images in [0, 1] -> logits) as ART's ``TensorFlowV2Classifier``.

    The loss object is cross-entropy on logits, which ART's gradient-based attacks use.
    """
    import_art()
    from art.estimators.classification import TensorFlowV2Classifier

    def model(z, training=False):  # ART passes ``training``; our model_fn is inference-only
        return model_fn(z)

    return TensorFlowV2Classifier(
        model=model, nb_classes=int(num_classes), input_shape=tuple(int(d) for d in input_shape),
        loss_object=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), clip_values=(0.0, 1.0))


def _predict(model_fn, x, batch_size):
    return np.concatenate([np.argmax(model_fn(tf.constant(x[i:i + batch_size], tf.float32)).numpy(), 1)
                           for i in range(0, len(x), batch_size)]) if len(x) else np.zeros([0], int)


def _logits(model_fn, x, batch_size):
    return np.concatenate([model_fn(tf.constant(x[i:i + batch_size], tf.float32)).numpy()
                           for i in range(0, len(x), batch_size)])


# Presets are registered after the attacks they name.
PRESETS.register("quick")(Preset("quick", (
    EnsembleAttack("apgd-ce", steps=100), EnsembleAttack("apgd-t", steps=100, targets=3)),
    "APGD-CE + APGD-T (3 targets), 100 steps, 1 restart: for model selection"))
PRESETS.register("standard")(Preset("standard", (
    EnsembleAttack("apgd-ce", steps=100), EnsembleAttack("apgd-t", steps=100, targets=9),
    EnsembleAttack("fab-t", steps=100, targets=9), EnsembleAttack("square", queries=5000)),
    "AutoAttack's standard version: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5,000 queries)"))



def robust_accuracy(model_fn: Callable, x, y, preset="quick", norm: str = "linf",
                    eps: Sequence[float] = (0.1,), batch_size: int = 500, seed: int = 0,
                    verbose: int = 0, progress=None) -> RobustAccuracy:
    """Per-example robust accuracy under a preset of the standard attack ensemble.

    The single function behind every robust-accuracy number this project prints.

    Args:
        model_fn: images in [0, 1] (NHWC float32) -> logits; called only, no state change.
            Wrap a Keras model as ``lambda z: model(z, training=False)``.
        x: images in [0, 1], float32, NHWC.
        y: integer labels.
        preset: ``"quick"`` (APGD-CE + APGD-T(3); training summary and tuner selection)
            or ``"standard"`` (APGD-CE, APGD-T(9), FAB-T(9), Square 5,000; evaluation and the
            tuner's exported winner), or a :class:`Preset`.
        norm: ``"linf"`` or ``"l2"``.
        eps: radii; any order, 0 allowed (gives the clean accuracy).
        batch_size: examples per attack batch.
        seed: seeds TensorFlow's and NumPy's generators (random starts, Square).
        verbose: 1 prints one line per eps.
        progress: anything with ``add(n)``; gets ``add(1)`` after each attack of each
            positive eps (``len(preset attacks) * #eps > 0`` calls), e.g. a section of
            :class:`tfdprobust.evaluate.progress.Progress`.

    Returns:
        A :class:`RobustAccuracy`: ``accuracy(eps)``, ``ci95(eps)``, per-example
        ``at(eps).correct``, ``at(eps).after_each`` and ``to_dict()``.

    Example:
        >>> r = robust_accuracy(lambda z: model(z, training=False), x[:1000], y[:1000],
        ...                     preset="quick", eps=(0.1,))  # doctest: +SKIP
        >>> print(r.summary())  # doctest: +SKIP
    """
    import time

    p = get_preset(preset)
    require(norm in NORMS, f"norm must be one of {NORMS}, got {norm!r}")
    eps = sorted({float(e) for e in np.atleast_1d(np.asarray(eps, np.float64))})
    require(len(eps) >= 1, "eps: give at least one radius")
    for e in eps:
        require(math.isfinite(e) and e >= 0, f"eps must be finite and >= 0, got {e}")
        if norm == "linf":
            require(e <= 1, f"l_inf eps must be in [0, 1] for images in [0, 1], got {e}")
    x = np.asarray(x, np.float32)
    y = np.asarray(y).astype(np.int32)
    require(len(x) == len(y) and len(x) >= 1, f"x and y must be non-empty and of equal length, got {len(x)}, {len(y)}")
    start = time.time()
    tf.random.set_seed(seed)
    np.random.seed(seed)
    logits = _logits(model_fn, x, batch_size)
    clean = np.argmax(logits, 1) == y
    ctx = dict(batch_size=batch_size, seed=seed, num_classes=logits.shape[1], clean_logits=logits)
    robust = clean.copy()
    results = []
    for i, e in enumerate(eps):
        after = [("clean", float(clean.mean()))]
        if i > 0:
            after.append((f"eps {eps[i - 1]:g}", float(robust.mean())))
        if e > 0:
            for member in p.attacks:
                idx = np.flatnonzero(robust)
                if len(idx):
                    ctx["index"] = idx
                    robust[idx] = ENSEMBLE_ATTACKS.get(member.name)(
                        model_fn, x[idx], y[idx], norm, e, member, ctx)
                after.append((member.label, float(robust.mean())))
                if progress is not None:
                    progress.add(1)
        results.append(EpsResult(e, robust.copy(), tuple(after)))
        if verbose:
            print(f"  {p.name} {norm} eps={e:g}: robust accuracy {robust.mean():.4f} "
                  f"({', '.join(f'{a} {v:.3f}' for a, v in after)})", flush=True)
    return RobustAccuracy(p.name, norm, float(clean.mean()), tuple(results), time.time() - start)
