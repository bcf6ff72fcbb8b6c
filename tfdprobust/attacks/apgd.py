"""APGD (Croce & Hein 2020), graph-safe, with the CE, DLR and targeted-DLR losses."""

from typing import List, Optional

import tensorflow as tf

from tfdprobust.attacks.config import ModelFn, _register, project

def apgd_checkpoints(steps: int) -> List[int]:
    """Iteration indices after which APGD may halve its step (Croce & Hein 2020).

    The first check comes after ``max(int(0.22 * steps), 1)`` iterations, and each
    following interval shrinks by ``max(int(0.03 * steps), 1)`` down to a minimum of
    ``max(int(0.06 * steps), 1)``, as in the reference implementation.

    Example:
        >>> apgd_checkpoints(100)[:4]
        [21, 40, 56, 69]
    """
    k = max(int(0.22 * steps), 1)
    k_min = max(int(0.06 * steps), 1)
    decr = max(int(0.03 * steps), 1)
    checks, i = [], k - 1
    while i < steps:
        checks.append(i)
        k = max(k - decr, k_min)
        i += k
    return checks


LOSSES = ("ce", "dlr", "dlr_targeted")


def dlr_loss(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 6), per example.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)`` with ``z_pi`` the sorted logits. It is
    invariant to shifting and rescaling the logits, so a model that multiplies its
    logits by 1e4 (saturating the softmax, which zeroes the cross-entropy gradient)
    does not fool it.
    """
    y = tf.cast(y, tf.int32)
    srt = tf.sort(logits, axis=1, direction="DESCENDING")
    z_y = tf.gather(logits, y, batch_dims=1)
    other = tf.reduce_max(tf.where(tf.one_hot(y, tf.shape(logits)[1]) > 0, -float("inf"), logits), 1)
    return -(z_y - other) / (srt[:, 0] - srt[:, 2] + 1e-12)


def targeted_dlr_loss(logits: tf.Tensor, y: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Targeted DLR of APGD-T: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``."""
    srt = tf.sort(logits, axis=1, direction="DESCENDING")
    z_y = tf.gather(logits, tf.cast(y, tf.int32), batch_dims=1)
    z_t = tf.gather(logits, tf.cast(target, tf.int32), batch_dims=1)
    return -(z_y - z_t) / (srt[:, 0] - 0.5 * (srt[:, 2] + srt[:, 3]) + 1e-12)


def apgd(model_fn: ModelFn, x, y, eps: float, steps: int, norm: str = "linf",
         random_start: bool = True, initial_step: Optional[float] = None,
         rho: float = 0.75, alpha: float = 0.75, loss: str = "ce", target=None) -> tf.Tensor:
    """APGD (Croce & Hein 2020), batched, graph-safe; APGD-CE, APGD-DLR or APGD-T.

    Each iteration takes a (sign or normalized) gradient step ``z = P(x_k + eta g)``
    and a momentum step ``x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}))``
    (plain step at k = 0). At each checkpoint of :func:`apgd_checkpoints`, an example's
    step ``eta`` (initially ``2 eps``) is halved and it restarts from its best point if
    (1) the loss increased in at most ``rho`` of the iterations since the last
    checkpoint, or (2) the step was not halved at the last checkpoint and the best
    loss has not improved since. As in the reference implementation
    (fra31/auto-attack, ``autopgd_base.py``): condition (1) is ``<=``; "halved at the
    last checkpoint" starts out true, so condition (2) cannot fire at the first
    checkpoint; and the momentum term after a restart from the best point is
    ``x_best - x_k``, the point the restart left from (``x_{k-1}`` stays the anchor,
    it is never reset to the restart point). Success is untargeted (the prediction is
    not ``y``) for every loss, as in APGD-T.

    Returns, per example, the first misclassified iterate found, else the
    highest-loss iterate.

    Args:
        model_fn: images in [0, 1] -> logits.
        x: images, float32 in [0, 1].
        y: integer labels.
        eps: radius of the ``norm`` ball.
        steps: iterations (a Python int: the checkpoint schedule is static).
        norm: ``"linf"`` or ``"l2"``.
        random_start: start uniformly in the ball (the reference does).
        initial_step: initial step; default ``2 * eps``.
        rho: oscillation threshold of condition (1).
        alpha: momentum weight.
        loss: ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR) or ``"dlr_targeted"`` (APGD-T).
        target: integer target classes, shape ``[batch]`` (``dlr_targeted`` only).

    Example:
        >>> x_adv = apgd(model_fn, x, y, eps=0.3, steps=100)  # doctest: +SKIP
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if (loss == "dlr_targeted") != (target is not None):
        raise ValueError("target is required for loss='dlr_targeted' and only for it")
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    is_check, window_len = checkpoint_schedule(steps)
    step0 = 2.0 * eps if initial_step is None else initial_step
    return apgd_dynamic(model_fn, x, y, eps, tf.constant(steps), tf.constant(norm == "linf"),
                        tf.constant(is_check), tf.constant(window_len), loss, target, random_start,
                        step0, rho, alpha)


def checkpoint_schedule(steps: int):
    """(is_check, window_len) per iteration: bool and float lists of length ``steps``."""
    checks = apgd_checkpoints(steps)
    windows = [checks[0] + 1] + [b - a for a, b in zip(checks, checks[1:])]
    is_check = [i in checks for i in range(steps)]
    window_len = [float(windows[checks.index(i)]) if i in checks else 1.0 for i in range(steps)]
    return is_check, window_len


def apgd_dynamic(model_fn: ModelFn, x, y, eps, steps, is_linf, is_check, window_len, loss: str = "ce",
                 target=None, random_start: bool = True, step0=None, rho: float = 0.75,
                 alpha: float = 0.75) -> tf.Tensor:
    """:func:`apgd` with eps, steps, the norm and the checkpoint schedule as tensors.

    One ``tf.function`` trace then serves every eps, step count and norm (tracing the
    loop costs seconds; the evaluation ensemble runs many combinations). Both norms'
    steps and projections are computed and one is selected, which costs a few cheap
    element-wise ops.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    eps = tf.cast(eps, tf.float32)
    if target is not None:
        target = tf.cast(target, tf.int32)
    batch = tf.shape(x)[0]
    rank = len(x.shape)
    axes = list(range(1, rank))
    bshape = tf.concat([[batch], tf.ones([rank - 1], tf.int32)], 0)

    def expand(v):
        return tf.reshape(v, bshape)

    def proj(v):
        return tf.where(is_linf, project(v, x, eps, "linf"), project(v, x, eps, "l2"))

    def objective(logits):
        if loss == "ce":
            return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        if loss == "dlr":
            return dlr_loss(logits, y)
        return targeted_dlr_loss(logits, y, target)

    def loss_and_grad(x_cur):
        with tf.GradientTape() as tape:
            tape.watch(x_cur)
            logits = model_fn(x_cur)
            value = objective(logits)
        grad = tape.gradient(value, x_cur)
        if grad is None:  # a model that cuts the graph: nothing to follow
            grad = tf.zeros_like(x_cur)
        correct = tf.equal(tf.argmax(logits, 1, output_type=tf.int32), y)
        return value, grad, correct

    def step_dir(g):
        gn = tf.sqrt(tf.reduce_sum(tf.square(g), axes, keepdims=True))
        return tf.where(is_linf, tf.sign(g), g / (gn + 1e-12))

    if random_start:
        uni = tf.random.uniform(tf.shape(x), -1.0, 1.0)
        gauss = tf.random.normal(tf.shape(x))
        gauss = gauss / (tf.sqrt(tf.reduce_sum(tf.square(gauss), axes, keepdims=True)) + 1e-12)
        x_adv = proj(x + eps * tf.where(is_linf, uni, gauss))
    else:
        x_adv = x
    value, grad, correct = loss_and_grad(x_adv)
    step0 = 2.0 * eps if step0 is None else tf.cast(step0, tf.float32)
    state = dict(
        i=tf.constant(0),
        x_adv=x_adv,
        x_old=x_adv,
        grad=grad,
        loss=value,
        step=tf.fill([batch], step0),
        x_best=x_adv,
        grad_best=grad,
        loss_best=value,
        x_found=x_adv,
        fooled=tf.logical_not(correct),
        n_inc=tf.zeros([batch]),
        loss_best_last=value,
        reduced_last=tf.ones([batch], tf.bool),
    )

    def body(s):
        i = s["i"]
        a = tf.where(i > 0, alpha, 1.0)
        step = expand(s["step"])
        z = proj(s["x_adv"] + step * step_dir(s["grad"]))
        x_new = proj(s["x_adv"] + a * (z - s["x_adv"]) + (1.0 - a) * (s["x_adv"] - s["x_old"]))
        value, grad, correct = loss_and_grad(x_new)
        newly = tf.logical_and(tf.logical_not(correct), tf.logical_not(s["fooled"]))
        x_found = tf.where(expand(newly), x_new, s["x_found"])
        fooled = tf.logical_or(s["fooled"], tf.logical_not(correct))
        n_inc = s["n_inc"] + tf.cast(value > s["loss"], tf.float32)
        better = value > s["loss_best"]
        x_best = tf.where(expand(better), x_new, s["x_best"])
        grad_best = tf.where(expand(better), grad, s["grad_best"])
        loss_best = tf.where(better, value, s["loss_best"])

        def at_check():
            osc = n_inc <= rho * window_len[i]
            stalled = tf.logical_and(tf.logical_not(s["reduced_last"]),
                                     s["loss_best_last"] >= loss_best)
            halve = tf.logical_or(osc, stalled)
            return (
                tf.where(halve, s["step"] / 2.0, s["step"]),
                tf.where(expand(halve), x_best, x_new),
                tf.where(expand(halve), grad_best, grad),
                tf.zeros_like(n_inc),
                loss_best,
                halve,
            )

        def no_check():
            return s["step"], x_new, grad, n_inc, s["loss_best_last"], s["reduced_last"]

        step_n, x_next, grad_next, n_inc, lb_last, reduced = tf.cond(is_check[i], at_check, no_check)
        # The momentum anchor is always the iterate this step started from (x_k), also
        # when x_next is a restart from x_best: the reference's grad2 = x_adv - x_adv_old.
        return [dict(
            i=i + 1, x_adv=x_next, x_old=s["x_adv"], grad=grad_next, loss=value, step=step_n,
            x_best=x_best, grad_best=grad_best, loss_best=loss_best, x_found=x_found,
            fooled=fooled, n_inc=n_inc, loss_best_last=lb_last, reduced_last=reduced,
        )]

    (final,) = tf.while_loop(lambda s: s["i"] < steps, body, [state])
    return tf.where(expand(final["fooled"]), final["x_found"], final["x_best"])


@_register("apgd_linf", "linf", randomized=True)
def _apgd_linf(model_fn, x, y, cfg):
    return apgd(model_fn, x, y, cfg.eps, cfg.steps, "linf", cfg.random_start, cfg.step_size)


@_register("apgd_l2", "l2", randomized=True)
def _apgd_l2(model_fn, x, y, cfg):
    return apgd(model_fn, x, y, cfg.eps, cfg.steps, "l2", cfg.random_start, cfg.step_size)

