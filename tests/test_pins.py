"""Every bound in setup.cfg is earned: it has a reason in docs/install.md's pin table and a
test that would fail without it, and the installed stack satisfies it.

A lower bound only needs to hold; an upper bound or an exact version (``<``, ``<=``,
``==``, ``~=``) holds a stack back, so it must say why and name the check that breaks
when the bound is lifted. The current stack (Python >= 3.12) carries lower bounds only
and CI installs it fresh, so it resolves the newest releases on every run.
"""

import configparser
import os
import re

import pytest
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Each bounded requirement -> the test (file::function) that fails without the bound.
#: The reason itself is the row of docs/install.md's pin table.
PIN_CHECKS = {
    # tensorflow-privacy 0.9.0 fails to import on TF >= 2.16: every tfprivacy cross-check.
    "tensorflow": "tests/test_accounting.py::test_epsilons_equal_tensorflow_privacy_statement",
    "tensorflow-privacy": "tests/test_train_step.py::test_dp_paths_agree_without_noise",
    # tensorflow-metadata >= 1.15 breaks tensorflow-datasets' import on the reference stack.
    "tensorflow-metadata": "tests/test_pins.py::test_tensorflow_datasets_imports_and_builds_a_builder",
    "tensorflow-datasets": "tests/test_pins.py::test_tensorflow_datasets_imports_and_builds_a_builder",
    # TF 2.15 is compiled against NumPy 1.x: with NumPy 2 its import fails.
    "numpy": "tests/test_pins.py::test_installed_versions_satisfy_this_stacks_requirements",
    # Exact version: the ensemble's Square attack and the AutoAttack reference it is compared with.
    "adversarial-robustness-toolbox": "tests/test_ensemble.py::test_standard_preset_not_above_art_autoattack",
    # kymatio's 2-D TensorFlow frontend is imported by its internal module path.
    "kymatio": "tests/test_features.py::test_layer_equals_kymatio_numpy_scattering_channel_by_channel",
    # keras_tuner.src.distribute (a private module) tells the chief from the workers.
    "keras-tuner": "tests/test_tune_search.py::test_one_guarantee_covers_the_table_and_names_the_validation_mechanism",
}

UPPER = ("<", "<=", "==", "~=", "===")


def _requirements():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    lines = cfg["options"]["install_requires"].splitlines()
    for extra, value in cfg["options.extras_require"].items():
        lines += [(line, extra) for line in value.splitlines()]
    for line in lines:
        line, extra = line if isinstance(line, tuple) else (line, None)
        line = line.strip()
        if line and not line.startswith("#"):
            yield Requirement(line), extra


def _bounded():
    return sorted({r.name.lower() for r, _ in _requirements() if any(s.operator in UPPER for s in r.specifier)})


def _pin_table_names():
    text = open(os.path.join(ROOT, "docs", "install.md"), encoding="utf-8").read()
    section = text.split("## Pins and why", 1)[1].split("\n## ", 1)[0]
    return {name.lower() for name in re.findall(r"^\|\s*`([A-Za-z0-9_.-]+)", section, re.M)} | {
        name.lower() for name in re.findall(r"`([A-Za-z0-9_.-]+)[<>=~]", section)}


def test_every_bound_has_a_row_in_the_pin_table_and_a_check_that_exists():
    bounded = _bounded()
    assert bounded, "setup.cfg parsed to no bounded requirement: the parser is broken"
    documented = _pin_table_names()
    for name in bounded:
        assert name in documented, f"{name} is bounded in setup.cfg but has no row in docs/install.md's pin table"
        assert name in PIN_CHECKS, f"{name} is bounded in setup.cfg but PIN_CHECKS names no test that needs it"
    for name, check in PIN_CHECKS.items():
        assert name in bounded, f"PIN_CHECKS lists {name}, which setup.cfg no longer bounds: drop its entry"
        path, function = check.split("::")
        source = open(os.path.join(ROOT, path), encoding="utf-8").read()
        assert re.search(rf"^def {function}\(", source, re.M), f"{check} (the check of the {name} pin) does not exist"


def test_the_current_stack_has_lower_bounds_only():
    """CI installs the current stack fresh: with lower bounds only it resolves the newest releases."""
    for r, extra in _requirements():
        if r.marker is None or extra == "bench":
            continue
        current = r.marker.evaluate({"python_version": "3.12"}) and not r.marker.evaluate({"python_version": "3.11"})
        if current:
            assert not any(s.operator in UPPER for s in r.specifier), f"{r} bounds the current stack from above"


def test_installed_versions_satisfy_this_stacks_requirements():
    """The environment the tests run in is the one setup.cfg describes (a drifted venv fails here
    before it fails somewhere confusing)."""
    from importlib import metadata

    checked = 0
    for r, extra in _requirements():
        if extra in ("bench",) or (r.marker is not None and not r.marker.evaluate({"extra": extra or ""})):
            continue
        try:
            version = metadata.version(r.name)
        except metadata.PackageNotFoundError:
            if extra == "tfprivacy":
                continue  # the conftest makes a missing tensorflow-privacy a failure on the reference stack
            raise AssertionError(f"{r.name} is required by setup.cfg but not installed")
        assert r.specifier.contains(version, prereleases=True), f"installed {r.name} {version} is outside {r}"
        checked += 1
    assert checked >= 15


@pytest.mark.timeout(120)
def test_tensorflow_datasets_imports_and_builds_a_builder(tmp_path):
    """The TFDS loader (tfdprobust.data) needs ``import tensorflow_datasets`` and a builder; with
    tensorflow-metadata >= 1.15 on the reference stack the import itself fails (protobuf)."""
    import tfdprobust  # noqa: F401  (Keras 2 selected first)
    import tensorflow_datasets as tfds

    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    assert builder.info.features["label"].num_classes == 10
