"""A whole (tiny) search: one guarantee over the published table, composition against
dp_accounting directly, strict JSON, metadata without training-batch statistics, rerun."""

import json
import os

import dp_accounting
import pytest

from tfdprobust.tuning import NATURAL, ROBUST, privacy, run_search
from tune_util import direct_epsilon, poisson_trial, strict_load, tiny_config

# One whole search (about a minute) shared by every test here: CI's integration tier.
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A finished 1x2 grid search (noisy-count validation), one non-DP reference, one export."""
    cfg = tiny_config(tmp_path_factory.mktemp("tune"), clip_grid=(1.0,), lr_grid=(0.5, 2.0),
                      nondp_reference=True, nondp_lr_grid=(0.5,), export_best=1, run_kw=dict(eval_examples=30))
    lines = []
    out = run_search(cfg, log=lines.append)
    return cfg, out, lines


def test_one_guarantee_covers_the_table_and_names_the_validation_mechanism(search):
    cfg, out, lines = search
    text = "\n".join(lines)
    assert sum(line.startswith("GUARANTEE") for line in text.splitlines()) == 1
    assert "validation          : noisy_count" in text and "Gaussian noise of std 10" in text
    assert [r["dp"] for r in out["trials"]] == [True, True]  # no non-DP row in the DP table
    with open(out["table_md"]) as f:
        table = f.read()
    assert out["guarantee"]["statement"] in table and "noisy_count" in table and "nondp" not in table
    with open(out["references_md"]) as f:
        refs = f.read()
    assert refs.startswith("NOT covered by epsilon: non-private references trained on the private data")
    assert "NOT covered by epsilon" in text.split("GUARANTEE")[1]  # its own block, after the guarantee


def test_epsilon_equals_independent_composition_of_trials_and_validation_releases(search):
    cfg, out, _ = search
    g = out["guarantee"]
    with open(out["ledger"]) as f:  # the data set's ledger in the (test's) user-level store
        trainings = [e for e in map(json.loads, f) if e["kind"] == "dp_training"]
    n = out["num_train_examples"]  # about 600: per-example roles (tfdprobust.roles)
    assert abs(n - 600) <= 5 * 600 ** 0.5 and [e["num_examples"] for e in trainings] == [n, n]
    b, sigma, delta, s = 100, 1.0, 1e-4, 10.0
    events = [poisson_trial(n, b, sigma)] * 2 + [dp_accounting.GaussianDpEvent(s)] * 4  # natural + robust x 2
    assert (g["dp_trainings"], g["validation_releases"], g["nondp_references"]) == (2, 4, 1)
    assert g["epsilon"] == pytest.approx(direct_epsilon(events, delta), rel=1e-9)
    assert g["epsilon"] > direct_epsilon(events[:2], delta)  # the validation releases are paid for
    assert out["per_training_epsilon"] == pytest.approx(direct_epsilon(events[:1], delta), rel=1e-9)
    assert out["private_selection"]["applies_to_this_run"] is False


def _keys(value, prefix=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield f"{prefix}{k}"
            yield from _keys(v, f"{prefix}{k}.")
    elif isinstance(value, list):
        for v in value:
            yield from _keys(v, prefix)


def test_exported_metadata_holds_no_training_batch_statistic(search):
    cfg, out, _ = search
    (path,) = out["exported"]
    meta = strict_load(os.path.join(path, "metadata.json"))
    assert meta == {k: v for k, v in strict_load(path + ".json").items() if k not in ("export_path", "results_path")}
    keys = list(_keys(meta))
    for key in keys:
        leaf = key.rsplit(".", 1)[-1]
        assert not any(word in leaf for word in ("loss", "history", "per_epoch", "batch_acc", "train_acc")), key
        if "accuracy" in leaf:  # test-set figures, and the released (noised) validation figures
            # the ensembles' steps and grids, on test images
            test_set = key.startswith(("robust_after_each.", "robust_standard."))
            assert test_set or leaf in ("clean_accuracy", "robust_accuracy", "released_" + NATURAL,
                                        "released_" + ROBUST), key
    assert meta["epsilon"] == out["guarantee"]["epsilon"] and meta["guarantee"] == out["guarantee"]["statement"]
    best = {r["trial_id"]: r for r in out["trials"]}[meta["search"]["trial_id"]]
    assert meta["search"]["released_" + ROBUST] == best[ROBUST]
    # Released validation figures come from noisy counts: not k / 100 for an integer k.
    for r in out["trials"]:
        assert r["val_robust_noisy_count"] % 1 != 0 and r["val_natural_noisy_count"] % 1 != 0


def test_every_json_file_is_strict(search):
    cfg, _, _ = search
    found = 0
    for folder, _, files in os.walk(cfg.tuning_dir):
        for name in files:
            if name.endswith(".json"):
                strict_load(os.path.join(folder, name))
                found += 1
    ledger = [p for p in os.listdir(os.path.join(cfg.tuning_dir, privacy.LEDGER_DIR))]
    with open(os.path.join(cfg.tuning_dir, privacy.LEDGER_DIR, ledger[0])) as f:
        for line in f:
            json.loads(line, parse_constant=lambda t: (_ for _ in ()).throw(ValueError(t)))
    assert found >= 6


def test_no_covered_table_or_json_holds_a_wall_time(search):
    """A training's wall time reflects the secret realised batch sizes: it lives only in
    files whose name says NOT_COVERED_BY_EPSILON (one per trial), never in the covered
    tables or JSON of the trials. (An exported winner's test-set evaluation may time its
    attacks: a function of the released model and public images.)"""
    cfg, out, _ = search
    timing, covered = 0, 0
    for folder, _, files in os.walk(cfg.tuning_dir):
        for name in files:
            path = os.path.join(folder, name)
            if "NOT_COVERED_BY_EPSILON" in name:
                timing += "seconds" in strict_load(path)
            elif name in ("results.csv", "results.md", "references.csv", "references.md", "result.json") or (
                    name.endswith(".json") and os.path.basename(folder) == "reference"):
                covered += 1
                with open(path) as f:
                    assert "seconds" not in f.read(), path
    assert timing >= 3 and covered >= 3  # the walk found both kinds
    for row in out["trials"]:
        assert "seconds" not in row


def test_hparams_logs_carry_the_released_figures(search):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    cfg, out, _ = search
    logdir = out["tensorboard_logdir"]
    assert sorted(os.listdir(logdir)) == sorted(["trial_0000", "trial_0001"] +
                                                [n for n in os.listdir(logdir) if n.startswith("events")])
    for row in out["trials"]:
        acc = event_accumulator.EventAccumulator(os.path.join(logdir, f"trial_{row['trial_id']}"),
                                                 size_guidance={event_accumulator.TENSORS: 0})
        acc.Reload()
        for tag in (NATURAL, ROBUST):
            assert float(tensor_util.make_ndarray(acc.Tensors(tag)[0].tensor_proto)) == pytest.approx(row[tag])


def test_rerunning_a_finished_search_reports_and_trains_nothing(search):
    cfg, out, _ = search
    before = len(privacy.Ledger(cfg.tuning_dir, "x").entries())  # (other fingerprint: empty)
    ledger_files = os.listdir(os.path.join(cfg.tuning_dir, privacy.LEDGER_DIR))
    sizes = [os.path.getsize(os.path.join(cfg.tuning_dir, privacy.LEDGER_DIR, f)) for f in ledger_files]
    lines = []
    again = run_search(cfg, log=lines.append)
    assert not [line for line in lines if line.startswith("trial ") and "R=" in line]
    assert any("already exported" in line for line in lines)
    assert again["guarantee"]["epsilon"] == out["guarantee"]["epsilon"]
    assert [r[ROBUST] for r in again["trials"]] == [r[ROBUST] for r in out["trials"]]
    assert before == 0 and sizes == [os.path.getsize(os.path.join(cfg.tuning_dir, privacy.LEDGER_DIR, f))
                                     for f in ledger_files]



def test_exported_winner_gets_the_standard_preset_and_the_masking_checks(search):
    """Selection used the quick preset; the winner is re-evaluated with the standard one
    (AutoAttack's order) and every gradient-masking check, and the summary shows both."""
    from tfdprobust import attacks, sanity
    from tfdprobust.evaluate.models import load_model
    from tfdprobust.tuning.trial import load_search_data

    cfg, out, lines = search
    (path,) = out["exported"]
    meta = strict_load(path + ".json")
    steps, restarts = cfg.run.eval_attack.steps, cfg.run.eval_attack.restarts
    assert meta["robust_preset"] == f"standard(steps={steps},restarts={restarts})"  # --eval_steps reaches it
    assert meta["robust_examples"] == 30
    names = [s["attack"] for s in meta["robust_after_each"]]
    assert names[:6] == ["clean", "eps 0", "apgd-ce", "apgd-t(9)", "fab-t(9)", "square"]
    assert [c["name"] for c in meta["sanity_checks"]] == list(sanity.CHECK_NAMES)
    assert meta["sanity_passed"] == all(c["status"] != "fail" for c in meta["sanity_checks"])
    assert meta["robust_standard"]["linf"]["eps"] == [0.0, 0.1]
    assert meta["robust_standard"]["l2"]["eps"] == [0.0, 1.0, 2.0]  # the checks' l2 grid
    lo, hi = meta["robust_ci95"]
    assert lo <= meta["robust_accuracy"] <= hi
    text = "\n".join(lines)
    assert "test robust acc   : " in text and f"standard(steps={steps},restarts={restarts}) ensemble: clean" in text
    assert "masking checks    : " in text
    # Independent check on the exported SavedModel and the same 30 test images: the
    # standard number is no higher than CleverHans PGD-40's, up to one image.
    sd = load_search_data(cfg, log=lambda m: None)
    x, y = sd.test.x[:30], sd.test.y[:30]
    model = load_model(path, "winner")
    pgd = attacks.correct_under_attack(model.model_fn, x, y, attacks.AttackConfig("pgd_linf", eps=0.1, steps=40))
    assert meta["robust_accuracy"] <= pgd.mean() + 1 / 30
