"""The one robust-accuracy function: per-example minimum over attacks and eps, accuracy
after each attack, a correct 95% interval, and agreement with ART's AutoAttack."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import binomtest

from test_attacks import model_fn_of, trained_mnist_model
from tfdprobust import attacks, ensemble
from tfdprobust.errors import UsageError

TINY = ensemble.Preset("tiny", (ensemble.EnsembleAttack("apgd-ce", steps=20),
                                ensemble.EnsembleAttack("apgd-t", steps=20, targets=2)), "test")


@pytest.fixture(scope="module")
def trained():
    model, x, y = trained_mnist_model()
    return model_fn_of(model), x[:200], y[:200]


@pytest.fixture(scope="module")
def tiny_result(trained):
    fn, x, y = trained
    return ensemble.robust_accuracy(fn, x, y, TINY, "linf", (0.1, 0.0, 0.05), seed=0)


def test_per_example_minimum_over_attacks_and_eps(trained, tiny_result):
    fn, x, y = trained
    r = tiny_result
    assert [e.eps for e in r.results] == [0.0, 0.05, 0.1]  # sorted
    clean = np.argmax(fn(tf.constant(x)).numpy(), 1) == y
    np.testing.assert_array_equal(r.at(0.0).correct, clean)
    assert r.clean_accuracy == pytest.approx(clean.mean())
    # A point broken at a smaller eps stays broken: its adversarial example is in the larger ball.
    assert not np.any(r.at(0.1).correct & ~r.at(0.05).correct)
    assert not np.any(r.at(0.05).correct & ~clean)
    for e in r.results:
        accs = [a for _, a in e.after_each]
        assert accs == sorted(accs, reverse=True)  # each attack only removes points
        assert accs[-1] == pytest.approx(e.accuracy)
    names = [a for a, _ in r.at(0.1).after_each]
    assert names == ["clean", "eps 0.05", "apgd-ce", "apgd-t(2)"]


def test_robust_accuracy_is_below_independent_pgd(trained, tiny_result):
    # CleverHans PGD (a different implementation) must not find more adversarial points
    # than the ensemble at the same eps, up to one example.
    fn, x, y = trained
    tf.random.set_seed(0)
    pgd = attacks.correct_under_attack(fn, x, y, attacks.AttackConfig("pgd_linf", eps=0.1, steps=40))
    assert tiny_result.accuracy(0.1) <= pgd.mean() + 1 / len(y)
    assert tiny_result.accuracy(0.1) < tiny_result.clean_accuracy - 0.2  # the attack bites


def test_confidence_interval_matches_scipy_exact_binomial(tiny_result):
    for e in tiny_result.results:
        k, n = int(e.correct.sum()), len(e.correct)
        ref = binomtest(k, n).proportion_ci(0.95, method="exact")
        assert e.ci95 == pytest.approx((ref.low, ref.high), abs=1e-9)
        assert e.ci95[0] <= e.accuracy <= e.ci95[1]
    assert ensemble.clopper_pearson(0, 10)[0] == 0.0 and ensemble.clopper_pearson(10, 10)[1] == 1.0


def test_fold_takes_the_minimum_at_that_eps_and_above(tiny_result):
    r = tiny_result
    broken = np.zeros(len(r.at(0.05).correct), bool)  # an attack that breaks everything
    f = r.fold(0.05, "spsa", broken)
    assert f.accuracy(0.0) == r.accuracy(0.0)
    assert f.accuracy(0.05) == 0.0 and f.accuracy(0.1) == 0.0
    assert f.at(0.1).after_each[-1] == ("spsa", 0.0)


def test_dict_and_summary(tiny_result):
    d = tiny_result.to_dict()
    assert d["eps"] == [0.0, 0.05, 0.1] and len(d["ci95"]) == 3 and d["preset"] == "tiny"
    assert "linf eps=0.1:" in tiny_result.summary()


@pytest.mark.parametrize("kwargs,message", [
    (dict(norm="l1"), "norm must be one of"),
    (dict(eps=(1.5,)), r"l_inf eps must be in \[0, 1\]"),
    (dict(preset="strongest"), "unknown preset 'strongest'; choose one of: quick, standard"),
])
def test_bad_arguments(trained, kwargs, message):
    fn, x, y = trained
    with pytest.raises(UsageError, match=message):
        ensemble.robust_accuracy(fn, x[:4], y[:4], **{"preset": TINY, **kwargs})


def test_presets_are_the_documented_ensembles():
    q, s = ensemble.PRESETS.get("quick"), ensemble.PRESETS.get("standard")
    assert [a.label for a in q.attacks] == ["apgd-ce", "apgd-t(3)"]
    assert [a.label for a in s.attacks] == ["apgd-ce", "apgd-t(9)", "fab-t(9)", "square"]
    assert s.attacks[3].queries == 5000 and all(a.steps == 100 for a in s.attacks[:3])


def _art_autoattack(fn, x, y, norm, eps, queries):
    from tfdprobust.ensemble import import_art

    import_art()
    from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack

    clf = ensemble.art_classifier(fn, x.shape[1:], 10)
    order = np.inf if norm == "linf" else 2
    kw = dict(norm=order, eps=eps, eps_step=2 * eps, max_iter=100, targeted=False, nb_random_init=1,
              batch_size=500, verbose=False)
    members = [AutoProjectedGradientDescent(clf, loss_type="cross_entropy", **kw),
               AutoProjectedGradientDescent(clf, loss_type="difference_logits_ratio", **kw),
               SquareAttack(clf, norm=order, max_iter=queries, eps=eps, nb_restarts=1, verbose=False)]
    np.random.seed(0)
    adv = AutoAttack(clf, norm=order, eps=eps, eps_step=2 * eps, attacks=members).generate(x, y=np.eye(10)[y])
    return np.argmax(fn(tf.constant(adv)).numpy(), 1) == y


@pytest.mark.slow  # ART's TF2 DLR loss loops over the batch in Python: minutes on 2 cores
def test_quick_preset_not_above_art_autoattack_apgd(trained):
    """ART's AutoAttack restricted to its two APGD attacks (the quick preset's territory),
    on the same 100 images: ours is never more than 1 point higher."""
    fn, x, y = trained
    x, y = x[:100], y[:100]
    ours = ensemble.robust_accuracy(fn, x, y, "quick", "linf", (0.1,)).accuracy(0.1)
    ref = _art_autoattack(fn, x, y, "linf", 0.1, queries=1).mean()
    assert ours <= ref + 0.01, (ours, ref)
    assert ref < 0.7  # the reference is a real attack here


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("linf", 0.2), ("l2", 1.0), ("l2", 2.0)])
def test_standard_preset_not_above_art_autoattack(trained, norm, eps):
    fn, x, y = trained
    ours = ensemble.robust_accuracy(fn, x, y, "standard", norm, (eps,)).accuracy(eps)
    ref = _art_autoattack(fn, x, y, norm, eps, queries=5000).mean()
    assert ours <= ref + 0.01, (ours, ref)
