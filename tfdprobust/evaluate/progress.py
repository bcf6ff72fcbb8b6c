"""Progress of a long evaluation, with an estimate of the time left, on stderr.

The default evaluation of one model runs for minutes on a 2-core CPU (the README's
"Evaluating robustness" states how long). Every section prints where it stands::

    [3/8] ensemble linf (standard): 6/24 attacks, 0:42 elapsed, ~2:06 left; total 3:10

The estimate of a section is a linear extrapolation of its own rate (attacks on the
examples still robust get cheaper, so it errs long); the total is the wall time since the
evaluation started. ``--verbose=1`` prints a line when a section starts, at most every
``every`` seconds while it runs and when it ends; ``--verbose=2`` on every update;
``--verbose=0`` nothing. One unit of work can take minutes (an APGD attack on 1,000
images), so a heartbeat thread repeats the status line every ``every`` seconds without
an update: the run is visibly alive.

Example::

    progress = Progress(total_sections=2, verbose=1)
    with progress.section("sweeps", total=3000, unit="attacked examples") as sec:
        attacks.correct_under_attack(model_fn, x, y, cfg, progress=sec)   # calls sec.add(n)
"""

import sys
import threading
import time
from typing import Optional, TextIO


def clock(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``."""
    seconds = int(round(max(seconds, 0.0)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Counts the sections of an evaluation and prints their progress lines.

    Args:
        total_sections: how many sections the evaluation runs (for ``[k/K]``).
        verbose: 0 silent, 1 rate-limited lines, 2 every update.
        every: seconds between two lines of a running section at ``verbose=1``.
        stream: where the lines go (stderr: stdout holds the results).
        now: the clock (a test passes a fake one).
        heartbeat: repeat the status every ``every`` seconds while no update comes.
    """

    def __init__(self, total_sections: int, verbose: int = 1, every: float = 15.0,
                 stream: Optional[TextIO] = None, now=time.monotonic, heartbeat: bool = True):
        self.total_sections = total_sections
        self.verbose = verbose
        self.every = every
        self.heartbeat = heartbeat
        self.stream = stream if stream is not None else sys.stderr
        self.now = now
        self.started = now()
        self.index = 0

    def section(self, name: str, total: int, unit: str) -> "Section":
        """The next section: ``total`` units of work (examples, attacks, ...)."""
        self.index += 1
        return Section(self, f"[{self.index}/{self.total_sections}] {name}", max(int(total), 1), unit)

    def write(self, line: str) -> None:
        if self.verbose:
            print(line, file=self.stream, flush=True)


class Section:
    """One section's counter; ``add(n)`` is what the attack loops call."""

    def __init__(self, progress: Progress, title: str, total: int, unit: str):
        self.progress, self.title, self.total, self.unit = progress, title, total, unit
        self.done = 0
        self.started = self.last_line = progress.now()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    def __enter__(self) -> "Section":
        self._line(f"0/{self.total} {self.unit}")
        if self.progress.verbose and self.progress.heartbeat:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
        return self

    def __exit__(self, kind, value, trace) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        if kind is None:
            self._line(f"done, {self.total} {self.unit} in {clock(self.progress.now() - self.started)}")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.progress.every / 3):
            now = self.progress.now()
            if now - self.last_line >= self.progress.every:
                self._line(self.status(now))

    def add(self, n: int) -> None:
        self.done = min(self.done + int(n), self.total)
        now = self.progress.now()
        if self.progress.verbose >= 2 or now - self.last_line >= self.progress.every:
            self._line(self.status(now))

    def status(self, now: float) -> str:
        """``done/total unit, elapsed, ~left`` (no estimate before the first unit)."""
        elapsed = now - self.started
        text = f"{self.done}/{self.total} {self.unit}, {clock(elapsed)} elapsed"
        if 0 < self.done < self.total:
            text += f", ~{clock(elapsed * (self.total - self.done) / self.done)} left"
        return text

    def _line(self, text: str) -> None:
        with self._lock:  # the heartbeat thread writes too
            self.last_line = self.progress.now()
            self.progress.write(f"{self.title}: {text}; total {clock(self.last_line - self.progress.started)}")
