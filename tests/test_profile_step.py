"""The step profiler: every piece is timed in every round, and bad flags fail in one line."""

import os
import subprocess
import sys

from tfdprobust.experiments import profile_step

ENV = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}


def test_every_piece_of_a_pgd_step_is_timed_every_round():
    lines = []
    times = profile_step.profile("cnn", 4, pgd=True, rounds=2, log=lines.append)
    assert list(times) == ["attack", "non-DP gradient", "DP clipped sum", "DP private step", "non-DP train step",
                           "DP train step"]
    assert all(len(v) == 2 and all(t >= 0 for t in v) for v in times.values())
    assert sum(times["attack"]) > 0  # ten PGD steps cannot take no CPU time
    text = "\n".join(lines)
    assert "| attack |" in text and "DP train step speed / non-DP train step speed (medians):" in text


def test_bad_batch_size_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "tfdprobust.experiments.profile_step", "--batch_size=0"],
                          capture_output=True, text=True, timeout=120, env=ENV)
    lines = [line for line in proc.stderr.strip().splitlines() if line]
    assert proc.returncode == 2 and len(lines) == 1 and "--batch_size must be >= 1" in lines[0], proc.stderr
