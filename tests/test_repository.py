"""Repository hygiene: portable files, and README flag tables that match the CLIs."""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACHINE_PATHS = re.compile(r"(?<![\w.])/(?:work|root|home)/[\w.-]+")


def _tracked_text_files():
    try:
        names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")  # a source tarball: nothing to check against
    for name in names:
        path = os.path.join(ROOT, name)
        if os.path.isfile(path) and not name.endswith((".png", ".gz", ".npz", ".pb", ".h5")):
            yield name, path


def test_no_file_holds_a_machine_specific_absolute_path():
    offenders = []
    for name, path in _tracked_text_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if MACHINE_PATHS.search(line):
                    offenders.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not offenders, "machine-specific paths:\n" + "\n".join(offenders)


def _readme_flags(section: str):
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in body.splitlines() if line.startswith("|"))
    return set(re.findall(r"`--([a-z_0-9]+)", table))


def test_readme_flag_table_matches_the_training_cli():
    from absl import flags

    from tfdprobust.experiments import mnist  # noqa: F401  (defines the flags)

    defined = {name for name in flags.FLAGS
               if str(flags.FLAGS.find_module_defining_flag(name)).endswith("experiments.mnist")}
    # a boolean flag may be documented in its --noname form
    documented = {name[2:] if name.startswith("no") and name[2:] in defined else name
                  for name in _readme_flags("Flags")}
    assert documented - defined == set(), f"README documents flags the CLI lacks: {documented - defined}"
    assert defined - documented == set(), f"CLI flags missing from the README table: {defined - documented}"
