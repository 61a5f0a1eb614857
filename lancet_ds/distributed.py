"""Process-group set-up and the few collectives the stages use (DESIGN.md section 4).

Under the `deepspeed` launcher (any number of ranks and nodes) the environment already names rank,
world size and master; a plain `lancet-ds ...` process becomes a one-rank group on a free loopback
port. The backend is the DeepSpeed accelerator's: NCCL on GPUs, gloo on the CPU accelerator.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from lancet_ds import cpu_numerics
from lancet_ds.errors import LancetError


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> None:
    """Join (or form) the process group once; also sets each rank's share of the CPU threads (one in a process
    pinned by `cpu_numerics`)."""
    if dist.is_initialized():
        return
    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed.*")

    if "RANK" not in os.environ:
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT") or str(_free_port()))
    acc = get_accelerator()
    if acc.device_name() == "cpu":
        local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
        # a pinned process (cpu_numerics) sums on one thread, so the thread count does not move its results
        torch.set_num_threads(1 if cpu_numerics.pinned() else max(1, (os.cpu_count() or 1) // max(1, local)))
    else:
        acc.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(dist_backend=acc.communication_backend_name(), verbose=False)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def num_passes(n: int, micro_batch: int, world: int) -> int:
    """Passes every rank makes to cover n items dealt in micro-batches round-robin (DESIGN.md section 4)."""
    return -(-n // (micro_batch * world)) if n else 0


def pass_indices(p: int, micro_batch: int, rank: int, world: int) -> list[int]:
    """Item indices of this rank's micro-batch in pass p; indices ≥ n are fillers."""
    return [(p * world + rank) * micro_batch + j for j in range(micro_batch)]


def owner(k: int, world: int) -> int:
    """The rank that owns item k of work spread round-robin (eigendecompositions, IHVPs)."""
    return k % world


def gather_by_index(mine: dict[int, object], n: int) -> list:
    """Every rank's {index: value} merged, as a list of n values, on every rank."""
    merged: dict[int, object] = {}
    for part in all_gather_object(mine):
        merged.update(part)
    return [merged[i] for i in range(n)]


def staged_on_device(t: torch.Tensor) -> bool:
    """Whether a collective on `t` must go through the device: a host tensor when the backend only reduces device
    tensors (NCCL, the backend on GPUs; gloo, on the CPU accelerator, reduces host tensors)."""
    return t.device.type == "cpu" and device().type != "cpu" and dist.get_backend() == "nccl"


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    """In-place all-reduce of `t` by `op` over ranks, through the device where `staged_on_device`; returns `t`."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        if staged_on_device(t):
            staged = t.to(device())
            dist.all_reduce(staged, op=op)
            t.copy_(staged)
        else:
            dist.all_reduce(t, op=op)
    return t


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place SUM over ranks (a no-op on one rank; a host tensor through the device under NCCL); returns `t`."""
    return _all_reduce(t, dist.ReduceOp.SUM)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """In-place MAX over ranks (a no-op on one rank; a host tensor through the device under NCCL); returns `t`."""
    return _all_reduce(t, dist.ReduceOp.MAX)


def reduce_sum(t: torch.Tensor, dst: int) -> torch.Tensor:
    """In-place SUM over ranks into rank `dst` (other ranks' `t` is left undefined; a no-op on one rank). A host
    tensor goes through the device when the backend only reduces device tensors (NCCL), one tensor at a time."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        if staged_on_device(t):
            staged = t.to(device())
            dist.reduce(staged, dst=dst, op=dist.ReduceOp.SUM)
            if rank() == dst:
                t.copy_(staged)
        else:
            dist.reduce(t, dst=dst, op=dist.ReduceOp.SUM)
    return t


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_rank0(fn):
    """Run `fn` on rank 0 and hand its result to every rank; an error there is raised on every rank
    (with its exit code), so no rank is left waiting in a collective."""
    result, error = None, None
    if is_main():
        try:
            result = fn()
        except LancetError as exc:
            error = (type(exc), str(exc))
        except Exception as exc:  # noqa: BLE001 - re-raised below on every rank
            error = (LancetError, f"{type(exc).__name__}: {exc}")
    result, error = broadcast_object((result, error))
    if error is not None:
        exc = error[0](error[1])
        exc.on_every_rank = True  # every rank stops here, together: `shutdown` may meet them in a barrier
        raise exc
    return result


def shm_buffer_path() -> Path:
    """The shared-memory allreduce buffer DeepSpeed's CPU accelerator creates for this rank
    (/dev/shm/deepspeed_allreduce_buffer_<uid>_<master addr>_<master port>_<rank>, about 64 MB). DeepSpeed
    never unlinks it, so every CPU run would leave one behind per rank and fill /dev/shm."""
    return Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
                               f"{os.environ.get('MASTER_PORT', '')}_{os.environ.get('RANK', '0')}")


def release_shm_buffer() -> None:
    """Unlink this rank's buffer (the mapping stays valid for any process still using it)."""
    try:
        shm_buffer_path().unlink()
    except (FileNotFoundError, PermissionError):
        pass


def shutdown(together: bool) -> None:
    """Leave the process group (gloo aborts the process at exit otherwise). When every rank ends `together`
    (after success, or an error every rank raised in `on_rank0`), they meet in a last barrier first, so none tears down
    its connections while another still uses them (without it a rank could die with "terminate called
    without an active exception" instead of its exit code); after an error on this rank alone there is
    no collective to wait for. Releases the shm buffer."""
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()
        release_shm_buffer()
