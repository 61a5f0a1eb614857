"""Rank-0 console output (rich; plain text when stdout is not a terminal)."""

from __future__ import annotations

import time

from rich.console import Console

from lancet_ds import distributed as dist_utils

_console = Console(highlight=False)
if not _console.is_terminal:  # logs and pipes: wide enough that tables keep one line per row
    _console = Console(highlight=False, width=200)
_t0 = time.perf_counter()


def say(message: str) -> None:
    """Print `message` on rank 0, stamped with seconds since start."""
    if dist_utils.is_main():
        _console.print(f"[{time.perf_counter() - _t0:7.1f}s] {message}", markup=False, soft_wrap=True)


def console() -> Console:
    return _console
