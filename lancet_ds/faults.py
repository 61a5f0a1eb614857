"""Fault injection for the resume tests: `LANCET_FAULT_AFTER_STEP=N` kills the process (exit 137, as a
SIGKILL would) right after step or pass N of a resumable loop; with `LANCET_FAULT_STAGE=NAME` only
inside that stage of a job (the job runner names the running stage in `LANCET_STAGE`)."""

from __future__ import annotations

import os


def maybe_inject_fault(done: int) -> None:
    if done != int(os.environ.get("LANCET_FAULT_AFTER_STEP", "-1")):
        return
    stage = os.environ.get("LANCET_FAULT_STAGE")
    if stage is not None and stage != os.environ.get("LANCET_STAGE"):
        return
    from lancet_ds.distributed import release_shm_buffer

    release_shm_buffer()  # a real SIGKILL leaves it in /dev/shm; the tests should not
    os._exit(137)
