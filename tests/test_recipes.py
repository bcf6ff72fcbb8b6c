"""Recipes (tfdprobust.recipes): a registry of frozen configurations of the training CLI;
--recipe fills the flags not given; explicit flags override and are recorded."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
from absl import flags

import tfdprobust
from tfdprobust import recipes
from tfdprobust.errors import UsageError
from tfdprobust.experiments import mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": ROOT}
FLAGS = flags.FLAGS


def test_get_returns_the_frozen_recipe_and_the_package_exposes_the_module():
    recipe = tfdprobust.recipes.get("scatternet_fmnist_eps3")
    assert recipe is recipes.get("scatternet_fmnist_eps3")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.name = "other"  # type: ignore[misc]
    values = recipe.values
    assert (values["model"], values["batch_size"], values["learning_rate"], values["l2_clip"], values["epochs"],
            values["groups"], values["activation"], values["optimizer"]) == (
        "scatternet_cnn", 2048, 4.0, 0.1, 40, 27, "tanh", "momentum")  # Tramèr and Boneh's README and code
    assert values["target_epsilon"] == 3.0 and values["delta"] == 1e-5 and values["precompute_features"] is True


def test_tdp_recipes_get_works_after_importing_the_package_alone_and_loads_no_tensorflow():
    code = ("import sys, tfdprobust as tdp; r = tdp.recipes.get('scatternet_fmnist_eps3'); "
            "print(r.name, r.values['model'], 'tensorflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["scatternet_fmnist_eps3", "scatternet_cnn", "False"]


def test_an_unknown_recipe_names_the_flag_and_lists_the_recipes():
    with pytest.raises(UsageError) as info:
        recipes.get("scatternet")
    message = str(info.value)
    assert message.startswith("--recipe='scatternet' is unknown")
    assert all(name in message for name in recipes.names())


def test_a_recipe_is_validated():
    good = dict(name="x", paper="A and B, \"T\"", source="their code", summary="s")
    with pytest.raises(UsageError, match="sets a flag twice"):
        recipes.Recipe(**good, flags=(("epochs", 1), ("epochs", 2)))
    with pytest.raises(UsageError, match="without dashes"):
        recipes.Recipe(**good, flags=(("--epochs", 1),))
    with pytest.raises(UsageError, match="bool, int, float or str"):
        recipes.Recipe(**good, flags=(("epochs", [1]),))
    with pytest.raises(UsageError, match="needs a name, a paper"):
        recipes.Recipe(**{**good, "paper": ""}, flags=())
    assert recipes.Recipe(**good, flags=(("dp", False), ("epochs", 2))).argv(epochs=3) == ("--nodp", "--epochs=3")


@pytest.mark.parametrize("name", recipes.names())
def test_every_recipe_names_its_paper_and_source_and_only_real_flags(name):
    recipe = recipes.get(name)
    assert '"' in recipe.paper and recipe.source  # authors and a quoted title
    for flag, value in recipe.flags:
        assert flag in FLAGS, flag
        assert type(FLAGS[flag].default) in (type(value), type(None)) or isinstance(value, float), flag


@pytest.fixture
def parsed():
    """Parses the training CLI's flags in-process; restores the defaults afterwards."""
    def parse(*argv):
        FLAGS.unparse_flags()
        FLAGS(["mnist", *argv])
        return mnist.config_from_flags()

    yield parse
    FLAGS.unparse_flags()


@pytest.mark.parametrize("name", recipes.names())
def test_the_recipe_becomes_the_run_config_and_explicit_flags_override_it(name, parsed, shared_data, tmp_path):
    recipe = recipes.get(name)
    common = ("--dataset=mnist", f"--data_dir={shared_data}", f"--export_dir={tmp_path}")
    cfg = parsed(f"--recipe={name}", *common)
    values = recipe.values
    assert cfg.recipe == name
    assert cfg.recipe_overrides == (("dataset", "mnist"),)  # the only recipe value given explicitly
    assert cfg.model.name == values["model"] and cfg.batch_size == values["batch_size"]
    assert cfg.train.learning_rate == values["learning_rate"] and cfg.train.dp.l2_clip == values["l2_clip"]
    assert cfg.epochs == values["epochs"] and cfg.target_epsilon == values["target_epsilon"]
    assert cfg.precompute_features == values.get("precompute_features", False)
    assert cfg.train.attack is None
    cfg = parsed(f"--recipe={name}", *common, "--batch_size=100", "--epochs=2")
    assert (cfg.batch_size, cfg.epochs) == (100, 2)
    assert dict(cfg.recipe_overrides) == {"dataset": "mnist", "batch_size": "100", "epochs": "2"}
    assert cfg.model.name == values["model"]  # the rest still comes from the recipe


def test_without_a_recipe_nothing_is_recorded(parsed, shared_data, tmp_path):
    cfg = parsed(f"--data_dir={shared_data}", f"--export_dir={tmp_path}")
    assert cfg.recipe is None and cfg.recipe_overrides == () and not cfg.precompute_features


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the scattering miniature took 882 s on 2 cores shared at load 10
@pytest.mark.parametrize("name", recipes.names())
def test_a_miniature_of_the_recipe_trains_privately_and_records_the_recipe(name, shared_data, tmp_path):
    """The recipe on 300 offline MNIST digits, 2 epochs of batches of 100: it runs end to end,
    spends at most its epsilon, and the exported network takes pixels."""
    import numpy as np
    import tensorflow as tf

    argv = [sys.executable, "-m", "tfdprobust.experiments.mnist", f"--recipe={name}", "--dataset=mnist",
            f"--data_dir={shared_data}", "--max_train=300", "--max_test=100", "--epochs=2", "--batch_size=100",
            "--eps=0", f"--export_dir={tmp_path}", "--run_name=mini", "--verbose=0"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1700, cwd=tmp_path, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "mini.json").read_text())
    meta = json.loads((tmp_path / "mini" / "metadata.json").read_text())
    for record in (result, meta):
        assert record["recipe"] == {"name": name, "overrides": {"dataset": "mnist", "epochs": "2",
                                                                "batch_size": "100"}}
        assert record["precomputed_features"] == recipes.get(name).values.get("precompute_features", False)
    assert 0 < result["epsilon"] <= recipes.get(name).values["target_epsilon"] + 1e-6
    assert result["model"]["name"] == recipes.get(name).values["model"]
    assert 0.0 <= result["clean_accuracy"] <= 1.0
    serve = tf.saved_model.load(str(tmp_path / "mini")).signatures["serving_default"]
    logits = serve(images=tf.random.uniform([2, 28, 28, 1]))["logits"]
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits.numpy()))
