"""The write-ahead step journal of a checkpointed run (see :mod:`tfdprobust.checkpoint`).

Before each training step runs (and draws its noise), the count of steps started is
rewritten in ``<checkpoint folder>/journal.json`` through a temporary file and a rename. A
killed run's journal therefore says how many steps it ran, including those after its last
checkpoint, and ``--resume`` composes them into epsilon.

The per-step rewrite survives the death of the process (SIGKILL, an out-of-memory kill, an
abort inside TensorFlow: the operating system's page cache keeps it); it is not flushed to
disk, which would cost milliseconds a step. For a machine that loses power or reboots, the
journal also holds ``reserved``, a bound flushed to disk (``fsync``) :data:`RESERVE` steps
ahead of the count: a resume after a reboot (another ``boot_id``) composes that bound, which
over-counts by at most :data:`RESERVE` steps and never under-counts.

Example:
    >>> import tempfile
    >>> folder = os.path.join(tempfile.mkdtemp(), "run.checkpoint")
    >>> journal = Journal.begin(folder)
    >>> journal.step_started(); journal.step_started()
    >>> Journal.recover(folder, checkpoint_steps=1).interrupted   # 1 step ran after step 1
    (1,)
"""

import dataclasses
import json
import os
from typing import Optional, Sequence, Tuple

from tfdprobust.errors import UsageError, require

JOURNAL = "journal.json"
FORMAT = 1
#: Steps the durable ``reserved`` bound runs ahead of the count (one fsync per RESERVE steps).
RESERVE = 64
_TMP_MARK = ".tmp-"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: str, data: bytes, durable: bool) -> None:
    """``data`` to ``path`` through a temporary file and a rename (flushed to disk if ``durable``)."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}{_TMP_MARK}{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(os.path.dirname(path))


def boot_id() -> Optional[str]:
    """This boot of the machine (Linux), or ``None`` where the system does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return None


@dataclasses.dataclass
class Journal:
    """The write-ahead count of the steps a run started (see the module docstring).

    Attributes:
        folder: the run's checkpoint folder.
        started: steps started so far in this attempt, counted like the optimizer's
            step counter (a resumed attempt starts from its checkpoint's count).
        reserved: a bound on ``started`` that is on disk (flushed), :data:`RESERVE` ahead.
        interrupted: steps that earlier attempts ran after their last checkpoint, one
            entry per interruption (composed into epsilon).
        recovered_from_reboot: the last interruption was read from ``reserved`` because
            the machine restarted since it was written (an upper bound, not a count).
    """

    folder: str
    started: int = 0
    reserved: int = 0
    interrupted: Tuple[int, ...] = ()
    recovered_from_reboot: bool = False

    @classmethod
    def begin(cls, folder: str, started: int = 0, interrupted: Sequence[int] = ()) -> "Journal":
        """A new journal (and folder), written to disk before the first step."""
        os.makedirs(folder, exist_ok=True)
        journal = cls(folder, started, started, tuple(interrupted))
        journal._write(durable=True)
        return journal

    @staticmethod
    def read_interrupted(folder: str) -> Tuple[int, ...]:
        """The ``interrupted`` entries of the journal in ``folder`` (``()`` if unreadable)."""
        try:
            with open(os.path.join(folder, JOURNAL)) as f:
                return tuple(int(s) for s in json.load(f)["interrupted"])
        except (OSError, ValueError, KeyError, TypeError):
            return ()

    @classmethod
    def recover(cls, folder: str, checkpoint_steps: int) -> "Journal":
        """The journal of a resumed attempt: the steps the interrupted attempt ran after its
        checkpoint (at ``checkpoint_steps``) join ``interrupted``, durably, before any step.

        Raises:
            UsageError: the journal is missing or unreadable (the lost steps cannot be counted).
        """
        path = os.path.join(folder, JOURNAL)
        try:
            with open(path) as f:
                record = json.load(f)
            started, reserved = int(record["started"]), int(record["reserved"])
            interrupted = tuple(int(s) for s in record["interrupted"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise UsageError(f"--resume: the step journal {path} is missing or unreadable ({err}); the steps run "
                             "after the last checkpoint cannot be counted, so the run cannot be resumed with an "
                             "honest epsilon; start a new run with another --run_name") from None
        rebooted = record.get("boot_id") is None or record.get("boot_id") != boot_id()
        ran = max(started, reserved) if rebooted else started
        require(ran >= checkpoint_steps and started <= reserved,
                f"--resume: the step journal {path} disagrees with the checkpoint (it counts {started} steps, the "
                f"checkpoint holds {checkpoint_steps}); start a new run with another --run_name")
        lost = ran - checkpoint_steps
        journal = cls.begin(folder, checkpoint_steps, interrupted + ((lost,) if lost else ()))
        journal.recovered_from_reboot = rebooted and lost > 0
        return journal

    def step_started(self) -> None:
        """Counts one more step, on disk, before it runs (called before the step draws noise)."""
        self.started += 1
        durable = self.started > self.reserved
        if durable:
            self.reserved = self.started + RESERVE
        self._write(durable)

    def _write(self, durable: bool) -> None:
        record = {"format": FORMAT, "started": self.started, "reserved": self.reserved,
                  "interrupted": list(self.interrupted), "boot_id": boot_id(), "pid": os.getpid()}
        write_file(os.path.join(self.folder, JOURNAL), json.dumps(record).encode(), durable)
