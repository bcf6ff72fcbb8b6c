"""Progress lines of a long evaluation: numbering, counts, elapsed time and the estimate
of the time left, rate limiting, and silence at --verbose=0 (a fake clock; no TensorFlow)."""

import io
import time

from tfdprobust.evaluate.config import SuiteConfig
from tfdprobust.evaluate.progress import Progress, clock


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _progress(verbose=1, every=15.0, sections=3):
    stream, now = io.StringIO(), FakeClock()
    progress = Progress(sections, verbose, every=every, stream=stream, now=now, heartbeat=False)
    return progress, stream, now


def test_clock_formats_minutes_and_hours():
    assert [clock(s) for s in (0, 42, 70, 3599, 3600, 3725)] == ["0:00", "0:42", "1:10", "59:59", "1:00:00",
                                                                 "1:02:05"]


def test_a_section_reports_counts_elapsed_and_a_linear_estimate_of_the_rest():
    progress, stream, now = _progress(verbose=2)
    now.t += 5  # a first section ran before: the total counts from the start
    with progress.section("ensemble (standard)", 1000, "attack runs") as sec:
        now.t += 42
        sec.add(300)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[1/3] ensemble (standard): 0/1000 attack runs; total 0:05"
    # 300 of 1000 in 42 s: the other 700 at the same rate take 98 s
    assert lines[1] == "[1/3] ensemble (standard): 300/1000 attack runs, 0:42 elapsed, ~1:38 left; total 0:47"
    assert lines[2] == "[1/3] ensemble (standard): done, 1000 attack runs in 0:42; total 0:47"
    with progress.section("sanity checks", 1, "check suite"):
        pass
    assert stream.getvalue().splitlines()[-1].startswith("[2/3] sanity checks: done")


def test_verbose_1_prints_at_most_one_line_per_interval():
    progress, stream, now = _progress(verbose=1, every=15.0)
    with progress.section("sweeps", 100, "attacked examples") as sec:
        for _ in range(10):  # ten updates within 10 s: no line
            now.t += 1
            sec.add(5)
        now.t += 6  # 16 s after the first line
        sec.add(5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert "55/100 attacked examples, 0:16 elapsed, ~0:13 left" in lines[1]


def test_a_heartbeat_shows_a_long_unit_of_work_is_alive():
    stream = io.StringIO()
    progress = Progress(1, verbose=1, every=0.05, stream=stream)
    with progress.section("ensemble (standard)", 48, "attack runs") as sec:
        time.sleep(0.5)  # one attack run without an update
        sec.add(1)
    beats = [line for line in stream.getvalue().splitlines() if "0/48 attack runs, " in line]
    assert len(beats) >= 2 and all("elapsed" in line for line in beats), stream.getvalue()


def test_verbose_0_prints_nothing():
    progress, stream, now = _progress(verbose=0)
    with progress.section("sweeps", 10, "attacked examples") as sec:
        now.t += 100
        sec.add(10)
    assert stream.getvalue() == ""


def test_planned_sections_counts_what_each_model_runs():
    from tfdprobust.evaluate.sections import planned_sections

    everything = SuiteConfig()
    # six sections and the sanity checks per model, and the corrupted images once
    assert planned_sections(everything, 1) == 8 and planned_sections(everything, 2) == 15
    assert planned_sections(SuiteConfig(sections=("sweeps",)), 1) == 2
