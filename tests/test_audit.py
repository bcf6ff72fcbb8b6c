"""The membership-inference audit: sound epsilon lower bounds, the attacks, the CLI."""

import gzip
import json
import math
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize, stats

from tfdprobust import audit
from tfdprobust.audit import bounds, mia, report
from tfdprobust.errors import UsageError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- bounds
@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (0, 250), (120, 250), (250, 250)])
def test_clopper_pearson_matches_scipy_exact_interval(k, n):
    # A two-sided exact interval at level 1 - 2a has the one-sided a-bounds as its ends.
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
    lo, hi = bounds.clopper_pearson(k, n, 0.05)
    assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)


def test_epsilon_from_rates_hand_computed():
    assert bounds.epsilon_from_rates(0.5, 0.1, 0.0) == pytest.approx(math.log(5))
    # The complement inequality binds: 1 - FPR = 0.5 <= e^eps * 0.01.
    assert bounds.epsilon_from_rates(0.99, 0.5, 0.0) == pytest.approx(math.log(50))
    assert bounds.epsilon_from_rates(0.5, 0.1, 0.05) == pytest.approx(math.log(4.5))
    assert bounds.epsilon_from_rates(0.3, 0.3, 0.0) == 0.0  # chance-level test
    assert bounds.epsilon_from_rates(0.2, 0.6, 0.0) == 0.0  # worse than chance implies nothing
    assert bounds.epsilon_from_rates(0.5, 0.0, 0.0) == math.inf


def test_perfect_attacker_is_limited_by_the_sample_size():
    # n = 100 per side, alpha = 0.1: TPR >= 0.05^(1/100) = 0.970487, FPR <= 0.029513,
    # eps >= log(0.970487 / 0.029513) = 3.4930 (computed by hand).
    assert bounds.epsilon_lower_bound(100, 100, 0, 100, delta=0.0, alpha=0.1) == pytest.approx(3.4930, abs=1e-3)
    assert bounds.perfect_attacker_bound(100, 0.0, 0.1) == pytest.approx(3.4930, abs=1e-3)
    # More samples certify more, but never infinity.
    assert 3.49 < bounds.perfect_attacker_bound(1000, 1e-5, 0.1) < 6.0


def test_random_scores_imply_about_zero():
    rng = np.random.default_rng(0)
    member = np.arange(4000) < 2000
    sel, ev = bounds.halves(member, seed=0)
    scores = rng.random(4000)
    b = bounds.split_bound(scores[sel], member[sel], scores[ev], member[ev], delta=1e-5, alpha=0.05)
    assert b.epsilon_lower_bound < 0.2
    # With empirical rates the best of 2000 thresholds would look like a real leak.
    t, tp, fp = bounds.threshold_counts(scores[sel], member[sel])
    empirical = bounds.epsilon_from_rates(tp / 1000, fp / 1000, 1e-5).max()
    assert empirical > 1.0


def test_halves_are_stratified_and_disjoint():
    member = np.arange(101) < 40
    a, b = bounds.halves(member, seed=3)
    assert len(np.intersect1d(a, b)) == 0 and len(a) + len(b) == 101
    assert member[a].sum() == 20 and member[b].sum() == 20


def _randomized_response(eps, n, rng):
    """Scores of an exactly eps-DP mechanism: report the membership bit w.p. e^eps / (1 + e^eps)."""
    p = math.exp(eps) / (1 + math.exp(eps))
    member = np.arange(2 * n) < n
    truthful = rng.random(2 * n) < p
    return np.where(truthful, member, ~member).astype(float), member


@pytest.mark.parametrize("eps", [0.25, 1.0, 2.0, 4.0])
def test_bound_never_exceeds_eps_of_randomized_response_and_is_tight(eps):
    # alpha = 1e-4 per trial: a sound bound then exceeds eps in any of these 10 trials with
    # probability < 0.1%, so an exceedance here means the bound is wrong, not unlucky.
    rng = np.random.default_rng(int(eps * 100))
    for _ in range(10):
        scores, member = _randomized_response(eps, 50000, rng)
        sel, ev = bounds.halves(member, seed=int(rng.integers(1 << 30)))
        b = bounds.split_bound(scores[sel], member[sel], scores[ev], member[ev], delta=0.0, alpha=1e-4)
        assert b.epsilon_lower_bound <= eps
        # 25,000 examples per side pin the optimal test's rates down: the bound is near eps.
        assert b.epsilon_lower_bound > 0.7 * eps


def test_bound_exceeds_eps_at_most_alpha_of_the_time():
    # Small samples, many repetitions: a sound 95% bound is above the truth in <= 5% of
    # them. Plugging in empirical rates instead exceeds it about half of the time.
    rng = np.random.default_rng(7)
    eps, trials = 1.0, 300
    over = empirical_over = 0
    for _ in range(trials):
        scores, member = _randomized_response(eps, 200, rng)
        sel, ev = bounds.halves(member, seed=int(rng.integers(1 << 30)))
        b = bounds.split_bound(scores[sel], member[sel], scores[ev], member[ev], delta=0.0, alpha=0.05)
        over += b.epsilon_lower_bound > eps
        empirical_over += bounds.epsilon_from_rates(b.tpr, b.fpr, 0.0) > eps
    assert over <= 0.05 * trials
    assert empirical_over > 0.25 * trials


def _gaussian_mechanism_epsilon(mu, delta):
    """Exact eps(delta) of a mu-Gaussian mechanism (Balle & Wang, "Improving the Gaussian
    mechanism for differential privacy: analytical calibration and optimal denoising")."""
    def excess(eps):
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta
    return optimize.brentq(excess, 0.0, 100.0)


def test_bound_respects_the_gaussian_mechanism():
    # Continuous scores: members ~ N(mu, 1), non-members ~ N(0, 1) is exactly the privacy
    # curve of the Gaussian mechanism with sensitivity/sigma = mu.
    mu, delta = 2.0, 1e-5
    true_eps = _gaussian_mechanism_epsilon(mu, delta)
    rng = np.random.default_rng(1)
    for seed in range(5):
        member = np.arange(20000) < 10000
        scores = rng.normal(size=20000) + mu * member
        sel, ev = bounds.halves(member, seed)
        b = bounds.split_bound(scores[sel], member[sel], scores[ev], member[ev], delta, alpha=0.05)
        assert 0.5 < b.epsilon_lower_bound <= true_eps


# ----------------------------------------------------------------------------- attacks
def _memorizing_model_logits():
    """A small MLP that memorizes 100 random points with random labels, and its logits on
    them (members) and on 100 fresh points (non-members)."""
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 20))
    y = rng.integers(0, 10, 200)
    net = MLPClassifier(hidden_layer_sizes=(128,), solver="lbfgs", max_iter=500, random_state=0).fit(x[:100], y[:100])
    assert list(net.classes_) == list(range(10))
    # Log-probabilities are logits (softmax is invariant to the per-row constant).
    return np.log(np.maximum(net.predict_proba(x), 1e-300)), y, np.arange(200) < 100


def test_attacks_detect_a_memorizing_model():
    logits, y, member = _memorizing_model_logits()
    result = audit.audit_logits(logits, y, member, delta=1e-5)
    loss = result["attacks"]["loss_threshold"]
    assert result["member_accuracy"] == 1.0 and result["nonmember_accuracy"] < 0.3
    assert loss["auc"] > 0.9 and loss["advantage"] > 0.6
    assert loss["mean_loss_members"] < loss["mean_loss_nonmembers"]
    assert result["attacks"]["trained_attacker"]["auc"] > 0.8
    assert 0 < result["implied_epsilon"] <= result["max_certifiable_epsilon"]


def test_attacks_on_identically_distributed_outputs_are_near_chance():
    rng = np.random.default_rng(2)
    logits, y = rng.normal(size=(2000, 10)) * 3, rng.integers(0, 10, 2000)
    result = audit.audit_logits(logits, y, np.arange(2000) < 1000, delta=1e-5)
    for a in result["attacks"].values():
        assert abs(a["auc"] - 0.5) < 0.05 and a["bound"]["epsilon_lower_bound"] < 0.5


def test_loss_is_exact_and_keeps_memorized_examples_apart():
    logits = np.array([[50.0, 0.0, 0.0], [60.0, 0.0, 0.0], [0.0, 1.0, 2.0]])
    labels = np.array([0, 0, 2])
    loss = mia.per_example_loss(logits, labels)
    naive = -mia.log_softmax(logits)[np.arange(3), labels]
    assert loss[2] == pytest.approx(naive[2])
    assert naive[0] == naive[1] == 0.0  # float64 rounds both losses to 0 ...
    assert 0 < loss[1] < loss[0] and loss[0] == pytest.approx(2 * math.exp(-50))  # ... these do not
    assert mia.features(logits, labels)[0, 0] > mia.features(logits, labels)[2, 0]


def test_features_are_finite_for_saturated_logits():
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]])
    x = mia.features(logits, np.array([2, 1]))
    assert np.isfinite(x).all() and x.shape == (2, len(mia.FEATURE_NAMES))


# ----------------------------------------------------------------------------- end to end
def _write_idx(path, array):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Raw MNIST-format files (120 train, 60 test images), an untrained LeNet export whose
    metadata records the data config and a (1.0, 1e-5)-DP claim, and an export without metadata."""
    from tfdprobust import export
    from tfdprobust.models import ModelConfig, build_model

    root = tmp_path_factory.mktemp("audit")
    data_dir = root / "data" / "mnist"
    data_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 120), ("t10k", 60)):
        # sparse strokes: the loader checks that "mnist" files look like MNIST (mean pixel ~0.13)
        _write_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz", (rng.random((n, 28, 28)) < 0.13) * 255)
        _write_idx(data_dir / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    data_config = {"dataset": "mnist", "public_dataset": "kmnist", "public_examples": 0,
                   "data_dir": str(root / "data"), "tfds_dir": None, "offline_test_fraction": 0.2,
                   "max_train": 50, "max_test": 0, "seed": 0}
    meta = {"dp": True, "epsilon": 1.0, "delta": 1e-5, "guarantee": "(1, 1e-05)-DP", "data_config": data_config}
    path = export.export_model(build_model(ModelConfig(name="lenet", norm="none")), str(root / "model"), meta)
    bare = root / "bare"  # an export without metadata (only its metadata is read before failing)
    bare.mkdir()
    (bare / "saved_model.pb").write_bytes(b"")
    return root, path, bare


def test_run_audit_writes_strict_json_roc_and_report(exported):
    root, path, _ = exported
    out = root / "report"
    payload = audit.run_audit([path, path], ["a", "a"], str(out), audit.AuditConfig(folds=3), log=lambda m: None)
    assert sorted(os.listdir(out)) == ["audit.json", "report.md", "roc.png"]
    text = (out / "audit.json").read_text()
    on_disk = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    a, b = on_disk["models"]
    assert (a["name"], b["name"]) == ("a", "a'")
    # --max_train keeps each of the 120 pool examples by its own hash under the ledger's secret
    # key (tfdprobust.roles): about 50 members, a different draw each run; the rest are the
    # unused training examples. They are the non-members when there are at least as many of them
    # as members, else the 60 test examples are (--nonmembers=auto); non-members about as many as
    # members. (Asserting the first case alone failed in CI whenever more than 60 were drawn.)
    members, others = a["num_members"], 120 - a["num_members"]
    assert abs(members - 50) <= 5 * (120 * 0.42 * 0.58) ** 0.5
    pool = others if others >= members else 60
    kind = "unused training examples" if others >= members else "held-out test examples"
    assert f"of {pool} {kind}" in a["nonmembers_source"]
    assert abs(a["num_nonmembers"] - min(members, pool)) <= 5 * min(members, pool) ** 0.5
    assert a["data_config_source"] == "recorded data_config" and a["claimed_epsilon"] == 1.0
    # Same model, same seeded examples: identical results.
    assert a["attacks"]["loss_threshold"]["auc"] == b["attacks"]["loss_threshold"]["auc"]
    assert payload["models"][0]["verdict"].startswith("consistent")
    assert "does NOT certify" in (out / "report.md").read_text()
    # An earlier audit's folder is ours to replace; nothing temporary is left behind.
    assert report.is_ours(str(out)) and not report.is_ours(str(root / "data"))
    report.write_outputs(payload, str(out))
    assert not [p for p in os.listdir(root) if p.startswith(".")]


def test_verdict_flags_a_violated_claim():
    assert audit.verdict(2.0, 1.0, 1e-5, 1e-5).startswith("VIOLATION")
    assert audit.verdict(0.5, 1.0, 1e-5, 1e-5).startswith("consistent")
    assert audit.verdict(0.5, 1.0, 1e-5, 1e-6).startswith("not comparable")
    assert audit.verdict(0.5, None, None, 1e-5).startswith("no DP claim")
    assert "could not refute" in audit.verdict(0.5, 8.0, 1e-5, 1e-5, certifiable=4.0)
    assert "could not refute" not in audit.verdict(0.5, 1.0, 1e-5, 1e-5, certifiable=4.0)


def test_strict_json_has_no_nan_or_infinity():
    cleaned = report.strict({"a": math.inf, "b": [math.nan, 1.0], "c": np.float64(2.0)})
    assert json.dumps(cleaned, allow_nan=False) == '{"a": null, "b": [null, 1.0], "c": 2.0}'


# ----------------------------------------------------------------------------- CLI
def _cli(*argv, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "tfdprobust.audit", *argv], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_help_lists_the_flags():
    proc = _cli("--helpshort")
    text = proc.stdout + proc.stderr
    for flag in ("--model", "--name", "--out", "--data_dir", "--dataset", "--delta", "--alpha", "--attacker",
                 "--nonmembers"):
        assert flag in text


@pytest.mark.parametrize("kwargs,needle", [
    (dict(model_paths=[]), "--model"),
    (dict(model_paths=["{bare}"]), "--data_dir"),
    (dict(model_paths=["{root}/missing"]), "--model"),
    (dict(model_paths=["{model}"], out_dir="{root}/data"), "--out"),
    (dict(model_paths=["{model}"], names=["a", "b"]), "--name"),
    (dict(model_paths=["{model}"], data_dir="{root}/nope"), "--data_dir"),
    (dict(model_paths=["{model}"], dataset="imagenet"), "--dataset"),
])
def test_bad_input_names_the_flag_and_writes_nothing(exported, kwargs, needle):
    root, path, bare = exported
    fmt = lambda v: v.format(root=root, model=path, bare=bare) if isinstance(v, str) else v
    kwargs = {k: [fmt(x) for x in v] if isinstance(v, list) else fmt(v) for k, v in kwargs.items()}
    kwargs.setdefault("out_dir", str(root / "lib-out"))
    with pytest.raises(UsageError, match=needle) as err:
        audit.run_audit(log=lambda m: None, **kwargs)
    assert "\n" not in str(err.value)
    assert not (root / "lib-out").exists()


@pytest.mark.parametrize("field,value", [("alpha", 2.0), ("attacker", "svm"), ("folds", 1), ("delta", 0.0),
                                         ("max_examples", 5), ("nonmembers", "val")])
def test_bad_audit_config_names_the_flag(field, value):
    with pytest.raises(UsageError, match=f"--{field}"):
        audit.AuditConfig(**{field: value})


def test_nonmembers_are_never_members(exported):
    from tfdprobust.data import DataConfig

    root, _, _ = exported
    cfg = DataConfig(dataset="mnist", data_dir=str(root / "data"), public_examples=0, max_train=50)
    quiet = lambda m: None
    # about 70 unused training images (the members are a secret-key draw of about 50 of 120)
    x, _, member, _, source = audit.membership_data(cfg, nonmembers="unused_train", log=quiet)
    assert "unused training examples" in source and abs(member.sum() - 50) <= 5 * (120 * 0.42 * 0.58) ** 0.5
    # auto takes them when they are at least as many as the members, else the test split
    auto = audit.membership_data(cfg, log=quiet)[4]
    others = 120 - int(member.sum())
    assert ("unused training examples" if others >= member.sum() else "held-out test examples") in auto
    flat = x.reshape(len(x), -1)
    assert not (flat[member][:, None, :] == flat[~member][None, :, :]).all(axis=2).any()
    x_test, _, member_test, _, source_test = audit.membership_data(cfg, nonmembers="test", log=quiet)
    assert "held-out test examples" in source_test and member_test.sum() == member.sum()
    np.testing.assert_array_equal(x_test[member_test], x[member])  # same members either way
    # A model trained on the whole pool leaves no unused examples: auto falls back to the test split.
    full = DataConfig(dataset="mnist", data_dir=str(root / "data"), public_examples=0)
    assert "held-out test" in audit.membership_data(full, log=quiet)[4]
    with pytest.raises(UsageError, match="--nonmembers=test"):
        audit.membership_data(full, nonmembers="unused_train", log=quiet)
    with pytest.raises(UsageError, match="trained on 40"):
        audit.membership_data(cfg, log=quiet, expected_members=40)


def test_recorded_data_dir_that_moved_asks_for_data_dir(exported):
    _, path, _ = exported
    meta = {"data_config": {"dataset": "mnist", "data_dir": "relative/elsewhere"}}
    with pytest.raises(UsageError, match="pass --data_dir"):
        audit.resolve_data_config(meta, path)


@pytest.mark.parametrize("argv,needle", [
    ([], "--model"),
    (["--model={model}"], "--out"),
    (["--model={bare}", "--out={out}"], "--data_dir"),
    (["--model={model}", "--out={out}", "--alpha=2"], "--alpha"),
])
def test_cli_bad_input_is_one_line_exit_2(exported, argv, needle):
    root, path, bare = exported
    out = root / "cli-out"
    proc = _cli(*[a.format(model=path, bare=bare, out=out) for a in argv])
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_cli_end_to_end(exported, tmp_path):
    _, path, _ = exported
    proc = _cli(f"--model={path}", "--name=dp", f"--out={tmp_path}/r", "--folds=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for needle in ("loss threshold", "trained attacker", "AUC", "implied eps", "dp: consistent", "does NOT certify"):
        assert needle in proc.stdout, proc.stdout


@pytest.mark.slow
def test_training_records_the_members_the_audit_uses(exported, tmp_path):
    # runs.run stores its DataConfig; the audit rebuilds exactly that training split.
    from tfdprobust import data, run_config, runs
    from tfdprobust.data import DataConfig
    from tfdprobust.models import ModelConfig
    from tfdprobust.train_step import DPConfig, TrainConfig

    root, _, _ = exported
    data_cfg = DataConfig(dataset="mnist", data_dir=str(root / "data"), public_examples=0, max_train=40, seed=3)
    cfg = run_config.RunConfig.make(
        train=TrainConfig(learning_rate=0.1, dp=DPConfig(enabled=False), attack=None), batch_size=20,
        data=data_cfg, model=ModelConfig(name="lenet", norm="none"), epochs=2, eval_attack=None,
        export_dir=str(tmp_path), run_name="m", verbose=0)
    result = runs.run(cfg, log=lambda m: None)
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    rebuilt, how = audit.resolve_data_config(meta, result["export_path"])
    assert rebuilt == data_cfg and how == "recorded data_config"
    x, y, member, _, _ = audit.membership_data(rebuilt, log=lambda m: None)
    train = data.load_experiment_data(data_cfg, log=lambda m: None).train
    np.testing.assert_array_equal(x[member], train.x)
    payload = audit.run_audit([result["export_path"]], ["m"], None, audit.AuditConfig(folds=3), log=lambda m: None)
    assert payload["models"][0]["verdict"].startswith("no DP claim")
