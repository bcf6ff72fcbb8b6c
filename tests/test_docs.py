"""Docs that run: the README and every page under docs/ are checked against the code.

* Every ```python block runs: the blocks of one page in order, in one namespace, in a
  fresh interpreter whose working folder is a temporary one (default tier: keep them to
  seconds, e.g. on scikit-learn's digits).
* Every ```bash / ```sh / ```console command line that invokes ``python -m tfdprobust...``
  or ``python -m benchmarks...`` (the checkout's benchmark scripts, not installed) runs in a
  subprocess (``integration`` tier: these are whole CLI runs). The commands of
  one page share one temporary working folder, in page order, so a later block can use
  what an earlier one exported; ``../shared/data`` there points at the checkout's
  ``../shared/data`` when it exists. In a console block only ``$ `` lines are commands, and
  each ``label :`` of the recorded output must appear in the real output.
* Shrinking is documented in the page itself, by an HTML comment on the line before the
  block: ``<!-- doc-test: --max_train=200 --epochs=1 -->`` appends those flags to every
  tfdprobust command of the block (absl: a later flag wins), and
  ``<!-- doc-test: skip (reason) -->`` skips the block; the reason is mandatory.
* Every relative link and image resolves (the file, and a ``#anchor`` into a page), and
  the README stays at most 250 lines.
"""

import dataclasses
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from typing import List, Optional, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
README_MAX_LINES = 250
PYTHON_PAGE_TIMEOUT = 600  # s: a page's Python blocks together, in one interpreter
COMMAND_TIMEOUT = 900  # s: one shrunk CLI run on 2 shared cores

FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
DIRECTIVE = re.compile(r"^<!--\s*doc-test:(.*?)-->\s*$")
SKIP = re.compile(r"^skip\s*\((.+)\)$")
SHELL_LANGS = ("bash", "sh", "shell", "console")
TFDP_COMMAND = re.compile(r"(?:^|\s)python3? -m (?:tfdprobust|benchmarks)(?:\.|\s|$)")


def pages() -> List[str]:
    """README.md and docs/*.md, as paths relative to the checkout."""
    return ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced code block and the doc-test directive right before it."""

    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    directive: Optional[str]  # the text after "doc-test:", stripped

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def skip_reason(self) -> Optional[str]:
        if self.directive is None or not self.directive.startswith("skip"):
            return None
        found = SKIP.match(self.directive)
        return found.group(1).strip() if found else ""

    @property
    def extra_flags(self) -> List[str]:
        if self.directive is None or self.skip_reason is not None:
            return []
        return shlex.split(self.directive)


def parse(page: str) -> Tuple[List[Block], List[str]]:
    """The code blocks of ``page`` and the problems of its directives."""
    lines = open(os.path.join(ROOT, page), encoding="utf-8").read().splitlines()
    blocks, problems = [], []
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            found = DIRECTIVE.match(lines[i].strip())
            if found and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
                problems.append(f"{page}:{i + 1}: a doc-test directive must be the line right before a code block")
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        directive = DIRECTIVE.match(lines[i - 1].strip()) if i > 0 else None
        block = Block(page, i + 1, opening.group(1).lower(), "\n".join(lines[i + 1:end]),
                      directive.group(1).strip() if directive else None)
        if block.directive is not None:
            if block.skip_reason == "":
                problems.append(f"{block.where}: `doc-test: skip` needs a reason: skip (why)")
            elif block.skip_reason is None and not all(f.startswith("--") for f in block.extra_flags):
                problems.append(f"{block.where}: doc-test takes `skip (reason)` or flags (--name=value), "
                                f"got {block.directive!r}")
        if block.lang not in (*SHELL_LANGS, "python") and TFDP_COMMAND.search(block.text):
            problems.append(f"{block.where}: a block with tfdprobust commands must be marked ```bash (or "
                            "```console) so that it runs")
        blocks.append(block)
        i = end + 1
    return blocks, problems


def commands(block: Block) -> List[Tuple[str, List[str]]]:
    """``(command, recorded output lines)`` of each tfdprobust command line of a shell block."""
    found, output, logical = [], [], []
    for raw in block.text.splitlines():
        if block.lang == "console":
            if raw.startswith("$ "):
                logical.append([raw[2:]])
            elif logical and logical[-1][-1].rstrip().endswith("\\"):
                logical[-1].append(raw)
            elif logical:
                output.append((len(logical) - 1, raw))
        elif logical and logical[-1][-1].rstrip().endswith("\\"):
            logical[-1].append(raw)
        else:
            logical.append([raw])
    for index, parts in enumerate(logical):
        command = " ".join(p.rstrip().rstrip("\\").strip() for p in parts).strip()
        if TFDP_COMMAND.search(command):
            found.append((command, [text for at, text in output if at == index]))
    return found


def _all_blocks():
    for page in pages():
        yield from parse(page)[0]


PYTHON_PAGES = sorted({b.page for b in _all_blocks() if b.lang == "python"})
COMMAND_BLOCKS = [b for b in _all_blocks() if b.lang in SHELL_LANGS and commands(b)]


# ----------------------------------------------------------------------------- structure
def test_the_readme_is_at_most_250_lines():
    n = len(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail to a docs/ page"


def test_every_directive_is_well_formed_and_every_skip_gives_its_reason():
    problems = [p for page in pages() for p in parse(page)[1]]
    assert not problems, "\n".join(problems)
    runnable = [b for b in _all_blocks() if b.lang == "python" or b in COMMAND_BLOCKS]
    skipped = [b for b in runnable if b.skip_reason]
    # Reported on purpose (pytest -rA or -s shows it): how much of the docs is not executed.
    print(f"\ndoc blocks executed by tests: {len(runnable) - len(skipped)}; skipped: {len(skipped)}")
    for b in skipped:
        print(f"  skip {b.where}: {b.skip_reason}")
    assert PYTHON_PAGES and COMMAND_BLOCKS  # the parser found the docs' code


def test_the_parser_reads_directives_continuations_and_console_prompts(tmp_path, monkeypatch):
    """The extraction the other tests rely on, on a page written here."""
    page = tmp_path / "docs" / "p.md"
    page.parent.mkdir()
    page.write_text(textwrap.dedent("""\
        <!-- doc-test: --epochs=1 --max_train=10 -->
        ```bash
        pip install -e .
        python -m tfdprobust.experiments.mnist --noise=7.1 \\
            --batch_size=50   # a comment
        ```
        <!-- doc-test: skip (needs two machines) -->
        ```console
        $ python -m tfdprobust.tune --epochs=2
        epsilon : 1.0
        ```
        <!-- doc-test: skip -->
        ```python
        x = 1
        ```
        <!-- doc-test: skip (dangling) -->

        text
        """), encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    blocks, problems = parse("docs/p.md")
    assert [b.lang for b in blocks] == ["bash", "console", "python"]
    assert blocks[0].extra_flags == ["--epochs=1", "--max_train=10"]
    assert commands(blocks[0]) == [("python -m tfdprobust.experiments.mnist --noise=7.1 --batch_size=50   "
                                    "# a comment", [])]
    assert blocks[1].skip_reason == "needs two machines"
    assert commands(blocks[1]) == [("python -m tfdprobust.tune --epochs=2", ["epsilon : 1.0"])]
    assert len(problems) == 2 and "needs a reason" in problems[0] and "right before" in problems[1]


# ----------------------------------------------------------------------------- named tests
TEST_NAME = re.compile(r"`(?:(tests/test_\w+\.py)::|::)(\w+)`")


def test_every_test_the_docs_name_exists():
    """The guarantee's claims name the tests that check them; a renamed test must not
    leave a claim pointing at nothing. ``::name`` refers to the file named last."""
    missing = []
    for page in pages():
        current = None
        for number, line in enumerate(open(os.path.join(ROOT, page), encoding="utf-8"), 1):
            for m in TEST_NAME.finditer(line):
                current = m.group(1) or current
                if current is None:
                    missing.append(f"{page}:{number}: ::{m.group(2)} names no file")
                    continue
                path = os.path.join(ROOT, current)
                text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
                if not re.search(rf"^\s*def {m.group(2)}\(", text, re.M):
                    missing.append(f"{page}:{number}: {current}::{m.group(2)}")
    assert not missing, "the docs name tests that do not exist:\n" + "\n".join(missing)


# ----------------------------------------------------------------------------- links
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return "".join(c for c in text if c.isalnum() or c in " -").replace(" ", "-")


def anchors(path: str) -> set:
    text = re.sub(r"```.*?```", "", open(path, encoding="utf-8").read(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.M)}


def test_every_relative_link_resolves():
    broken = []
    for page in pages():
        text = re.sub(r"```.*?```", "", open(os.path.join(ROOT, page), encoding="utf-8").read(), flags=re.S)
        for m in LINK.finditer(text):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else \
                os.path.join(ROOT, page)
            if not os.path.exists(full):
                broken.append(f"{page}: {target} (no such file)")
            elif anchor and full.endswith(".md") and anchor not in anchors(full):
                broken.append(f"{page}: {target} (no heading with that anchor)")
    assert not broken, "broken links:\n" + "\n".join(broken)


# ----------------------------------------------------------------------------- Python blocks
RUNNER = """
import json, sys, traceback
blocks = json.loads(sys.argv[1])
namespace = {"__name__": "__main__"}
for where, code in blocks:
    print(f"--- doc block {where}", flush=True)
    try:
        exec(compile(code, where, "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        print(f"FAILED doc block {where}", flush=True)
        sys.exit(1)
"""


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


@pytest.mark.timeout(PYTHON_PAGE_TIMEOUT + 60)
@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_blocks_run(page, tmp_path):
    blocks = [b for b in parse(page)[0] if b.lang == "python"]
    runnable = [(b.where, b.text) for b in blocks if not b.skip_reason]
    if not runnable:
        pytest.skip("doc-test: skip (" + "; ".join(b.skip_reason for b in blocks) + ")")
    proc = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(runnable)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=PYTHON_PAGE_TIMEOUT)
    assert proc.returncode == 0, f"{page}: a Python block failed\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


# ----------------------------------------------------------------------------- CLI commands
_PAGE_DIRS = {}


def _page_dir(page: str, tmp_path_factory) -> str:
    """One working folder per page (commands of a page run in order and share outputs),
    with ``../shared`` beside it pointing at the checkout's, when there is one."""
    if page not in _PAGE_DIRS:
        base = tmp_path_factory.mktemp(re.sub(r"\W", "_", page))
        work = base / "repo"
        work.mkdir()
        if os.path.isdir(SHARED):
            os.symlink(SHARED, base / "shared")
        _PAGE_DIRS[page] = str(work)
    return _PAGE_DIRS[page]


def _labels(output: List[str]) -> List[str]:
    """The ``label :`` prefixes of recorded output lines (e.g. ``clean test accuracy``)."""
    return [m.group(1).strip() for m in (re.match(r"^([A-Za-z][\w ]*?)\s+:\s", line) for line in output) if m]


@pytest.mark.integration
@pytest.mark.timeout(4 * COMMAND_TIMEOUT)
@pytest.mark.parametrize("block", COMMAND_BLOCKS, ids=[b.where for b in COMMAND_BLOCKS])
def test_cli_commands_run(block, tmp_path_factory):
    if block.skip_reason:
        pytest.skip(f"doc-test: skip ({block.skip_reason})")
    work = _page_dir(block.page, tmp_path_factory)
    for command, output in commands(block):
        if "../shared" in command and not os.path.isdir(SHARED):
            pytest.skip(f"{SHARED} is absent (the real offline data sits beside the checkout on CI)")
        argv = shlex.split(command, comments=True)
        assert argv[:2] in (["python", "-m"], ["python3", "-m"]), f"{block.where}: run `python -m ...`, got {command}"
        argv = [sys.executable, *argv[1:], *block.extra_flags]
        # One ledger store per page, as one user's: a page's commands train and then evaluate or
        # audit the same data, whose per-example roles come from the store's secret key.
        env = dict(_env(), TFDPROBUST_LEDGER_DIR=os.path.join(os.path.dirname(work), "ledgers"))
        proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        assert proc.returncode == 0, (f"{block.where}: `{command}` with {block.extra_flags} exited "
                                      f"{proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        missing = [label for label in _labels(output) if not re.search(rf"^{re.escape(label)}\s+:", proc.stdout, re.M)]
        assert not missing, f"{block.where}: the recorded output shows {missing}, the command no longer prints them"
