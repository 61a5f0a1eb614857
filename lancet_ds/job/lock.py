"""The run directory's lock (`RUN_DIR/.lock`): one job at a time per run directory. An OS file lock
(`flock`), held by rank 0 for the life of the job, so a process that dies (kill -9 included) leaves no
stale lock behind; the file itself only says who holds it."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from lancet_ds.run_dir import RunDir
from lancet_ds.errors import LockedError



class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = RunDir.of(run_dir).lock
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise `LockedError` naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
        """True when another process holds the lock now (for `job validate`; takes nothing)."""
        if not self.path.exists():
            return False
        try:
            self.acquire()
        except LockedError:
            return True
        self.release()
        return False
