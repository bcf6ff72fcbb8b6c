"""One tuner per search folder: an ``flock`` (no TensorFlow import, so it is checked at once)."""

import errno
import fcntl
import os
import types

from tfdprobust.errors import UsageError

LOCK_DIR = ".locks"


class SearchLock:
    """An exclusive ``flock`` on ``<tuning_dir>/.locks/<project>.lock`` for the process's life.

    The kernel drops it when the process dies (even by SIGKILL), so it never goes stale.
    """

    def __init__(self, cfg):
        self.path = os.path.join(cfg.tuning_dir, LOCK_DIR, f"{cfg.project}.lock")
        self.cfg = cfg
        self.fd = None

    def acquire(self) -> "SearchLock":
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise UsageError(f"--tuning_dir={self.cfg.tuning_dir} --project={self.cfg.project} is locked by "
                             f"another tuner (pid {holder}); wait for it to finish, or use another --project "
                             "(for parallel workers use Keras Tuner's chief/worker mode)") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def check_unlocked(tuning_dir: str, project: str) -> None:
    """Raises the one-line :class:`UsageError` if another tuner holds the lock (writes nothing
    when the lock file does not exist yet)."""
    if os.path.exists(os.path.join(tuning_dir, LOCK_DIR, f"{project}.lock")):
        SearchLock(types.SimpleNamespace(tuning_dir=tuning_dir, project=project)).acquire().release()
