"""FAB-T: the targeted Fast Adaptive Boundary attack, l_inf and l2, graph-safe.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary
attack" (ICML 2020); the targeted version is the third attack of AutoAttack's standard
ensemble (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"). FAB looks for the *smallest*
perturbation that changes the decision: at the current iterate it linearizes the
boundary between the true class ``y`` and a target class ``t``
(``z_t(x) - z_y(x) = 0``), projects both the iterate and the original point onto that
hyperplane intersected with the [0, 1] box, and moves to a convex combination of the
two projections, biased towards the original point. Once an iterate is adversarial it
is recorded (if closer than the best so far) and pulled back towards the original
point, so the search continues from just inside the boundary.

Parameters follow the paper and the reference implementation (fra31/auto-attack):
``alpha_max = 0.1`` (largest weight of the original point's projection), ``eta =
1.05`` (overshoot past the linearized boundary) and ``beta = 0.9`` (pull-back after
success); 100 iterations, the target classes are the next-most-likely classes at the
clean point, and the single run starts at the clean point (random starts only for
restarts, as in AutoAttack's standard version, which runs FAB-T with one restart).

The projection onto a hyperplane within the box (:func:`project_to_hyperplane`) is
solved exactly here: both for l_inf and l2 the change of ``w . d`` as a function of
the step parameter is piecewise linear, with one breakpoint per coordinate (where that
coordinate hits the box), so sorting the breakpoints and a cumulative sum give the
smallest feasible step.
"""

from typing import Optional, Tuple

import numpy as np
import tensorflow as tf

from tfdprobust.attacks.config import ModelFn, _register, project

ALPHA_MAX = 0.1
ETA = 1.05
BETA = 0.9


def project_to_hyperplane(t, w, r, is_linf) -> tf.Tensor:
    """Smallest ``d`` (in l_inf or l2) with ``w . d = r`` and ``t + d`` in [0, 1].

    Rows are independent problems. Write ``s = sign(r)`` so the constraint asks for
    ``s w . d = |r|``; coordinate ``i`` can then contribute at most
    ``|w_i| room_i``, where ``room_i`` is how far ``t_i`` may move in the direction of
    ``s sign(w_i)`` inside the box. For l_inf the optimum is
    ``d_i = s sign(w_i) min(tau, room_i)`` and for l2 ``d_i = s sign(w_i)
    min(tau |w_i|, room_i)`` (the KKT point of the box-constrained least-norm
    problem), with the smallest ``tau >= 0`` that reaches ``|r|``. The reached value
    ``g(tau) = sum_{b_i <= tau} |w_i| room_i + tau sum_{b_i > tau} u_i |w_i|`` is
    piecewise linear and non-decreasing in ``tau`` with breakpoints ``b_i =
    room_i / u_i`` (``u_i = 1`` for l_inf, ``|w_i|`` for l2), so it is inverted
    exactly on the segment where it crosses ``|r|``. If even the whole box cannot
    reach ``|r|`` (infeasible), every coordinate moves to its box limit, which is the
    closest the box gets to the hyperplane in the direction of ``w``.

    Args:
        t: points, ``[batch, dim]`` (flattened), in [0, 1].
        w: hyperplane normals, ``[batch, dim]``.
        r: required change of ``w . d``, ``[batch]``.
        is_linf: scalar bool tensor (True: l_inf, False: l2).

    Returns:
        ``d``, ``[batch, dim]``, same dtype as ``t``.
    """
    dtype = t.dtype
    t = tf.cast(t, tf.float64)
    w = tf.cast(w, tf.float64)
    r = tf.cast(r, tf.float64)
    s = tf.where(r < 0, -tf.ones_like(r), tf.ones_like(r))[:, None]
    ws = w * s  # the constraint becomes ws . d = |r|
    aw = tf.abs(ws)
    up = ws > 0
    room = tf.where(up, 1.0 - t, t)  # how far each coordinate may move in its useful direction
    room = tf.maximum(room, 0.0)
    room = tf.where(aw > 0, room, tf.zeros_like(room))  # a zero weight is useless: do not move it
    u = tf.where(is_linf, tf.ones_like(aw), aw)
    slope = u * aw  # d g / d tau of an unsaturated coordinate
    value = aw * room  # its contribution once saturated
    big = tf.constant(np.finfo(np.float64).max, tf.float64)
    brk = tf.where(u > 0, room / tf.where(u > 0, u, 1.0), big)
    order = tf.argsort(brk, axis=1)
    b_sorted = tf.gather(brk, order, batch_dims=1)
    v_sorted = tf.gather(value, order, batch_dims=1)
    sl_sorted = tf.gather(slope, order, batch_dims=1)
    v_incl = tf.cumsum(v_sorted, axis=1)  # saturated value up to and including k
    sl_after = tf.cumsum(sl_sorted, axis=1, exclusive=True, reverse=True)  # slope of coordinates after k
    g_at = v_incl + tf.math.multiply_no_nan(b_sorted, sl_after)  # g(b_k)
    target = tf.abs(r)[:, None]
    k = tf.reduce_sum(tf.cast(g_at < target, tf.int32), axis=1)  # first breakpoint reaching |r|
    dim = tf.shape(w)[1]
    feasible = k < dim
    kc = tf.minimum(k, dim - 1)
    v_before = tf.gather(tf.cumsum(v_sorted, axis=1, exclusive=True), kc[:, None], batch_dims=1)[:, 0]
    sl_from = tf.gather(tf.cumsum(sl_sorted, axis=1, reverse=True), kc[:, None], batch_dims=1)[:, 0]
    tau = (tf.abs(r) - v_before) / tf.where(sl_from > 0, sl_from, 1.0)
    tau = tf.where(feasible, tf.maximum(tau, 0.0), big)[:, None]
    mag = tf.minimum(tf.minimum(tau, big / 2) * u, room)
    d = tf.sign(ws) * mag  # ws . d = sum |ws_i| mag_i = g(tau) = |r|
    return tf.cast(d, dtype)


def _norm(v, is_linf):
    return tf.where(is_linf, tf.reduce_max(tf.abs(v), 1), tf.sqrt(tf.reduce_sum(tf.square(v), 1)))


def fab_targeted_dynamic(model_fn: ModelFn, x, y, target, steps, is_linf, random_start_eps=None,
                         alpha_max: float = ALPHA_MAX, eta: float = ETA,
                         beta: float = BETA) -> Tuple[tf.Tensor, tf.Tensor]:
    """One FAB-T run towards ``target``, with ``steps`` and the norm as tensors.

    Args:
        model_fn: images in [0, 1] -> logits; only called.
        x: images in [0, 1], NHWC float32.
        y: true labels (the points should be correctly classified).
        target: target classes, ``[batch]``.
        steps: iterations (scalar int tensor or int).
        is_linf: scalar bool (True: l_inf, False: l2).
        random_start_eps: None starts at ``x`` (AutoAttack's single FAB-T run); a radius
            starts at a random point at half that radius, as the reference's restarts.
        alpha_max, eta, beta: see the module docstring.

    Returns:
        ``(x_adv, dist)``: per example the closest misclassified point found (``x`` where
        none was found) and its distance to ``x`` in the attack's norm (``inf`` where
        none was found).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    target = tf.cast(target, tf.int32)
    is_linf = tf.convert_to_tensor(is_linf, tf.bool)
    shape = tf.shape(x)
    batch = shape[0]
    x0 = tf.reshape(x, [batch, -1])

    def diff_and_grad(xf):
        with tf.GradientTape() as tape:
            tape.watch(xf)
            logits = model_fn(tf.reshape(xf, shape))
            f = tf.gather(logits, target, batch_dims=1) - tf.gather(logits, y, batch_dims=1)
        g = tape.gradient(f, xf)
        if g is None:  # a model that cuts the graph: no direction to follow
            g = tf.zeros_like(xf)
        return f, g

    x1 = x0
    if random_start_eps is not None:
        rs = tf.cast(random_start_eps, tf.float32)
        uni = tf.random.uniform(tf.shape(x0), -1.0, 1.0)
        gauss = tf.random.normal(tf.shape(x0))
        direction = tf.where(is_linf, uni / (tf.reduce_max(tf.abs(uni), 1, keepdims=True) + 1e-12),
                             gauss / (tf.norm(gauss, axis=1, keepdims=True) + 1e-12))
        x1 = tf.clip_by_value(x0 + 0.5 * rs * direction, 0.0, 1.0)

    inf = tf.constant(np.inf, tf.float32)
    state = (tf.constant(0), x1, x0, tf.fill([batch], inf))

    def body(i, x1, best, best_dist):
        f, g = diff_and_grad(x1)
        # Linearized boundary g . z = g . x1 - f; the step from x1 needs g . d = -f, the
        # step from x0 needs g . d = g . (x1 - x0) - f.
        r1 = -f
        r0 = tf.reduce_sum(g * (x1 - x0), 1) - f
        d = project_to_hyperplane(tf.concat([x1, x0], 0), tf.concat([g, g], 0), tf.concat([r1, r0], 0),
                                  is_linf)
        d1, d2 = d[:batch], d[batch:]
        a1 = tf.maximum(_norm(d1, is_linf), 1e-8)
        a2 = tf.maximum(_norm(d2, is_linf), 1e-8)
        alpha = tf.clip_by_value(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
        x_new = tf.clip_by_value((x1 + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
        pred = tf.argmax(model_fn(tf.reshape(x_new, shape)), 1, output_type=tf.int32)
        adv = tf.not_equal(pred, y)
        dist = _norm(x_new - x0, is_linf)
        closer = tf.logical_and(adv, dist < best_dist)
        best = tf.where(closer[:, None], x_new, best)
        best_dist = tf.where(closer, dist, best_dist)
        # After a success, continue from a point between x0 and the adversarial one.
        x_next = tf.where(adv[:, None], x0 + beta * (x_new - x0), x_new)
        return i + 1, x_next, best, best_dist

    _, _, best, best_dist = tf.while_loop(lambda i, *_: i < steps, body, state)
    return tf.reshape(best, shape), best_dist


def next_likely_classes(logits, count: int) -> np.ndarray:
    """The ``count`` classes after the top one, most likely first (AutoAttack's targets:
    the 2nd, 3rd, ... largest clean logits). Shape ``[batch, count]``."""
    order = np.argsort(-np.asarray(logits), axis=1, kind="stable")
    return order[:, 1:count + 1]


def fab_t(model_fn: ModelFn, x, y, eps: float, steps: int = 100, norm: str = "linf", targets: int = 9,
          target_classes: Optional[tf.Tensor] = None) -> tf.Tensor:
    """FAB-T over ``targets`` target classes; adversarial points within the eps-ball.

    Each target class runs one FAB-T (from the clean point); per example the closest
    misclassified point over all targets is kept. Where it lies within ``eps`` it is
    returned; elsewhere the result is that point projected onto the eps-ball (or ``x``
    if no target produced a misclassified point), so the output always stays inside
    the ball and [0, 1], the contract of every attack here.

    Args:
        model_fn: images in [0, 1] -> logits.
        x: images in [0, 1], NHWC float32.
        y: integer labels.
        eps: radius of the ``norm`` ball.
        steps: FAB iterations per target.
        norm: ``"linf"`` or ``"l2"``.
        targets: number of target classes (the next-most-likely ones at ``x``).
        target_classes: explicit targets ``[batch, k]`` instead (overrides ``targets``).

    Example:
        >>> x_adv = fab_t(model_fn, x, y, eps=0.1, steps=100, norm="linf")  # doctest: +SKIP
    """
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(y, tf.int32)
    logits = model_fn(x)
    if target_classes is None:
        k = min(int(targets), int(logits.shape[1]) - 1)
        # Graph-safe version of next_likely_classes: top-(k+1) minus the top one.
        target_classes = tf.math.top_k(logits, k + 1).indices[:, 1:]
    target_classes = tf.cast(target_classes, tf.int32)
    best = x
    best_dist = tf.fill([tf.shape(x)[0]], tf.constant(np.inf, tf.float32))
    for j in range(int(target_classes.shape[1])):
        adv, dist = fab_targeted_dynamic(model_fn, x, y, target_classes[:, j], steps, norm == "linf")
        closer = dist < best_dist
        best = tf.where(tf.reshape(closer, [-1] + [1] * (len(x.shape) - 1)), adv, best)
        best_dist = tf.minimum(dist, best_dist)
    return project(best, x, eps, norm)


@_register("fab_t_linf", "linf", randomized=False)
def _fab_t_linf(model_fn, x, y, cfg):
    return fab_t(model_fn, x, y, cfg.eps, cfg.steps, "linf")


@_register("fab_t_l2", "l2", randomized=False)
def _fab_t_l2(model_fn, x, y, cfg):
    return fab_t(model_fn, x, y, cfg.eps, cfg.steps, "l2")
