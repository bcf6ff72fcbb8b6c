"""The search's privacy: ledger, composition against dp_accounting directly, noisy counts, strict JSON."""

import dp_accounting
import numpy as np
import pytest

from tfdprobust.errors import UsageError
from tfdprobust.tuning import privacy, reports
from tune_util import direct_epsilon, poisson_trial, strict_load


def _training(sampling="poisson", n=600, b=100, steps=6, sigma=1.0, search="a", insecure=False):
    return {"kind": privacy.DP_TRAINING, "sampling": sampling, "num_examples": n, "batch_size": b, "steps": steps,
            "noise_multiplier": sigma, "search": search, "insecure": insecure}


def test_fingerprint_is_of_the_data_set_not_its_order():
    rng = np.random.default_rng(0)
    x, y = rng.random((50, 4, 4, 1), dtype=np.float32), rng.integers(0, 10, 50)
    order = rng.permutation(50)
    fp = privacy.fingerprint((x, y))
    assert fp == privacy.fingerprint((x[order], y[order]))
    assert fp == privacy.fingerprint((x[:20], y[:20]), (x[20:], y[20:]))  # a split is the same data set
    y2 = y.copy()
    y2[3] = (y2[3] + 1) % 10
    assert fp != privacy.fingerprint((x, y2))  # one changed example: another data set


def test_guarantee_equals_direct_composition_of_every_entry(tmp_path):
    ledger = privacy.Ledger(str(tmp_path), "abc")
    # Two searches on the same data, one interrupted training (no validation line after it).
    for search, trials in (("first", 3), ("second", 2)):
        for _ in range(trials):
            ledger.append(_training(search=search))
            ledger.append(privacy.validation_entry(2, 10.0, search=search))
    ledger.append(_training(search="second"))  # killed before validating
    ledger.append({"kind": privacy.NONDP, "search": "second"})
    g = privacy.search_guarantee(ledger.entries(), 1e-4, "rdp")
    events = [poisson_trial(600, 100, 1.0)] * 6 + [dp_accounting.GaussianDpEvent(10.0)] * 10
    assert g["dp_trainings"] == 6 and g["validation_releases"] == 10 and g["nondp_references"] == 1
    assert g["epsilon"] == pytest.approx(direct_epsilon(events, 1e-4), rel=1e-9)
    # The validation releases cost something, and so does every training.
    assert g["epsilon"] > direct_epsilon(events[:6], 1e-4) > direct_epsilon(events[:5], 1e-4)
    assert "(%.4g, 0.0001)-DP" % g["epsilon"] in g["statement"]


def test_folder_guarantee_composes_every_ledger_and_the_extra_releases(tmp_path):
    """Two ledgers in one folder, a retired one (not counted) and two retrained models:
    the folder's epsilon is their direct composition in dp_accounting."""
    for fp, trials in (("abc", 2), ("def", 1)):
        ledger = privacy.Ledger(str(tmp_path), fp)
        for _ in range(trials):
            ledger.append(_training())
            ledger.append(privacy.validation_entry(2, 10.0))
    privacy.Ledger(str(tmp_path), "old").append(_training())
    privacy.Ledger(str(tmp_path), "old").retire()
    extra = [poisson_trial(600, 100, 0.8)] * 2
    g = privacy.folder_guarantee(str(tmp_path), extra, 1e-4, "rdp", "and 2 retrained models")
    events = [poisson_trial(600, 100, 1.0)] * 3 + [dp_accounting.GaussianDpEvent(10.0)] * 6 + extra
    assert (g["search_trainings"], g["validation_releases"], g["extra_releases"]) == (3, 6, 2)
    assert g["epsilon"] == pytest.approx(direct_epsilon(events, 1e-4), rel=1e-9)
    assert "(%.4g, 0.0001)-DP" % g["epsilon"] in g["statement"] and "and 2 retrained models composed" in g["statement"]
    assert privacy.folder_guarantee(str(tmp_path / "empty"), [], 1e-4) == {}


def test_shuffle_ledger_uses_replace_one_and_mixing_is_refused():
    entries = [_training("shuffle", steps=12), privacy.validation_entry(1, 5.0)]
    g = privacy.search_guarantee(entries, 1e-4, "rdp")
    replace = dp_accounting.NeighboringRelation.REPLACE_ONE
    events = [dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(0.5), 2),
              dp_accounting.GaussianDpEvent(5.0)]
    assert g["adjacency"] == "replace-one"
    assert g["epsilon"] == pytest.approx(direct_epsilon(events, 1e-4, replace), rel=1e-9)
    with pytest.raises(UsageError, match="--sampling: the ledger of this private data set holds trainings with "
                                         "poisson and shuffle"):
        privacy.search_guarantee(entries + [_training("poisson")], 1e-4, "rdp")


def test_insecure_execution_voids_the_guarantee():
    g = privacy.search_guarantee([_training(), _training(insecure=True)], 1e-4, "rdp")
    assert g["epsilon"] is None and g["statement"].startswith("NOT PRIVATE")


def test_ledger_retire_starts_fresh_and_keeps_the_old_file(tmp_path):
    ledger = privacy.Ledger(str(tmp_path), "abc")
    ledger.append(_training())
    old = ledger.retire()
    assert ledger.entries() == [] and len(privacy.Ledger(str(tmp_path), "abc").entries()) == 0
    with open(old) as f:
        assert len(f.readlines()) == 1


def test_noisy_count_is_gaussian_and_secret():
    draws = np.array([privacy.noisy_count(40, 10.0) for _ in range(4000)])
    assert abs(draws.mean() - 40) < 0.6 and abs(draws.std() - 10) < 0.4  # ~4 standard errors
    assert len(set(draws)) == len(draws)
    # Replayable only with an explicit (insecure) seed.
    assert privacy.noisy_count(40, 10.0, [1, 2]) == privacy.noisy_count(40, 10.0, [1, 2])
    assert privacy.release_accuracy(-3.0, 100) == 0.0 and privacy.release_accuracy(104.0, 100) == 1.0


def test_strict_json_writes_null_and_a_note(tmp_path):
    path = str(tmp_path / "x.json")
    reports.write_json_strict(path, {"a": float("inf"), "b": [1.0, float("nan")], "c": 2.5})
    data = strict_load(path)
    assert data["a"] is None and data["b"] == [1.0, None] and data["c"] == 2.5
    assert len(data["json_notes"]) == 2 and "a was inf" in data["json_notes"][0]
