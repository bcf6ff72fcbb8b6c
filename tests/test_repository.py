"""Repository hygiene: portable files, and the docs' flag tables that match the CLIs."""

import glob
import os
import re
import subprocess
import sys

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


# ----------------------------------------------------------------------------- README flag tables
def _helpshort(module):
    """``{flag: (absl default or None, help text)}`` from ``python -m module --helpshort``."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", module, "--helpshort"], capture_output=True, text=True, env=env,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    found, current = {}, None
    for line in proc.stdout.splitlines():
        head = re.match(r"^  --(?:\[no\])?([A-Za-z_0-9]+): ?(.*)$", line)
        if head:
            current = head.group(1)
            found[current] = [None, head.group(2)]
        elif current and line.startswith("    "):
            default = re.match(r"^    \(default: '?(.*?)'?\)$", line)
            if default:
                found[current][0] = default.group(1)
            else:
                found[current][1] += " " + line.strip()
    return {name: tuple(v) for name, v in found.items()}


def _readme_table(module):
    """``{flag: text in parentheses after it, or None}`` from the table after the
    ``<!-- flag table: module ...-->`` marker in the README or a docs/ page."""
    marker = f"<!-- flag table: {module} "
    pages = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
    texts = [open(page, encoding="utf-8").read() for page in pages]
    found = [text for text in texts if marker in text]
    assert len(found) == 1, f"{len(found)} flag tables for {module} in README.md and docs/ (expected one)"
    text = found[0]
    rows = []
    for line in text.split(marker, 1)[1].splitlines()[1:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    table = "\n".join(rows)
    return {m.group(1): m.group(2) for m in
            re.finditer(r"`--([a-z_0-9]+)`(?: / `--no[a-z_0-9]+`)?(?: \(((?:[^()]|\([^()]*\))*)\))?", table)}


def _first_token(text):
    return re.split(r"[\s;]", text.strip(), maxsplit=1)[0].rstrip(".,)").strip("'")


def _same(shown, default):
    words = {"true": "on", "false": "off"}
    if words.get(default, default) == shown:
        return True
    try:
        return float(shown) == float(default)
    except ValueError:
        return False


CLIS = ["tfdprobust.experiments.mnist", "tfdprobust.tune", "tfdprobust.evaluate", "tfdprobust.audit"]


@pytest.mark.parametrize("module", CLIS)
def test_readme_flag_table_lists_every_flag_with_its_real_default(module):
    """Every flag of ``--helpshort`` is in the README table and no other; where a flag has a
    default (absl's, or the one its help states, e.g. "default 500"), the table shows it
    first in the parentheses after the flag."""
    defined = _helpshort(module)
    table = _readme_table(module)
    assert set(table) - set(defined) == set(), f"README documents flags {module} lacks: {set(table) - set(defined)}"
    assert set(defined) - set(table) == set(), f"flags missing from the README table: {set(defined) - set(table)}"
    wrong = []
    for name, (default, help_text) in defined.items():
        if default in (None, "", "[]"):
            stated = re.search(r"[Dd]efault:? (\S.*)", help_text)
            default = _first_token(stated.group(1)) if stated else None
        if default is None:
            continue
        shown = table[name]
        if shown is None or not _same(_first_token(shown), default):
            wrong.append(f"--{name}: README ({shown}), --helpshort default {default!r}")
    assert not wrong, "README defaults differ from --helpshort:\n" + "\n".join(wrong)


# ----------------------------------------------------------------------------- shell scripts
def _shell_scripts():
    for name, path in _tracked_text_files():
        with open(path, encoding="utf-8", errors="replace") as f:
            first = f.readline()
        if name.endswith(".sh") or (first.startswith("#!") and ("bash" in first or first.rstrip().endswith("sh"))):
            yield name, path


def test_every_shell_script_is_portable_fails_loudly_and_is_exercised():
    """Each script parses, stops on a failed step (``set -e``, or ``set -u`` with its own
    exit status), finds the checkout from its own location rather than the working
    folder, and is run by a test or by CI."""
    scripts = dict(_shell_scripts())
    assert scripts, "no shell scripts found"
    tests_text = "".join(open(os.path.join(ROOT, "tests", n), encoding="utf-8").read()
                         for n in os.listdir(os.path.join(ROOT, "tests")) if n.endswith(".py"))
    problems = []
    for name, path in scripts.items():
        text = open(path, encoding="utf-8").read()
        syntax = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
        if syntax.returncode != 0:
            problems.append(f"{name}: bash -n: {syntax.stderr.strip()}")
        if not re.search(r"^set -[a-z]*e", text, re.M) and not (
                re.search(r"^set -[a-z]*u", text, re.M) and re.search(r"^exit \$\w+", text, re.M)):
            problems.append(f"{name}: neither `set -e` nor an exit status of its own")
        if "cd " in text and "dirname" not in text:
            problems.append(f"{name}: changes folder without finding itself (dirname \"$0\")")
        if name != ".ci/run" and os.path.basename(name) not in tests_text:
            problems.append(f"{name}: no test runs it")
    assert not problems, "\n".join(problems)


def test_a_hanging_test_fails_at_the_suites_per_test_limit_instead_of_stalling(tmp_path):
    """pytest-timeout is installed (the ``test`` extra) and the suite sets a per-test limit:
    a test that hangs (as a worker stuck on a crashed TensorFlow kernel once did, for six
    minutes at 0% CPU) fails with its stack rather than stalling CI."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    limit = float(cfg["tool:pytest"]["timeout"])
    assert 0 < limit <= 900
    assert "pytest-timeout" in cfg["options.extras_require"]["test"]
    (tmp_path / "test_hang.py").write_text("import time\n\ndef test_hangs():\n    time.sleep(120)\n")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          "--timeout=2", str(tmp_path / "test_hang.py")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert out.returncode == 1, out.stdout[-2000:]
    assert "Timeout" in out.stdout and "1 failed" in out.stdout


def test_the_installed_package_holds_no_pytorch_or_jax_code():
    """The peer benchmark's PyTorch/Opacus and JAX entries live in benchmarks/, outside what
    ``pip install .`` installs (setup.cfg packages tfdprobust and its subpackages only)."""
    import configparser

    import setuptools

    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    include = [p.strip() for p in cfg["options.packages.find"]["include"].split(",")]
    packages = setuptools.find_packages(ROOT, include=include)
    assert "tfdprobust" in packages and not any(p.startswith("benchmarks") for p in packages)
    offenders = []
    for package in packages:
        folder = os.path.join(ROOT, *package.split("."))
        for name in os.listdir(folder):
            if name.endswith(".py"):
                text = open(os.path.join(folder, name), encoding="utf-8").read()
                if re.search(r"^\s*(import|from)\s+(torch|jax|opacus|flax|optax)\b", text, re.M):
                    offenders.append(f"{package}.{name}")
    assert not offenders, f"PyTorch/JAX code inside the installed package: {offenders}"
    assert os.path.isfile(os.path.join(ROOT, "benchmarks", "peers", "torch_peers.py"))
