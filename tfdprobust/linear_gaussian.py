"""The linear theory of private and robust classifiers (Section 3 of "To be private and robust").

A binary problem where everything has a closed form. The data of eq. (4)::

    x ~ N( theta*1_d, K^2 sigma^2 I_d)   if y = +1     (the wide, "hard" class)
    x ~ N(-theta*1_d,     sigma^2 I_d)   if y = -1     y uniform on {-1, +1}

and the bias-only linear classifier ``f(x; 1, b) = sign(sum_j x_j + b)``. Only the
intercept ``b`` is learned, so one number decides how accurate and how robust it is.

What this module computes:

* ``robust_error(b, gamma)`` -- eq. (6): the error of ``f(.; b)`` under the worst
  l_inf perturbation of size gamma (natural error at gamma = 0). The l2 version is
  Corollary 3.2 (gamma -> gamma / sqrt(d)), selected with ``norm="l2"``.
* ``b_gamma(gamma)`` -- eq. (5), the optimal robust intercept, and
  ``optimal_robust_error(gamma)`` -- Theorem 1.
* ``train_intercept`` -- DP-SGD on ``b`` through :func:`tfdprobust.clipping.privatize`
  (the code path that trains networks), with Poisson sampling, so that the epsilon of
  :mod:`tfdprobust.accounting` is the guarantee of what the loop did.
* ``gamma_star`` -- Theorem 2: the attack size at which the DP classifier is the
  optimal robust one, found with :func:`scipy.optimize.brentq`.
* ``theorem3_check`` and ``pareto_report`` -- Theorem 3 evaluated on a grid of gamma.
* ``sweep_clip`` / ``sweep_noise`` -- b_DP and gamma* as functions of R and sigma_DP.

Equation (5), derived (the OCR'd paper misplaces the square-root bracket). Write
``a = d (theta - gamma)`` and ``s = sqrt(d) sigma``; eq. (6) is
``R(b) = Phi((b - a)/s)/2 + Phi(-(a + b)/(K s))/2``. Setting ``dR/db = 0`` gives
``phi((b - a)/s) = phi((a + b)/(K s)) / K``, i.e. after taking logs
``(K^2 - 1) b^2 - 2 (K^2 + 1) a b + (K^2 - 1) a^2 - 2 K^2 s^2 log K = 0``. Its two roots
are ``(K^2+1)/(K^2-1) a -/+ K sqrt(4 a^2/(K^2-1)^2 + d sigma^2 q(K))`` with
``q(K) = 2 log K / (K^2 - 1)``; the smaller root is the minimum (the larger is a local
maximum of R, above which R falls back to 1/2). So the square root covers *both*
terms::

    b_gamma = (K^2+1)/(K^2-1) d (theta-gamma) - K sqrt( 4 d^2 (theta-gamma)^2/(K^2-1)^2 + d sigma^2 q(K) )

Substituting it into eq. (6) gives exactly Theorem 1's optimal robust error, which the
tests check, together with a direct numerical minimisation of eq. (6).

The loss. The paper does not print the loss of the bias-only classifier; we use the
standard one of its authors' experiments, the logistic (binary cross-entropy) loss on
the margin ``m = y (sum_j x_j + b)``: ``l = log(1 + exp(-m))``, whose per-example
gradient in ``b`` is ``-y sigmoid(-m)``. Note that with the weights fixed to 1 its
minimiser ``b_nat`` is *not* the 0-1-error minimiser ``b_0`` (the surrogate is not
calibrated at this scale); large clipping norms give ``b_DP ~= b_nat``, not ``b_0``.

Example:
    >>> mix = GaussianMixture(K=4, sigma=0.2, theta=1.0, d=1)
    >>> round(b_gamma(mix, 0.0), 4)             # b_0, the natural optimum
    0.4987
    >>> round(b_gamma(mix, 0.075), 4)           # the paper's gamma* = 0.075
    0.4469
    >>> round(float(robust_error(mix, b_gamma(mix, 0.0), 0.0)), 4)   # its natural error
    0.0183
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import optimize, special, stats

from tfdprobust.errors import UsageError, require

NORMS = ("linf", "l2")


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """The data distribution of eq. (4).

    Attributes:
        K: std ratio of the positive to the negative class; > 1.
        sigma: std of the negative class (per coordinate); > 0.
        theta: class means are +theta*1 and -theta*1; > 0.
        d: dimension; >= 1.
    """

    K: float = 4.0
    sigma: float = 0.2
    theta: float = 1.0
    d: int = 2

    def __post_init__(self):
        require(_finite(self.K) and self.K > 1, f"--K must be a number > 1, got {self.K}")
        require(_finite(self.sigma) and self.sigma > 0, f"--sigma must be > 0, got {self.sigma}")
        require(_finite(self.theta) and self.theta > 0, f"--theta must be > 0, got {self.theta}")
        require(
            isinstance(self.d, (int, np.integer)) and not isinstance(self.d, bool) and self.d >= 1,
            f"--d must be an integer >= 1, got {self.d!r}",
        )

    @property
    def q(self) -> float:
        """q(K) = 2 log K / (K^2 - 1) of Theorem 1."""
        return 2.0 * math.log(self.K) / (self.K**2 - 1.0)

    def sum_stats(self, y: int):
        """Mean and std of ``S = sum_j x_j`` given the label: N(y d theta, d s_y^2)."""
        scale = self.K * self.sigma if y > 0 else self.sigma
        return y * self.d * self.theta, math.sqrt(self.d) * scale


@dataclasses.dataclass(frozen=True)
class DPTrainConfig:
    """DP-SGD on the intercept.

    Attributes:
        clip: per-example clipping norm R; ``math.inf`` disables clipping (then the
            noise multiplier must be 0: there is no sensitivity to calibrate to).
        noise_multiplier: sigma_DP; the noise std on the gradient sum is sigma_DP * R.
        lr: learning rate eta.
        epochs: passes over the data; steps = ceil(epochs * n / batch_size).
        batch_size: expected batch size B; each step includes each example
            independently with probability q = B / n (Poisson sampling).
        b_init: starting intercept.
        seed: seeds the Poisson masks and the Gaussian noise *only* together with
            ``insecure_reproducible_noise``; otherwise both come from OS entropy
            (:mod:`tfdprobust.randomness`), as a DP guarantee requires.
        insecure_reproducible_noise: replay masks and noise from ``seed`` (no DP guarantee).
    """

    clip: float = 0.1
    noise_multiplier: float = 0.0
    lr: float = 8.0
    epochs: float = 50
    batch_size: int = 1000
    b_init: float = 0.0
    seed: int = 0
    insecure_reproducible_noise: bool = False

    def __post_init__(self):
        require(self.clip > 0 and not math.isnan(self.clip), f"--clip must be > 0, got {self.clip}")
        require(
            _finite(self.noise_multiplier) and self.noise_multiplier >= 0,
            f"noise multiplier must be >= 0, got {self.noise_multiplier}",
        )
        require(
            math.isfinite(self.clip) or self.noise_multiplier == 0,
            "--clip=inf (no clipping) cannot be combined with noise: nothing bounds the sensitivity",
        )
        require(_finite(self.lr) and self.lr > 0, f"--lr must be > 0, got {self.lr}")
        require(_finite(self.epochs) and self.epochs > 0, f"--epochs must be > 0, got {self.epochs}")
        require(self.batch_size >= 1, f"--batch_size must be >= 1, got {self.batch_size}")
        require(_finite(self.b_init), f"--b_init must be finite, got {self.b_init}")

    def steps(self, n: int) -> int:
        return math.ceil(self.epochs * n / self.batch_size)

    def replace(self, **changes) -> "DPTrainConfig":
        return dataclasses.replace(self, **changes)


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _linf_gamma(mix: GaussianMixture, gamma, norm: str):
    """The l_inf attack size equivalent to ``gamma`` in ``norm`` (Corollary 3.2).

    Against w = 1 the worst perturbation moves sum_j x_j by ||w||_1 gamma = d gamma for
    l_inf and by ||w||_2 gamma = sqrt(d) gamma for l2, hence gamma -> gamma / sqrt(d).
    """
    require(norm in NORMS, f"--norm must be one of {', '.join(NORMS)}, got {norm!r}")
    gamma = np.asarray(gamma, dtype=float)
    return gamma if norm == "linf" else gamma / math.sqrt(mix.d)


# ----------------------------------------------------------------------------- data


def sample(mix: GaussianMixture, n: int, rng: np.random.Generator):
    """Draws ``n`` examples of eq. (4).

    Returns:
        ``x`` of shape [n, d] and labels ``y`` in {-1, +1} of shape [n].

    Example:
        >>> x, y = sample(GaussianMixture(d=3), 5, np.random.default_rng(0))
        >>> x.shape, sorted(set(y.tolist())) <= [-1.0, 1.0]
        ((5, 3), True)
    """
    require(n >= 1, f"--n must be >= 1, got {n}")
    y = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    scale = np.where(y > 0, mix.K * mix.sigma, mix.sigma)[:, None]
    x = y[:, None] * mix.theta + scale * rng.standard_normal((n, mix.d))
    return x, y


# ----------------------------------------------------------------------------- closed forms


def robust_error(mix: GaussianMixture, b, gamma, norm: str = "linf"):
    """Eq. (6): robust error of ``f(.; 1, b)`` under an attack of size ``gamma``.

    The worst perturbation pushes every coordinate by gamma towards the other class,
    so each class-conditional error is a normal tail. ``gamma = 0`` is the natural
    error. Broadcasts over ``b`` and ``gamma``.

    Example:
        >>> mix = GaussianMixture(d=1)
        >>> round(float(robust_error(mix, 0.5, 0.0)), 4)
        0.0183
    """
    g = _linf_gamma(mix, gamma, norm)
    b = np.asarray(b, dtype=float)
    rd, s = math.sqrt(mix.d), mix.sigma
    neg = stats.norm.cdf(-rd * (mix.theta - g) / s + b / (rd * s))
    pos = stats.norm.cdf(-rd * (mix.theta - g) / (mix.K * s) - b / (mix.K * rd * s))
    return 0.5 * neg + 0.5 * pos


def natural_error(mix: GaussianMixture, b):
    """Eq. (6) at gamma = 0."""
    return robust_error(mix, b, 0.0)


def b_gamma(mix: GaussianMixture, gamma, norm: str = "linf"):
    """Eq. (5) (corrected, see the module docstring): the optimal robust intercept.

    Strictly decreasing in gamma, from b_0 to -inf (Fact 3.1).

    Example:
        >>> mix = GaussianMixture(d=2)
        >>> round(float(b_gamma(mix, 0.0)), 4), round(float(b_gamma(mix, 0.075)), 4)
        (1.0943, 0.9966)
    """
    g = _linf_gamma(mix, gamma, norm)
    K, d = mix.K, mix.d
    a = d * (mix.theta - g)
    root = np.sqrt(4.0 * a**2 / (K**2 - 1.0) ** 2 + d * mix.sigma**2 * mix.q)
    return (K**2 + 1.0) / (K**2 - 1.0) * a - K * root


def b_gamma_upper(mix: GaussianMixture, gamma, norm: str = "linf"):
    """The other root of dR_gamma/db = 0: a local *maximum* of eq. (6), right of b_gamma."""
    g = _linf_gamma(mix, gamma, norm)
    K, d = mix.K, mix.d
    a = d * (mix.theta - g)
    root = np.sqrt(4.0 * a**2 / (K**2 - 1.0) ** 2 + d * mix.sigma**2 * mix.q)
    return (K**2 + 1.0) / (K**2 - 1.0) * a + K * root


def optimal_robust_error(mix: GaussianMixture, gamma, norm: str = "linf"):
    """Theorem 1: min over linear classifiers of the robust error, R_gamma(f_gamma)."""
    g = _linf_gamma(mix, gamma, norm)
    K = mix.K
    B = 2.0 / (K**2 - 1.0) * math.sqrt(mix.d) * (mix.theta - g) / mix.sigma
    r = np.sqrt(B**2 + mix.q)
    return 0.5 * stats.norm.cdf(B - K * r) + 0.5 * stats.norm.cdf(-K * B + r)


def b_gamma_numeric(mix: GaussianMixture, gamma: float, norm: str = "linf") -> float:
    """Minimises eq. (6) over b directly (bounded Brent), to check eq. (5).

    The bracket is [centre - w, centre + w] around the mid-point of the two class means
    of the attacked sum, wide enough to contain the minimum; eq. (6) has a spurious local
    maximum far to the right, so an unbounded search is not safe.
    """
    g = float(_linf_gamma(mix, gamma, norm))
    a = mix.d * (mix.theta - g)
    width = 4.0 * abs(a) + 10.0 * math.sqrt(mix.d) * mix.K * mix.sigma
    res = optimize.minimize_scalar(
        lambda b: float(robust_error(mix, b, g)),
        bounds=(-width, width),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(res.x)


def gamma_star(mix: GaussianMixture, b_dp: float, norm: str = "linf") -> Optional[float]:
    """Theorem 2: the gamma* > 0 with b_{gamma*} = b_dp, or None when b_dp >= b_0.

    b_gamma is continuous and strictly decreasing to -inf, so for b_dp < b_0 the root is
    unique; we bracket it by doubling and solve with Brent's method.

    Example:
        >>> mix = GaussianMixture(d=1)
        >>> round(gamma_star(mix, float(b_gamma(mix, 0.075))), 6)
        0.075
        >>> gamma_star(mix, 1.0) is None
        True
    """
    b0 = float(b_gamma(mix, 0.0, norm))
    if not b_dp < b0:
        return None
    f = lambda g: float(b_gamma(mix, g, norm)) - b_dp  # noqa: E731
    hi = max(mix.theta, 1e-3)
    while f(hi) > 0:
        hi *= 2.0
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-12, rtol=1e-12))


# ----------------------------------------------------------------------------- training loss


def per_example_grad(margin_sum, y, b):
    """Gradient in b of log(1 + exp(-y (S + b))): ``-y sigmoid(-y (S + b))`` (numpy)."""
    return -y * special.expit(-y * (margin_sum + b))


def population_stationary_intercept(mix: GaussianMixture, clip: float = math.inf) -> float:
    """The b where the *expected* clipped logistic gradient vanishes.

    This is the paper's stationarity argument ("DP optimization can lead to robustness")
    made exact: noise-free DP-SGD on infinitely many samples converges here. With
    ``clip=inf`` it is the natural logistic intercept b_nat. The expectation over
    S | y ~ N(y d theta, d s_y^2) uses 201-node Gauss-Hermite quadrature; the mean clipped
    gradient is non-decreasing in b, so Brent's method finds the root.

    Example:
        >>> mix = GaussianMixture(d=1)
        >>> round(population_stationary_intercept(mix), 3)     # b_nat < b_0 = 0.499
        0.058
    """
    nodes, weights = np.polynomial.hermite.hermgauss(201)
    weights = weights / math.sqrt(math.pi)

    def mean_grad(b: float) -> float:
        total = 0.0
        for y in (1.0, -1.0):
            mu, sd = mix.sum_stats(int(y))
            mag = special.expit(-y * (mu + math.sqrt(2.0) * sd * nodes + b))
            total += 0.5 * float(np.sum(weights * -y * np.minimum(mag, clip)))
        return total

    span = 10.0 * (mix.d * mix.theta + math.sqrt(mix.d) * mix.K * mix.sigma) + 10.0
    return float(optimize.brentq(mean_grad, -span, span, xtol=1e-10))


def empirical_stationary_intercept(margin_sum, y, clip: float = math.inf) -> float:
    """Like :func:`population_stationary_intercept`, on a finite sample."""

    def mean_grad(b):
        return float(np.mean(np.clip(per_example_grad(margin_sum, y, b), -clip, clip)))

    span = 10.0 * float(np.max(np.abs(margin_sum))) + 10.0
    return float(optimize.brentq(mean_grad, -span, span, xtol=1e-10))


# ----------------------------------------------------------------------------- DP training


def calibrated_noise(target_epsilon: float, delta: float, n: int, cfg: DPTrainConfig):
    """sigma_DP for a target (epsilon, delta), and its accounting spec (Poisson sampling).

    Uses :func:`tfdprobust.accounting.calibrate_noise`, which never overshoots epsilon.
    """
    from tfdprobust import accounting

    require(_finite(target_epsilon), f"--epsilon must be a finite number > 0, got {target_epsilon}")
    spec = accounting.AccountingSpec(
        num_examples=n,
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        noise_multiplier=0.0,
        delta=delta,
        sampling="poisson",
        steps=cfg.steps(n),
    )
    sigma = accounting.calibrate_noise(target_epsilon, spec)
    return sigma, spec.replace(noise_multiplier=sigma)


def train_intercept(x, y, cfg: DPTrainConfig) -> Dict:
    """DP-SGD (or clipped / plain SGD) on the intercept of ``f(x; 1, b)``.

    Every step: Poisson-sample a batch (each example with probability q = B/n), compute
    the per-example logistic gradients in b as a [batch, 1] tensor, and pass them to
    :func:`tfdprobust.clipping.privatize` with ``normalizer = B`` (the *expected* batch
    size; dividing by the realised size would leak it). With ``clip=inf`` (natural
    training) clipping and noise are skipped and the realised batch mean is used.

    Returns:
        ``{"b": final intercept, "trajectory": b after every step (list),
        "steps": int, "clipped_fraction": mean fraction of clipped examples}``.
    """
    import tensorflow as tf

    from tfdprobust import clipping, randomness

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float32)
    n = x.shape[0]
    require(
        cfg.batch_size <= n, f"--batch_size must be <= --n (the number of examples), got {cfg.batch_size} > {n}"
    )
    # w = 1: the classifier sees only sum_j x_j. float32 because clipping works in float32,
    # as it does for the networks it trains.
    margin_sum = x.sum(axis=1).astype(np.float32)
    q = cfg.batch_size / n
    steps = cfg.steps(n)
    private = math.isfinite(cfg.clip)
    # Poisson sampling, drawn up front from the secret generator: step t uses example i
    # iff masks[t, i]. Running the loop inside one tf.function keeps 500 steps well
    # under a second. The same generator then supplies the noise.
    generator = randomness.noise_generator(cfg.seed if cfg.insecure_reproducible_noise else None)
    masks = (generator.uniform((steps, n), dtype=tf.float64) < q).numpy()

    @tf.function
    def loop(s_all, y_all, masks, b):
        traj = tf.TensorArray(tf.float32, size=steps)
        fracs = tf.TensorArray(tf.float32, size=steps)
        for t in tf.range(steps):
            s_batch = tf.boolean_mask(s_all, masks[t])
            y_batch = tf.boolean_mask(y_all, masks[t])
            margins = y_batch * (s_batch + b)
            grads = (-y_batch * tf.sigmoid(-margins))[:, None]  # per-example, [batch, 1]
            if private:
                (avg,), norms = clipping.privatize(
                    [grads], cfg.clip, cfg.noise_multiplier, tf.constant(float(cfg.batch_size)), generator
                )
                frac = tf.reduce_mean(tf.cast(norms > cfg.clip, tf.float32))
                b = b - cfg.lr * avg[0]
            else:
                # Natural SGD: mean over the realised batch (an empty batch is a no-op).
                size = tf.maximum(tf.cast(tf.shape(grads)[0], tf.float32), 1.0)
                b = b - cfg.lr * tf.reduce_sum(grads) / size
                frac = tf.constant(0.0)
            traj = traj.write(t, b)
            fracs = fracs.write(t, frac)
        return b, traj.stack(), fracs.stack()

    b, traj, fracs = loop(
        tf.constant(margin_sum), tf.constant(y), tf.constant(masks), tf.constant(float(cfg.b_init))
    )
    return {
        "b": float(b),
        "trajectory": [float(v) for v in traj.numpy()],
        "steps": steps,
        "clipped_fraction": float(np.mean(fracs.numpy())) if private else 0.0,
    }


# ----------------------------------------------------------------------------- theorems


def theorem3_check(mix: GaussianMixture, b_dp: float, gammas: Sequence[float], norm: str = "linf") -> List[Dict]:
    """Theorem 3 on a grid of attack sizes.

    For each gamma: whether the condition (K^2+1)/(2K) gamma < |theta - gamma| + |theta|
    holds, whether the premise b_gamma < b_DP < b_0 holds, and whether the conclusion
    R_gamma(f_gamma) < R_gamma(f_DP) < R_gamma(f_0) holds (computed from eq. 6).
    """
    b0 = float(b_gamma(mix, 0.0, norm))
    rows = []
    for g in gammas:
        gi = float(_linf_gamma(mix, g, norm))
        bg = float(b_gamma(mix, g, norm))
        r_opt = float(optimal_robust_error(mix, g, norm))
        r_dp = float(robust_error(mix, b_dp, g, norm))
        r_0 = float(robust_error(mix, b0, g, norm))
        rows.append(
            {
                "gamma": float(g),
                "condition": bool((mix.K**2 + 1) / (2 * mix.K) * gi < abs(mix.theta - gi) + abs(mix.theta)),
                "premise": bool(bg < b_dp < b0),
                "conclusion": bool(r_opt < r_dp < r_0),
                "R_gamma_f_gamma": r_opt,
                "R_gamma_f_dp": r_dp,
                "R_gamma_f_0": r_0,
            }
        )
    return rows


def pareto_report(mix: GaussianMixture, b_dp: float, gamma: float, norm: str = "linf") -> Dict:
    """Is f_DP Pareto optimal in (natural error, robust error at gamma)?

    Theory: the natural error falls up to b_0 and rises after it; the robust error rises
    from its minimum b_gamma up to the other root of dR/db = 0 (a local maximum,
    ``b_gamma_upper``) and falls back towards 1/2 after it. For b_DP <= b_0, the b that
    are at least as accurate as f_DP form [b_DP, b'] with b' > b_0 the other point of
    equal natural error, so f_DP is undominated iff b_gamma <= b_DP <= b_0 and, when the
    maximum lies inside (b_DP, b') (which can happen for gamma > theta), also
    R_gamma(b_DP) <= R_gamma(b'). For gamma < theta that is just b_gamma <= b_DP <= b_0.
    ``in_interval`` is that criterion; ``pareto_optimal`` comes from a dense grid search
    for a dominating classifier, and the two are compared in the experiment.
    """
    b0 = float(b_gamma(mix, 0.0, norm))
    bg = float(b_gamma(mix, gamma, norm))
    b_up = float(b_gamma_upper(mix, gamma, norm))
    eps = 1e-9 * (1.0 + abs(b_dp))  # b_DP == b_{gamma*} up to root-finding error
    r0_dp = float(natural_error(mix, b_dp))
    rg_dp = float(robust_error(mix, b_dp, gamma, norm))
    b_mirror = b0
    if b_dp < b0:  # the b > b_0 with the same natural error as b_DP
        span = b0 + 10.0 * (b0 - b_dp) + 10.0 * math.sqrt(mix.d) * mix.K * mix.sigma
        f = lambda b: float(natural_error(mix, b)) - r0_dp  # noqa: E731
        b_mirror = float(optimize.brentq(f, b0, span)) if f(span) > 0 else span
    lo, hi = min(bg, b_dp, b0), max(bg, b_dp, b_mirror)
    pad = 2.0 * (hi - lo) + 1.0
    grid = np.linspace(lo - pad, hi + pad, 20001)
    tol = 1e-12
    grid = grid[np.abs(grid - b_dp) > 1e-6]  # points numerically equal to b_DP cannot dominate it
    r0 = natural_error(mix, grid)
    rg = robust_error(mix, grid, gamma, norm)
    dominating = (r0 <= r0_dp + tol) & (rg <= rg_dp + tol) & ((r0 < r0_dp - tol) | (rg < rg_dp - tol))
    return {
        "gamma": float(gamma),
        "b_gamma": bg,
        "b_0": b0,
        "b_gamma_upper": b_up,
        "in_interval": bool(
            bg - eps <= b_dp <= b0 + eps
            and (b_up >= b_mirror or rg_dp <= float(robust_error(mix, b_mirror, gamma, norm)) + 1e-12)
        ),
        "dominated_on_grid": bool(dominating.any()),
        "pareto_optimal": bool(not dominating.any()),
        "natural_error_dp": r0_dp,
        "robust_error_dp": rg_dp,
    }


# ----------------------------------------------------------------------------- monte carlo


def monte_carlo_error(mix: GaussianMixture, b: float, gamma: float, n: int, rng, norm: str = "linf") -> float:
    """Robust error of f(.; 1, b) estimated by attacking samples with the worst perturbation.

    The attack is explicit: l_inf moves each coordinate by gamma towards the other class;
    l2 moves along 1/sqrt(d) by gamma. Used by the tests to check eq. (6).
    """
    x, y = sample(mix, n, rng)
    step = gamma if norm == "linf" else gamma / math.sqrt(mix.d)
    x_adv = x - y[:, None] * step
    pred = np.where(x_adv.sum(axis=1) + b > 0, 1.0, -1.0)
    return float(np.mean(pred != y))


# ----------------------------------------------------------------------------- sweeps


def sweep(
    mix: GaussianMixture,
    x,
    y,
    base: DPTrainConfig,
    clips: Sequence[float] = (),
    noise_multipliers: Sequence[float] = (),
    norm: str = "linf",
) -> Dict[str, List[Dict]]:
    """b_DP and gamma* as R varies (noise multiplier fixed) and as sigma_DP varies (R fixed).

    Each point is one training run on the same sample and seed, plus the population
    stationary intercept for that R (what noise-free DP-SGD converges to as n -> inf).
    """
    out = {"clip": [], "noise_multiplier": []}
    for r in clips:
        cfg = base.replace(clip=float(r))
        b = train_intercept(x, y, cfg)["b"]
        b_pop = population_stationary_intercept(mix, float(r))
        out["clip"].append(
            {
                "clip": float(r),
                "noise_multiplier": cfg.noise_multiplier,
                "b_dp": b,
                "gamma_star": gamma_star(mix, b, norm),
                "b_population": b_pop,
            }
        )
    for s in noise_multipliers:
        cfg = base.replace(noise_multiplier=float(s))
        b = train_intercept(x, y, cfg)["b"]
        out["noise_multiplier"].append(
            {"clip": cfg.clip, "noise_multiplier": float(s), "b_dp": b, "gamma_star": gamma_star(mix, b, norm)}
        )
    return out


__all__ = [
    "GaussianMixture",
    "DPTrainConfig",
    "UsageError",
    "sample",
    "robust_error",
    "natural_error",
    "b_gamma",
    "b_gamma_numeric",
    "b_gamma_upper",
    "optimal_robust_error",
    "gamma_star",
    "population_stationary_intercept",
    "empirical_stationary_intercept",
    "calibrated_noise",
    "train_intercept",
    "theorem3_check",
    "pareto_report",
    "monte_carlo_error",
    "sweep",
]
