"""The run directory's lock (`RUN_DIR/.lock`): one writer at a time per run directory — the job and every
stage command that writes there take it. An OS file lock (`flock`), held by rank 0 for the life of the
command, so a process that dies (kill -9 included) leaves no stale lock behind; the file itself only
says who holds it.

A run directory holds DeepSpeed checkpoints, which DeepSpeed loads with pickle: it must be trusted like a
script. Taking the lock refuses a run directory that other users may write to."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path

from lancet_ds.errors import ConfigError, LockedError
from lancet_ds.run_dir import RunDir

class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = RunDir.of(run_dir).lock
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise `LockedError` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        refuse_shared(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise LockedError(f"{self.path.parent}: another run holds this run directory ({holder}). Wait for it "
                              "to finish, or choose another --run-dir; the lock goes away by itself when that "
                              "process exits.") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def held_by_other(self) -> bool:
        """True when another process holds the lock now (for `job validate`: writes and keeps nothing)."""
        if not self.path.exists():
            return False
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def refuse_shared(run: Path) -> None:
    """A run directory writable by other users could hand this process a crafted pickle (DeepSpeed's
    checkpoints): refuse it, saying how to fix it."""
    mode = run.stat().st_mode
    if mode & stat.S_IWOTH:
        raise ConfigError(f"{run}: writable by every user (mode {oct(mode & 0o777)}); a run directory holds "
                          "checkpoints loaded with pickle and must be trusted like a script. `chmod o-w` it, or "
                          "use another --run-dir.")
