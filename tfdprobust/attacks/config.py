"""The attack registry, its validated config and :func:`generate`, the one entry point.

Every attack maps images in [0, 1] (NHWC float32) and integer labels to adversarial
images that stay in [0, 1] and inside the eps-ball around the input. Attack functions
register themselves with :data:`ATTACKS` (see :mod:`.cleverhans_adapters` and
:mod:`.apgd`); :func:`generate` adds restarts and the final projection.
"""

import dataclasses
import math
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from tfdprobust.errors import UsageError, require
from tfdprobust.registry import Registry

ModelFn = Callable[[tf.Tensor], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """What :func:`generate` needs to know about a registered attack.

    Attributes:
        fn: ``fn(model_fn, x, y, config) -> x_adv`` for one run (no restarts).
        norm: ``"linf"`` or ``"l2"``; the eps-ball the attack respects.
        randomized: whether the attack starts from a random point (restarts make sense).
        graph_safe: whether it runs inside ``tf.function``.
    """

    fn: Callable
    norm: str
    randomized: bool
    graph_safe: bool = True


ATTACKS: Registry = Registry("attack")


def _register(name: str, norm: str, randomized: bool, graph_safe: bool = True):
    def decorator(fn):
        ATTACKS.register(name)(AttackSpec(fn, norm, randomized, graph_safe))
        return fn

    return decorator


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """A validated attack configuration.

    Attributes:
        name: registry key: fgsm, bim, pgd_linf, pgd_l2, mim, cw_l2, apgd_linf, apgd_l2.
        eps: radius of the threat model (l_inf or l2 per attack); l_inf needs [0, 1].
        step_size: per-iteration step; None picks the default in the module docstring.
        steps: iterations (for cw_l2: Adam iterations per binary-search step).
        random_start: start from a uniform point in the ball (pgd_*, apgd_*; the
            other attacks are deterministic and ignore it).
        restarts: independent random starts; per example the first successful one
            (else the highest-loss one) is kept.
        cw_confidence: CW kappa (logit margin required).
        cw_binary_search_steps: CW binary-search steps over its trade-off constant.
        cw_initial_const: CW initial trade-off constant.
        mim_decay: MIM momentum decay factor.

    Example:
        >>> AttackConfig(name="pgd_l2", eps=2.0, steps=20).norm
        'l2'
    """

    name: str = "pgd_linf"
    eps: float = 0.3
    step_size: Optional[float] = None
    steps: int = 40
    random_start: bool = True
    restarts: int = 1
    cw_confidence: float = 0.0
    cw_binary_search_steps: int = 5
    cw_initial_const: float = 10.0
    mim_decay: float = 1.0

    def __post_init__(self):
        spec = ATTACKS.get(self.name)  # UsageError listing the choices
        n = self.name
        require(
            isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0,
            f"eps must be a finite number >= 0 for {n}, got {self.eps!r}",
        )
        if spec.norm == "linf":
            require(self.eps <= 1, f"eps must be in [0, 1] for {n}, got {self.eps}")
        require(
            isinstance(self.steps, int) and self.steps >= 1,
            f"steps must be an integer >= 1 for {n}, got {self.steps!r}",
        )
        require(
            isinstance(self.restarts, int) and self.restarts >= 1,
            f"restarts must be an integer >= 1 for {n}, got {self.restarts!r}",
        )
        require(
            self.restarts == 1 or (spec.randomized and self.random_start),
            f"restarts must be 1 for {n} without random_start (a deterministic attack "
            f"repeats itself), got {self.restarts}",
        )
        if self.step_size is not None:
            require(
                isinstance(self.step_size, (int, float))
                and math.isfinite(self.step_size)
                and self.step_size > 0,
                f"step_size must be > 0 for {n}, got {self.step_size!r}",
            )
            if n in ("bim", "pgd_linf", "pgd_l2", "mim"):
                require(
                    self.step_size <= self.eps or self.eps == 0,
                    f"step_size must be <= eps for {n}, got step_size={self.step_size} "
                    f"> eps={self.eps}",
                )
        require(self.cw_confidence >= 0, f"cw_confidence must be >= 0, got {self.cw_confidence}")
        require(
            isinstance(self.cw_binary_search_steps, int) and self.cw_binary_search_steps >= 1,
            f"cw_binary_search_steps must be an integer >= 1, got {self.cw_binary_search_steps!r}",
        )
        require(self.cw_initial_const > 0, f"cw_initial_const must be > 0, got {self.cw_initial_const}")
        require(self.mim_decay >= 0, f"mim_decay must be >= 0, got {self.mim_decay}")

    @property
    def norm(self) -> str:
        """``"linf"`` or ``"l2"``: the ball this attack respects."""
        return ATTACKS.get(self.name).norm

    @property
    def iterative_step(self) -> float:
        """The step size actually used by bim / pgd_* / mim (see module docstring)."""
        if self.step_size is not None:
            return float(self.step_size)
        return min(self.eps, 2.5 * self.eps / self.steps)

    def replace(self, **changes) -> "AttackConfig":
        """A validated copy with some fields changed, e.g. ``cfg.replace(eps=0.1)``."""
        return dataclasses.replace(self, **changes)


def _np_norm(norm: str):
    return np.inf if norm == "linf" else 2


def _per_example_loss(model_fn: ModelFn, x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=model_fn(x))


def project(x_adv: tf.Tensor, x: tf.Tensor, eps: float, norm: str) -> tf.Tensor:
    """Projects ``x_adv`` onto the ``norm`` eps-ball around ``x`` intersected with [0, 1].

    For l2, the ball projection is followed by a clip to [0, 1]; clipping a point of
    the ball towards ``x``'s box can only shrink the perturbation, so the result is
    feasible (not always the exact Euclidean projection onto the intersection).
    """
    delta = x_adv - x
    if norm == "linf":
        delta = tf.clip_by_value(delta, -eps, eps)
    else:
        axes = list(range(1, len(x.shape)))
        nrm = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(delta), axes, keepdims=True), 1e-24))
        delta = delta * tf.minimum(1.0, eps / nrm)
    return tf.clip_by_value(x + delta, 0.0, 1.0)


def connected(model_fn: ModelFn) -> ModelFn:
    """``model_fn`` whose input gradient is zeros, never None, when the model cuts the
    graph (e.g. ``tf.stop_gradient``). CleverHans crashes on a None gradient, and a
    zero gradient is exactly what the gradient-masking checks must see. The evaluation
    wraps each loaded model once with it.

    Example:
        >>> fn = connected(lambda z: tf.stop_gradient(z)[:, :, 0, 0])
        >>> z = tf.ones([1, 3, 1, 1])
        >>> with tf.GradientTape() as t:
        ...     _ = t.watch(z)
        ...     out = tf.reduce_sum(fn(z))
        >>> t.gradient(out, z).numpy().sum()
        0.0
    """

    def fn(z):
        logits = model_fn(z)
        axes = list(range(1, len(z.shape)))
        return logits + 0.0 * tf.reduce_sum(z, axes)[:, None]

    return fn


def generate(model_fn: ModelFn, x, y, config: AttackConfig) -> tf.Tensor:
    """Adversarial examples for ``x`` under ``config``.

    Args:
        model_fn: maps images in [0, 1] (NHWC float32) to logits. Called only; no
            model state is updated (pass ``training=False`` inside it).
        x: images in [0, 1], float32, NHWC.
        y: integer class labels, shape ``[batch]``.
        config: an :class:`AttackConfig`.

    Returns:
        ``x_adv`` in [0, 1] and inside the ``config.eps`` ball of ``config.norm``
        around ``x``. ``eps == 0`` returns ``x`` exactly.

    Raises:
        UsageError: an eager-only attack (cw_l2) called inside ``tf.function``.

    Example:
        >>> x_adv = generate(model_fn, x, y, AttackConfig("fgsm", eps=0.1))  # doctest: +SKIP
    """
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    if config.eps == 0:
        return tf.identity(x)
    spec = ATTACKS.get(config.name)
    if not spec.graph_safe and not tf.executing_eagerly():
        raise UsageError(
            f"attack {config.name} runs only eagerly; call it outside tf.function "
            f"or use pgd_l2 / apgd_l2"
        )
    best = spec.fn(model_fn, x, y, config)
    if config.restarts > 1:
        best_loss = _per_example_loss(model_fn, best, y)
        best_wrong = tf.not_equal(tf.argmax(model_fn(best), 1, output_type=tf.int32), y)
        for _ in range(config.restarts - 1):
            cand = spec.fn(model_fn, x, y, config)
            logits = model_fn(cand)
            loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            wrong = tf.not_equal(tf.argmax(logits, 1, output_type=tf.int32), y)
            take = tf.logical_or(
                tf.logical_and(wrong, tf.logical_not(best_wrong)),
                tf.logical_and(tf.equal(wrong, best_wrong), loss > best_loss),
            )
            mask = tf.reshape(take, [-1] + [1] * (len(x.shape) - 1))
            best = tf.where(mask, cand, best)
            best_loss = tf.where(take, loss, best_loss)
            best_wrong = tf.logical_or(best_wrong, wrong)
    # Guard the contract against float drift in the libraries' projections.
    return project(best, x, config.eps, config.norm)
