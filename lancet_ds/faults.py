"""Fault injection for the resume tests: `LANCET_FAULT_AFTER_STEP=N` kills the process (exit 137, as a
SIGKILL would) right after step or pass N of a resumable loop; with `LANCET_FAULT_STAGE=NAME` only
inside that stage of a job (the job runner names the running stage in `LANCET_STAGE`).

On several ranks every rank waits for the others at the fault point before any exits, so step N's work is
on disk on every rank when the launcher tears the job down. Without that wait the first rank's exit raced
the others' writes of step N, and what the resume tests count was a matter of timing. (A real kill can
strike ranks at different points; the resumable loops handle that too, since each rank's rows and
partial sums are read back only as far as they were written.)"""

from __future__ import annotations

import os


def maybe_inject_fault(done: int) -> None:
    if done != int(os.environ.get("LANCET_FAULT_AFTER_STEP", "-1")):
        return
    stage = os.environ.get("LANCET_FAULT_STAGE")
    if stage is not None and stage != os.environ.get("LANCET_STAGE"):
        return
    from lancet_ds.distributed import barrier, release_shm_buffer

    barrier()
    release_shm_buffer()  # a real SIGKILL leaves it in /dev/shm; the tests should not
    os._exit(137)
