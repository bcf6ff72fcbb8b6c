"""Tests of the mixed-Gaussian linear theory (tfdprobust.linear_gaussian) and its CLI."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tfdprobust import linear_gaussian as lg
from tfdprobust.errors import UsageError

PAPER = lg.GaussianMixture(K=4, sigma=0.2, theta=1.0, d=2)
MIXES = [
    PAPER,
    lg.GaussianMixture(K=4, sigma=0.2, theta=1.0, d=1),
    lg.GaussianMixture(K=2.5, sigma=0.5, theta=0.7, d=3),
]


@pytest.mark.parametrize("mix", MIXES, ids=lambda m: f"K{m.K}-s{m.sigma}-d{m.d}")
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_closed_form_error_agrees_with_monte_carlo(mix, norm):
    rng = np.random.default_rng(1)
    n = 200_000
    for b in (-0.5, 0.0, float(lg.b_gamma(mix, 0.0))):
        for gamma in (0.0, 0.1, 0.3):
            exact = float(lg.robust_error(mix, b, gamma, norm))
            mc = lg.monte_carlo_error(mix, b, gamma, n, rng, norm)
            se = math.sqrt(max(exact * (1 - exact), 1e-6) / n)
            assert abs(mc - exact) < 5 * se + 1e-4, (b, gamma, mc, exact)


@pytest.mark.parametrize("mix", MIXES, ids=lambda m: f"K{m.K}-s{m.sigma}-d{m.d}")
def test_eq5_minimises_eq6_numerically(mix):
    for gamma in (0.0, 0.05, 0.3, 0.9 * mix.theta, 1.5 * mix.theta):
        assert lg.b_gamma(mix, gamma) == pytest.approx(lg.b_gamma_numeric(mix, gamma), abs=1e-6)


def test_literal_ocr_eq5_is_not_the_minimiser():
    # The paper as printed: (K^2+1)/(K^2-1) d(theta-gamma) - K sqrt(4 d^2 (theta-gamma)^2/(K^2-1)^2) + d sigma^2 q.
    mix = PAPER
    K, d, a = mix.K, mix.d, mix.d * mix.theta
    printed = (K**2 + 1) / (K**2 - 1) * a - K * math.sqrt(4 * a**2 / (K**2 - 1) ** 2) + d * mix.sigma**2 * mix.q
    assert abs(printed - lg.b_gamma_numeric(mix, 0.0)) > 0.1
    assert float(lg.natural_error(mix, printed)) > float(lg.natural_error(mix, lg.b_gamma(mix, 0.0)))


@pytest.mark.parametrize("mix", MIXES, ids=lambda m: f"K{m.K}-s{m.sigma}-d{m.d}")
def test_theorem1_is_eq6_at_b_gamma(mix):
    gammas = np.linspace(0.0, 1.5 * mix.theta, 31)
    np.testing.assert_allclose(
        lg.optimal_robust_error(mix, gammas), lg.robust_error(mix, lg.b_gamma(mix, gammas), gammas), atol=1e-12
    )


@pytest.mark.parametrize("mix", MIXES, ids=lambda m: f"K{m.K}-s{m.sigma}-d{m.d}")
def test_b_gamma_strictly_decreasing_with_fact31_slope(mix):
    gammas = np.linspace(0.0, 3.0 * mix.theta, 3001)
    b = lg.b_gamma(mix, gammas)
    slope = np.diff(b) / np.diff(gammas)
    assert np.all(slope < 0)
    # Fact 3.1 (via Xu et al.): db/dgamma <= -(K-1)/(K+1) d.
    assert np.all(slope <= -(mix.K - 1) / (mix.K + 1) * mix.d + 1e-9)
    assert lg.b_gamma(mix, 50.0 * mix.theta) < -10  # heads to -inf


@pytest.mark.parametrize("mix", MIXES, ids=lambda m: f"K{m.K}-s{m.sigma}-d{m.d}")
def test_b0_minimises_natural_error(mix):
    b0 = float(lg.b_gamma(mix, 0.0))
    grid = np.linspace(b0 - 3.0, b0 + 3.0, 60001)
    errs = lg.natural_error(mix, grid)
    assert abs(grid[np.argmin(errs)] - b0) < 2e-4
    assert np.all(errs >= float(lg.natural_error(mix, b0)) - 1e-15)


def test_gamma_star_solves_b_gamma_star_equals_b_dp():
    for mix in MIXES:
        b0 = float(lg.b_gamma(mix, 0.0))
        for b_dp in (b0 - 1e-3, b0 - 0.1, 0.0, -1.0, -5.0):
            g = lg.gamma_star(mix, b_dp)
            assert g is not None and g > 0
            assert float(lg.b_gamma(mix, g)) == pytest.approx(b_dp, abs=1e-9)
            # Corollary 3.2: the l2 attack size is sqrt(d) times the l_inf one.
            assert lg.gamma_star(mix, b_dp, "l2") == pytest.approx(math.sqrt(mix.d) * g, rel=1e-8)
        assert lg.gamma_star(mix, b0 + 0.01) is None  # Theorem 2 needs b_DP < b_0


def test_theorem3_and_pareto():
    mix = PAPER
    b0 = float(lg.b_gamma(mix, 0.0))
    b_dp = float(lg.b_gamma(mix, 0.1))  # so gamma* = 0.1
    gammas = np.linspace(0.0, 0.6, 61)
    rows = lg.theorem3_check(mix, b_dp, gammas)
    both = [r for r in rows if r["premise"] and r["condition"]]
    assert len(both) > 20 and all(r["conclusion"] for r in both)
    assert not any(r["premise"] for r in rows if r["gamma"] < 0.1 - 1e-9)
    for g in (0.05, 0.1, 0.3, 0.8, 1.5):
        rep = lg.pareto_report(mix, b_dp, g)
        assert rep["in_interval"] == rep["pareto_optimal"], rep
    assert not lg.pareto_report(mix, b_dp, 0.05)["pareto_optimal"]  # b_0.05 > b_DP: dominated
    assert lg.pareto_report(mix, b_dp, 0.3)["pareto_optimal"]
    assert not lg.pareto_report(mix, b0 + 0.2, 0.3)["pareto_optimal"]


def test_configs_validate_and_name_the_flag():
    with pytest.raises(UsageError, match="--K"):
        lg.GaussianMixture(K=1.0)
    with pytest.raises(UsageError, match="--d"):
        lg.GaussianMixture(d=0)
    with pytest.raises(UsageError, match="--sigma"):
        lg.GaussianMixture(sigma=-1)
    with pytest.raises(UsageError, match="--clip"):
        lg.DPTrainConfig(clip=0.0)
    with pytest.raises(UsageError, match="--clip=inf"):
        lg.DPTrainConfig(clip=math.inf, noise_multiplier=1.0)


# --------------------------------------------------------------------------- DP training (TF)

# Properties of the algorithm, not of a private run: replay masks and noise from the seed so
# that the tolerances below do not depend on the batch-sampling spread (about +-0.06 in b).
SMALL = dict(lr=8.0, epochs=20, batch_size=200, seed=3, insecure_reproducible_noise=True)


@pytest.fixture(scope="module")
def small_data():
    x, y = lg.sample(PAPER, 2000, np.random.default_rng(7))
    return x, y


def test_large_clip_recovers_the_unclipped_optimum(small_data):
    x, y = small_data
    b_nat = lg.empirical_stationary_intercept(x.sum(axis=1), y)
    # Full batches (q = 1) so there is no sampling noise; R=100 never clips (|g| <= 1).
    cfg = lg.DPTrainConfig(clip=100.0, lr=4.0, epochs=100, batch_size=len(y))
    b = lg.train_intercept(x, y, cfg)["b"]
    assert b == pytest.approx(b_nat, abs=1e-3)
    # With w = 1 the logistic optimum is not b_0 (the surrogate is not calibrated);
    # this gap, not clipping, is what separates large-R DP-SGD from b_0.
    assert b_nat < float(lg.b_gamma(PAPER, 0.0)) - 0.5


def test_small_clip_moves_b_below_b0_and_to_the_clipped_stationary_point(small_data):
    x, y = small_data
    b0 = float(lg.b_gamma(PAPER, 0.0))
    b_nat = lg.empirical_stationary_intercept(x.sum(axis=1), y)
    run = lg.train_intercept(x, y, lg.DPTrainConfig(clip=0.1, **SMALL))
    assert run["b"] < b_nat - 0.3 < b0
    # lr * R = 0.8 lets the last iterate rattle around the stationary point; its average
    # over the second half of the run is what converges there.
    late = np.mean(run["trajectory"][len(run["trajectory"]) // 2:])
    assert late == pytest.approx(lg.empirical_stationary_intercept(x.sum(axis=1), y, 0.1), abs=0.05)
    assert 0.2 < run["clipped_fraction"] < 0.9
    assert lg.gamma_star(PAPER, run["b"]) > lg.gamma_star(PAPER, b_nat)


def test_noise_is_calibrated_and_goes_through_privatize(small_data):
    from tfdprobust import accounting

    x, y = small_data
    cfg = lg.DPTrainConfig(clip=0.1, **SMALL)
    sigma, spec = lg.calibrated_noise(4.0, 1e-4, len(y), cfg)
    assert spec.sampling == "poisson" and spec.total_steps == cfg.steps(len(y))
    assert accounting.epsilon(spec) <= 4.0
    insecure = cfg  # SMALL replays masks and noise from its seed
    clean = lg.train_intercept(x, y, insecure)
    noisy = lg.train_intercept(x, y, insecure.replace(noise_multiplier=sigma))
    again = lg.train_intercept(x, y, insecure.replace(noise_multiplier=sigma))
    assert noisy["b"] == again["b"]  # insecure seed: reproducible
    assert noisy["b"] != clean["b"]  # the noise is really added (same masks, same seed)
    # Per-step noise std on b is lr * sigma * R / B; over the run it stays small.
    assert abs(noisy["b"] - clean["b"]) < 0.1
    secure = cfg.replace(noise_multiplier=sigma, insecure_reproducible_noise=False)
    secret = [lg.train_intercept(x, y, secure)["b"] for _ in range(2)]
    assert secret[0] != secret[1]  # default: fresh OS-entropy masks and noise every run


# --------------------------------------------------------------------------- CLI


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "tfdprobust.experiments.linear_gaussian", *args],
        capture_output=True, text=True, cwd=cwd, timeout=300,
    )


@pytest.mark.parametrize(
    "flag, arg",
    [("K", "--K=abc"), ("K", "--K=0.5"), ("d", "--d=0"), ("norm", "--norm=l3"), ("nosuchflag", "--nosuchflag=1")],
)
def test_bad_flag_gives_one_line_error_naming_it(flag, arg, tmp_path):
    proc = _cli(arg, f"--out={tmp_path}")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and flag in lines[0], proc.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_cli_paper_setting_end_to_end(tmp_path):
    proc = _cli(f"--out={tmp_path}", "--sweep_clips=0.1,10", "--sweep_noise=0,2")
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["privacy"]["epsilon"] <= 15.0
    assert res["intercepts"]["b_dp"] < res["closed_form"]["b_0"]
    g = res["gamma_star"]["dp"]
    assert res["gamma_star"]["residual_b_gamma_star_minus_b_dp"] == pytest.approx(0.0, abs=1e-8)
    e = res["errors_at_gamma_star"]
    assert e["f_dp"]["robust_error_at_gamma_star"] == pytest.approx(e["optimal_robust_error_theorem1"], abs=1e-8)
    assert g > 0
    for name in ("fig1_decision_boundaries", "fig2_intercepts_and_errors", "fig3_dp_intercept",
                 "sweep_clip", "sweep_noise"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]
