"""FAB-T (Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive
boundary attack") against independent references: scipy's LP / QP solvers for its
box-constrained hyperplane projection, the closed-form boundary distance of a linear
model, and the predictions of a trained CNN."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linprog, minimize

from test_attacks import model_fn_of, trained_mnist_model
from tfdprobust import attacks, ensemble
from tfdprobust.attacks.fab import fab_targeted_dynamic, next_likely_classes, project_to_hyperplane


def _problems(seed, n=12, rows=6):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, (rows, n))
    w = rng.normal(size=(rows, n))
    w[:, 0] = 0.0  # a zero weight must not move
    # |r| from "easy" (box inactive) to "hard" (most coordinates saturate), both signs.
    reach = np.sum(np.abs(w) * np.where(w > 0, 1 - t, t), 1)
    r = reach * np.linspace(0.05, 0.95, rows) * np.where(np.arange(rows) % 2, 1, -1)
    return t, w, r


def _scipy_linf(t, w, r):
    n = len(t)
    # variables (d, delta): minimize delta s.t. w.d = r, |d_i| <= delta, -t <= d <= 1 - t
    a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
    res = linprog(np.r_[np.zeros(n), 1.0], A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.r_[w, 0.0][None],
                  b_eq=[r], bounds=[(-ti, 1 - ti) for ti in t] + [(0, None)], method="highs")
    assert res.status == 0
    return res.x[-1]


def _scipy_l2(t, w, r):
    res = minimize(lambda d: d @ d, np.zeros_like(t), jac=lambda d: 2 * d, method="SLSQP",
                   bounds=[(-ti, 1 - ti) for ti in t],
                   constraints=[dict(type="eq", fun=lambda d: w @ d - r, jac=lambda d: w)],
                   options=dict(ftol=1e-14, maxiter=500))
    assert res.success
    return res.x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hyperplane_projection_matches_scipy(seed):
    t, w, r = _problems(seed)
    for is_linf in (True, False):
        d = project_to_hyperplane(tf.constant(t), tf.constant(w), tf.constant(r), tf.constant(is_linf)).numpy()
        np.testing.assert_allclose(np.sum(w * d, 1), r, atol=1e-9)  # on the hyperplane
        assert np.all(t + d >= -1e-12) and np.all(t + d <= 1 + 1e-12)  # in the box
        assert np.all(d[:, 0] == 0)
        for i in range(len(t)):
            if is_linf:
                assert np.max(np.abs(d[i])) == pytest.approx(_scipy_linf(t[i], w[i], r[i]), rel=1e-6)
            else:
                np.testing.assert_allclose(d[i], _scipy_l2(t[i], w[i], r[i]), atol=1e-5)


def test_hyperplane_projection_infeasible_moves_to_the_box_corner():
    t, w, _ = _problems(3, rows=2)
    reach = np.sum(np.abs(w) * np.where(w > 0, 1 - t, t), 1)
    r = np.array([2.0, -2.0]) * reach
    for is_linf in (True, False):
        d = project_to_hyperplane(tf.constant(t), tf.constant(w), tf.constant(r), tf.constant(is_linf)).numpy()
        corner = np.where(w * np.sign(r)[:, None] > 0, 1 - t, -t) * (w != 0)
        np.testing.assert_allclose(d, corner, atol=1e-12)


def _linear_model(seed=0, dim=64, classes=10):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(classes, dim)).astype(np.float32)
    b = rng.normal(size=classes).astype(np.float32)
    x = rng.uniform(0.4, 0.6, (40, 8, 8, 1)).astype(np.float32)

    def model_fn(z):
        return tf.matmul(tf.reshape(z, [tf.shape(z)[0], -1]), w, transpose_b=True) + b

    y = np.argmax(model_fn(tf.constant(x)).numpy(), 1).astype(np.int32)
    return model_fn, x, y, w, b


def _closed_form(model_fn, x, y, w, norm):
    """Per example and class c, the l_p distance from x to {z_c = z_y} (inf for c = y):
    |z_y - z_c| / ||w_y - w_c||_q with q = 1 for l_inf, 2 for l2 (Hoelder)."""
    logits = model_fn(tf.constant(x)).numpy()
    q = 1 if norm == "linf" else 2
    gap = logits[np.arange(len(x)), y][:, None] - logits
    dual = np.linalg.norm(w[y][:, None, :] - w[None, :, :], ord=q, axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.where(dual > 0, gap / dual, np.inf)
    dist[np.arange(len(x)), y] = np.inf
    return logits, dist


_fab = tf.function(fab_targeted_dynamic)  # eagerly, tf.while_loop runs a slow Python loop


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_model_reaches_the_closed_form_boundary_distance(norm):
    # The box is inactive here (x in [0.4, 0.6] and the boundary is closer than 0.35 in
    # every coordinate), so FAB must reach the closed-form distance to the target's
    # boundary, and it can never go below the distance to the nearest class boundary.
    model_fn, x, y, w, b = _linear_model()
    logits, dist_all = _closed_form(model_fn, x, y, w, norm)
    target = next_likely_classes(logits, 1)[:, 0]
    closed_t = dist_all[np.arange(len(x)), target]
    step = np.abs(w[target] - w[y])
    biggest = closed_t if norm == "linf" else closed_t * np.max(step, 1) / np.linalg.norm(step, axis=1)
    assert np.all(biggest < 0.35) and np.all(closed_t > 0)

    adv, dist = _fab(model_fn, x, y, target, 100, norm == "linf")
    adv, dist = adv.numpy(), dist.numpy()
    assert np.all(np.isfinite(dist))
    assert np.all(np.argmax(model_fn(tf.constant(adv)).numpy(), 1) != y)
    delta = adv.reshape(len(x), -1) - x.reshape(len(x), -1)
    measured = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    np.testing.assert_allclose(measured, dist, rtol=1e-5)
    assert np.all(dist >= dist_all.min(1) * (1 - 1e-4))  # nothing beats the true minimum
    np.testing.assert_array_less(dist, closed_t * 1.01)  # and FAB gets within 1% of it


@pytest.mark.parametrize("name", ["fab_t_linf", "fab_t_l2"])
def test_outputs_stay_in_the_ball_and_the_box(name):
    norm = name.split("_")[-1]
    model_fn, x, y, w, _ = _linear_model(1, classes=3)  # 2 target classes: a short trace
    eps = float(np.median(_closed_form(model_fn, x, y, w, norm)[1].min(1)))  # breaks about half
    cfg = attacks.AttackConfig(name, eps=eps, steps=30)
    raw = tf.function(attacks.ATTACKS.get(name).fn)(model_fn, tf.constant(x), tf.constant(y), cfg).numpy()
    delta = (raw - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= eps * (1 + 1e-5)
    assert raw.min() >= 0.0 and raw.max() <= 1.0
    wrong = np.argmax(model_fn(tf.constant(raw)).numpy(), 1) != y
    assert 0.2 < wrong.mean() < 0.8


@pytest.fixture(scope="module")
def cnn():
    model, x, y = trained_mnist_model()
    return model_fn_of(model), x[:60], y[:60]


def test_cnn_adversarial_points_are_misclassified(cnn):
    fn, x, y = cnn
    logits = fn(tf.constant(x)).numpy()
    keep = np.argmax(logits, 1) == y
    x, y = x[keep], y[keep]
    target = next_likely_classes(logits[keep], 1)[:, 0]
    adv, dist = _fab(fn, x, y, target, 30, True)
    adv, dist = adv.numpy(), dist.numpy()
    found = np.isfinite(dist)
    assert found.mean() > 0.9  # l_inf is unbounded here: the boundary is always reachable
    assert np.all(np.argmax(fn(tf.constant(adv[found])).numpy(), 1) != y[found])
    delta = np.abs(adv[found] - x[found]).reshape(found.sum(), -1).max(1)
    np.testing.assert_allclose(delta, dist[found], rtol=1e-5)
    assert np.median(dist[found]) < 0.3  # minimally distorted: far below the unit box


def test_ensemble_fab_member_breaks_every_point_fab_reaches_within_eps(cnn):
    fn, x, y = cnn
    preset = ensemble.Preset("fab", (ensemble.EnsembleAttack("fab-t", steps=20, targets=2),), "test")
    r = ensemble.robust_accuracy(fn, x, y, preset, "linf", (0.05, 0.1))
    assert [a for a, _ in r.at(0.1).after_each] == ["clean", "eps 0.05", "fab-t(2)"]
    assert not np.any(r.at(0.1).correct & ~r.at(0.05).correct)
    # FAB-T run directly, target by target: a point whose closest misclassified point
    # over the two targets lies within eps is broken, by the ensemble member and by the
    # registered attack (which may break more: it also keeps a projected far point).
    logits = fn(tf.constant(x)).numpy()
    targets = next_likely_classes(logits, 2)
    dist = np.min([_fab(fn, x, y, targets[:, j], 20, True)[1].numpy() for j in range(2)], axis=0)
    for e in (0.05, 0.1):
        # (a hair inside eps: batches of other sizes may round the distance differently)
        within = (dist <= e * (1 - 1e-3)) & (np.argmax(logits, 1) == y)
        assert within.mean() > 0.1
        assert not np.any(r.at(e).correct & within)
    adv = tf.function(attacks.fab_t)(fn, x, y, 0.1, steps=20, norm="linf", targets=2)
    direct = np.argmax(fn(adv).numpy(), 1) == y
    assert not np.any(direct & (dist <= 0.1 * (1 - 1e-3)))
    assert r.accuracy(0.1) < r.clean_accuracy - 0.2  # FAB bites
