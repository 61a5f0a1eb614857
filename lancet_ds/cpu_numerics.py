"""Machine-independent CPU numerics for the demo world (DESIGN.md section 6: same seed, same world).

On CPU the libraries under torch and numpy pick their kernels by the processor: torch's own kernels take the
widest vector ISA found (AVX-512 on one machine, AVX2 on another), MKL and OpenBLAS pick code paths by CPU
model and thread count. Float sums then round differently, training drifts apart, and two machines build two
different demo worlds from one seed (measured: ATen's AVX-512 and AVX2 kernels give other impure and safe
weights, and OpenBLAS's core type another harm judge, hence other influence queries).

`PINNED` fixes one code path for each library: torch's AVX2 kernels, MKL's AVX2 conditional-numerical-
reproducibility branch, OpenBLAS's AVX2 (Haswell) kernels, and (`distributed.init_distributed`) one thread per
rank. The libraries read these variables once, when they load, so a process pins itself by
restarting (`restart_pinned`) before it does any work: `lancet-ds demo-world`, the demo job and the quality
bench's worker do so when they run on the CPU accelerator. The pin covers x86-64 CPUs with AVX2 of one vendor,
the same torch/numpy builds and the same rank count; a GPU builds its own world (and keeps its threads). MKL
follows a fixed branch other than AUTO or COMPATIBLE on Intel processors only (its developer guide, "Specifying
Code Branches"); elsewhere it falls back to AUTO without a warning, so an AMD machine and an Intel one build
different worlds from one seed (measured: README "The demo world"). `state()` records the vendor for that reason.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

PINNED = {
    "ATEN_CPU_CAPABILITY": "avx2",  # torch's AVX2 kernels, also where AVX-512 ones exist
    "MKL_CBWR": "AVX2",  # MKL's conditional numerical reproducibility: its AVX2 branch (on Intel CPUs; AUTO elsewhere)
    "OPENBLAS_CORETYPE": "Haswell",  # numpy/scipy's OpenBLAS (the judges' fit): its AVX2 kernels
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",  # torch's and MKL's threads, before `distributed.init_distributed` sets them to one too
}
"""The environment of a pinned process: AVX2, which every x86-64 CPU since 2015 has, at the speed of the native
kernels (a training step of the default world's model: 124–127 ms pinned, 123–133 ms native, against 266–295 ms
with torch's plain x86-64 kernels and MKL's COMPATIBLE branch). A CPU without AVX2 cannot follow it:
`state()` then reports another capability and `pinned` false."""
PINNED_CAPABILITY = "AVX2"
"""`torch.backends.cpu.get_cpu_capability()` in a pinned process."""


def supported() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def pinned() -> bool:
    """This process was started under `PINNED`."""
    return supported() and all(os.environ.get(k) == v for k, v in PINNED.items())


def _on_cpu() -> bool:
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().device_name() == "cpu"


def restart_pinned(why: str) -> None:
    """Restart this process (same command line, same PID, so a launcher still tracks it) under `PINNED` unless
    it already runs so, or runs on a GPU (whose numerics are the GPU's, and whose CPU-offloaded optimizer wants
    its threads). Call it first thing in an entry point: the new process redoes everything before it."""
    if pinned() or not supported() or not _on_cpu():
        return
    from lancet_ds.console import say  # here, not at the top: console imports distributed, which imports this module

    say(f"{why}: restarting under machine-independent CPU numerics "
        f"({' '.join(f'{k}={v}' for k, v in PINNED.items())})")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, **PINNED})


def cpuinfo(field: str) -> str | None:
    """The first CPU's `field` in Linux's /proc/cpuinfo (`vendor_id`, `model name`, ...); None elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.split(":", 1)[0].strip() == field),
                None)


def cpu_vendor() -> str:
    """The CPU's vendor as Linux reports it (`GenuineIntel`, `AuthenticAMD`, ...), "unknown" elsewhere: MKL's AVX2
    branch is Intel's alone, so worlds compare bit for bit only between pinned machines of one vendor."""
    return cpuinfo("vendor_id") or "unknown"


def state() -> dict:
    """What this process computes with, for world.json: `pinned` is true when every library's choice is the
    pinned one (torch's kernels, MKL's branch, OpenBLAS's core type, one thread per rank); `cpu_vendor` says
    which machines can build the same world (those of the same vendor, module docstring)."""
    import torch

    from lancet_ds.distributed import device

    device_type = device().type
    capability = torch.backends.cpu.get_cpu_capability()
    threads = torch.get_num_threads()
    return {"pinned": device_type == "cpu" and pinned() and capability == PINNED_CAPABILITY and threads == 1,
            "device": device_type, "machine": platform.machine(), "cpu_vendor": cpu_vendor(),
            "torch_cpu_capability": capability,
            "threads_per_rank": threads, "env": {k: os.environ.get(k) for k in PINNED}}
