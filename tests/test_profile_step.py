"""The step profiler: every piece is timed in every round (its bad flags: tests/test_bad_input.py)."""

import statistics

from benchmarks.peers import step_profile


def test_every_piece_of_a_pgd_step_is_timed_every_round():
    lines = []
    times = step_profile.profile("cnn", 4, pgd=True, rounds=2, log=lines.append)
    assert list(times) == ["attack", "non-DP gradient", "DP clipped sum", "DP private step", "non-DP train step",
                           "DP train step"]
    assert all(len(v) == 2 and all(t >= 0 for t in v) for v in times.values())
    assert sum(times["attack"]) > 0  # ten PGD steps cannot take no CPU time
    text = "\n".join(lines)
    ratio = statistics.median(times["non-DP train step"]) / statistics.median(times["DP train step"])
    assert "| attack |" in text and f"DP train step speed / non-DP train step speed (medians): {ratio:.2f}x" in text
