"""Slow-tier miniatures: public pre-training + DP fine-tuning through the training CLI, and
the epsilon x robustness table runner end to end (with resume) on the offline MNIST data."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(argv, cwd, timeout=1500):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _export_weights(path):
    import tensorflow as tf

    from tfdprobust import pretrain

    net = tf.keras.models.load_model(path, compile=False)
    return {name: [w.numpy() for w in layer.weights] for name, layer in pretrain.stable_names(net).items()}


@pytest.mark.slow
def test_pretrain_then_dp_finetune_cli(shared_data, tmp_path):
    base = ["tfdprobust.experiments.mnist", f"--data_dir={shared_data}", "--max_train=400", "--max_test=200",
            "--batch_size=100", "--attack=none", "--eps=0", "--verbose=0", "--norm=group",
            f"--export_dir={tmp_path}", "--checkpoint_every=0"]
    # 1. public pre-training on scikit-learn's digits, DP fine-tuning of the last layer
    out = _run([*base, "--public_pretrain=digits", "--pretrain_epochs=2", "--freeze=all_but_last:1",
                "--run_name=pre"], tmp_path)
    assert "public pre-training (outside the DP accounting: it touched no private data)" in out
    with open(tmp_path / "pre.json") as f:
        result = json.load(f)
    record = result["public_pretraining"]
    assert record["source"] == "digits" and record["epochs"] == 2 and record["trainable"] == ["dense_1"]
    assert "scikit-learn" in record["data"] and "public pre-training" in result["guarantee"]
    with open(tmp_path / "pre" / "metadata.json") as f:
        meta = json.load(f)
    assert meta["guarantee"] == result["guarantee"] and meta["public_pretraining"]["source"] == "digits"
    # 2. weights from that export, every layer but the classifier frozen: the exported
    # model's frozen layers are the file's, bit for bit, and the classifier moved under DP
    out = _run([*base, f"--pretrained_weights={tmp_path / 'pre'}", "--freeze=all_but_last:1", "--run_name=ft"],
               tmp_path)
    assert "started from the weights" in out
    start, end = _export_weights(str(tmp_path / "pre")), _export_weights(str(tmp_path / "ft"))
    for name in record["frozen"]:
        for a, b in zip(start[name], end[name]):
            assert np.array_equal(a, b), name
    assert not np.array_equal(start["dense_1"][0], end["dense_1"][0])


@pytest.mark.slow
@pytest.mark.timeout(3600)  # four cells, each a training and a standard-ensemble evaluation CLI run
def test_eps_table_miniature_runs_end_to_end_and_resumes(shared_data, tmp_path):
    out = tmp_path / "table"
    common = ["tfdprobust.experiments.eps_table", "--dataset=mnist", f"--data_dir={shared_data}", f"--out={out}",
              "--epsilons=8", "--max_train=1000", "--max_test=200", "--epochs=3", "--batch_size=100",
              "--learning_rate=2",
              "--eval_examples=40", "--check_examples=5", "--square_queries=50", "--pretrain_epochs=1",
              "--train_attack_steps=2", "--pretrain_source=kmnist"]
    # Trained enough to beat chance clearly: tfdprobust.evaluate refuses a model whose accuracy
    # is higher on [0, 255] inputs (its input-range check), which a chance-level one can be.
    _run([*common, "--methods=dpsgd,dpsgd_pgd,pretrain_finetune", "--seeds=0", "--nonodp_reference"], tmp_path)
    cells = {name[:-5] for name in os.listdir(out / "cells")}
    assert cells == {"dpsgd_eps8_s0", "dpsgd_pgd_eps8_s0", "pretrain_finetune_eps8_s0"}
    first = (out / "cells" / "dpsgd_eps8_s0.json").stat().st_mtime_ns
    # resume: the done cell is skipped, the non-DP reference runs
    log = _run([*common, "--methods=dpsgd", "--seeds=0", "--nodp_reference", "--nodp_epochs=5"], tmp_path)
    assert "dpsgd_eps8_s0: done before, skipped" in log
    assert (out / "cells" / "dpsgd_eps8_s0.json").stat().st_mtime_ns == first
    assert {n[:-5] for n in os.listdir(out / "cells")} == cells | {"dpsgd_nodp_s0"}
    with open(out / "cells" / "dpsgd_nodp_s0.json") as f:
        assert "--nodp --optimizer=adam --learning_rate=0.001 --batch_size=250 --epochs=5" in json.load(f)["train_command"]
    with open(out / "cells" / "pretrain_finetune_eps8_s0.json") as f:
        cell = json.load(f)
    assert "--public_pretrain=kmnist" in cell["train_command"] and "--preset=standard" in cell["eval_command"]
    assert "public pre-training" in cell["guarantee"] and cell["public_pretraining"]["source"] == "kmnist"
    assert abs(cell["epsilon"] - 8) < 0.01 and 0 <= cell["robust_linf"] <= cell["eval_clean_accuracy"]
    assert {c["name"] for c in cell["masking_checks"]} >= {"black_box", "eps0_clean"}
    table = (out / "table.md").read_text()
    assert "| DP-SGD | 8 | 8.00 | 1 |" in table and "| DP-SGD | non-DP | n/a | 1 |" in table
    assert cell["train_command"] in table
    assert (out / "accuracy_vs_epsilon.png").stat().st_size > 1000
    with open(out / "results.json") as f:
        rows = json.load(f)["rows"]
    dpsgd = next(r for r in rows if r["method"] == "dpsgd" and r["target_epsilon"] == 8)
    with open(out / "cells" / "dpsgd_eps8_s0.json") as f:
        assert dpsgd["clean_accuracy"]["mean"] == json.load(f)["clean_accuracy"]
    assert not any(name.startswith(".") for name in os.listdir(out))  # atomic writes left no temporaries


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the attacks through the scattering dominate: about 20 min on one shared core
def test_the_scatternet_method_runs_its_recipe_at_each_epsilon(shared_data, tmp_path):
    out = tmp_path / "table"
    # 10 attacked images, not fewer: evaluate's input-range check compares accuracies on them
    _run(["tfdprobust.experiments.eps_table", "--dataset=mnist", f"--data_dir={shared_data}", f"--out={out}",
          "--methods=scatternet", "--epsilons=8", "--seeds=0", "--nonodp_reference", "--max_train=600",
          "--max_test=200", "--eval_examples=10", "--check_examples=2", "--square_queries=10", "--batch_size=200",
          "--epochs=3"], tmp_path, timeout=3500)
    with open(out / "cells" / "scatternet_eps8_s0.json") as f:
        cell = json.load(f)
    command = cell["train_command"]
    # the recipe's own learning rate and C (the table's defaults are not passed); the target
    # epsilon, and the batch size and epochs given on the command line, override the recipe's
    assert "--recipe=scatternet_fmnist_eps3" in command and "--target_epsilon=8" in command
    assert "--batch_size=200" in command and "--epochs=3" in command
    assert "--learning_rate" not in command and "--l2_clip" not in command
    assert abs(cell["epsilon"] - 8) < 0.01 and 0 <= cell["robust_linf"] <= cell["eval_clean_accuracy"]
    table = (out / "table.md").read_text()
    assert "| ScatterNet + CNN (recipe scatternet_fmnist_eps3) | 8 | 8.00 | 1 |" in table


def _cell(method, eps, seed, clean, linf, checks=("pass",)):
    return {"key": f"{method}_{eps}_{seed}", "method": method, "target_epsilon": eps, "seed": seed,
            "clean_accuracy": clean, "robust_linf": linf, "robust_l2": linf / 2, "epsilon": eps,
            "train_wall_seconds": 10.0, "eval_wall_seconds": 5.0, "robust_linf_ci95": [linf - 0.1, linf + 0.1],
            "masking_checks": [{"name": "black_box", "status": s} for s in checks],
            "num_train_examples": 100, "num_test_examples": 50, "eval_examples": 20}


_COMMANDS = """
import sys
from tfdprobust.experiments import eps_table as e
e.define_flags()
e.FLAGS(["eps_table", *sys.argv[1:]])
for method in ("dpsgd_pgd", "scatternet"):
    for eps in (3.0, None):
        print(" ".join(e.train_command(e.METHODS[method], eps, 0, "D", "M", "R")[1:]))
"""


def _train_commands(*flags):
    proc = subprocess.run([sys.executable, "-c", _COMMANDS, *flags], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    for line in proc.stdout.splitlines():  # each flag once: a recorded command reads unambiguously
        names = [a.split("=", 1)[0] for a in line.split()[2:]]
        assert len(names) == len(set(names)), line
    return [dict(a[2:].split("=", 1) if "=" in a else (a[2:], "") for a in line.split()[2:])
            for line in proc.stdout.splitlines()]


@pytest.mark.timeout(180)
def test_non_dp_references_train_with_their_own_optimizer_rate_and_batch():
    """A DP cell keeps the table's (or the recipe's) optimizer settings; a non-DP one gets the
    --nodp_* ones instead (each flag once), recipes' included."""
    pgd, pgd_nodp, scat, scat_nodp = _train_commands("--batch_size=1000", "--learning_rate=4",
                                                      "--nodp_learning_rate=0.002", "--nodp_batch_size=128")
    assert (pgd["batch_size"], pgd["learning_rate"], pgd.get("optimizer")) == ("1000", "4", None)
    assert "nodp" not in pgd and pgd["target_epsilon"] == "3"
    assert (pgd_nodp["optimizer"], pgd_nodp["learning_rate"], pgd_nodp["batch_size"]) == ("adam", "0.002", "128")
    assert "nodp" in pgd_nodp and "target_epsilon" not in pgd_nodp
    # the recipe keeps its optimizer; a table flag given on the command line overrides its value
    assert scat["recipe"] == "scatternet_fmnist_eps3" and "optimizer" not in scat and scat["batch_size"] == "1000"
    assert (scat_nodp["optimizer"], scat_nodp["learning_rate"], scat_nodp["batch_size"]) == ("adam", "0.002", "128")


def test_table_rows_are_mean_sd_over_seeds_with_a_t_interval():
    from tfdprobust.experiments import eps_report

    cells = [_cell("dpsgd_pgd", 3.0, s, c, r) for s, (c, r) in enumerate([(0.7, 0.1), (0.8, 0.2), (0.9, 0.3)])]
    cells += [_cell("dpsgd", None, 0, 0.95, 0.0, checks=("fail",)), _cell("dpsgd", 3.0, 0, 0.6, 0.0)]
    rows = eps_report.summarize(cells)
    assert [(r["method"], r["target_epsilon"]) for r in rows] == [("dpsgd", 3.0), ("dpsgd", None), ("dpsgd_pgd", 3.0)]
    pgd = rows[2]
    assert pgd["clean_accuracy"]["mean"] == pytest.approx(0.8) and pgd["clean_accuracy"]["std"] == pytest.approx(0.1)
    # mean 0.2, sd 0.1, n 3: half width t(0.975, 2) * 0.1 / sqrt(3), t(0.975, 2) = 4.302653 (tables)
    lo, hi = pgd["robust_linf_t95"]
    assert (lo, hi) == (pytest.approx(0.2 - 0.248414, abs=1e-5), pytest.approx(0.2 + 0.248414, abs=1e-5))
    assert rows[1]["failed_checks"] == ["black_box"] and rows[0]["failed_checks"] == []
    assert eps_report.t_interval([0.5]) is None


def test_a_row_whose_seeds_used_different_public_data_says_so():
    """The training CLI falls back to another public set when the one asked for is missing; a
    row mixing them would compare unlike models, so summarize() lists every source it saw."""
    from tfdprobust.experiments import eps_report

    kmnist = {"public": "kmnist test (10000 examples) from /x/kmnist-test-imgs.npz, 128 random images (public)"}
    digits = {"public": "scikit-learn's bundled 8x8 digits (UCI optical digits, 1797 images, resized to 28x28), "
                        "128 random images (public)"}
    cells = [{**_cell("dpsgd", 3.0, 0, 0.7, 0.1), "data": kmnist}, {**_cell("dpsgd", 3.0, 1, 0.7, 0.1), "data": digits},
             {**_cell("dpsgd_pgd", 3.0, 0, 0.7, 0.1), "data": kmnist}, _cell("dpsgd_pgd", 1.0, 0, 0.7, 0.1)]
    rows = {(r["method"], r["target_epsilon"]): r["public_data"] for r in eps_report.summarize(cells)}
    assert rows[("dpsgd", 3.0)] == ["kmnist test", "scikit-learn's bundled 8x8 digits"]
    assert rows[("dpsgd_pgd", 3.0)] == ["kmnist test"] and rows[("dpsgd_pgd", 1.0)] == ["none"]
