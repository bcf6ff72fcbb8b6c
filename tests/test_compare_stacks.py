"""benchmarks.stacks (and its CLI, benchmarks.compare_stacks): the stacks are checked before anything runs, and the report's
ratios are the medians' and every round's."""

import os
import subprocess
import sys

import pytest

from tfdprobust.errors import UsageError
from benchmarks import stacks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("values,needle", [
    (None, "--python is required"),
    (["reference"], "label=/path/to/python"),
    ([f"a={sys.executable}", f"a={sys.executable}"], "distinct"),
    (["a=/nonexistent/python"], "not an executable interpreter"),
])
def test_bad_stacks_name_the_flag(values, needle):
    with pytest.raises(UsageError, match=needle):
        stacks.parse_stacks(values)


def _row(stack, framework, round_, figure):
    return {"stack": stack, "framework": framework, "round": round_, "group": "cnn:250:clean",
            "key": f"{framework}:cnn:250:clean", "examples_per_cpu_second": figure}


def test_report_gives_the_ratio_of_the_median_rounds_and_each_rounds_ratio():
    results = [_row("ref", "ours_nondp", 0, 100.0), _row("ref", "ours_dp", 0, 90.0),
               _row("ref", "ours_nondp", 1, 200.0), _row("ref", "ours_dp", 1, 120.0),
               _row("ref", "ours_nondp", 2, 150.0), _row("ref", "ours_dp", 2, 60.0),
               _row("cur", "ours_nondp", 0, 100.0), {**_row("cur", "ours_dp", 0, 0.0), "error": "boom"}]
    del results[-1]["examples_per_cpu_second"]
    text = stacks.report(results, [("ref", "/p", "reference stack"), ("cur", "/q", "current stack")],
                                 "cmd", "machine")
    # medians: non-DP 150, DP 90 -> 0.60x; rounds 0.90, 0.60, 0.40.
    assert "| cnn | 250 | none | 150 | 90 | **0.60x** | 100 | failed | n/a |" in text
    assert "- cnn, B = 250, clean, ref: 0.90, 0.60, 0.40" in text
    assert "- cur ours_dp:cnn:250:clean: boom" in text


def test_a_bad_flag_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "benchmarks.compare_stacks", "--python=x=/nonexistent"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--python" in lines[0] and "not an executable interpreter" in lines[0]
