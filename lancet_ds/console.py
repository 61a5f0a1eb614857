"""Rank-0 console output (rich; plain text when stdout is not a terminal). Structured events
(`emit_event`, e.g. `progress`) go to the registered sinks (the job's JSON-lines log), and so does every
message, as a `message` event; `set_quiet` silences the console but not the sinks."""

from __future__ import annotations

import time
from typing import Callable

from rich.console import Console

from lancet_ds import distributed as dist_utils

_console = Console(highlight=False)
if not _console.is_terminal:  # logs and pipes: wide enough that tables keep one line per row
    _console = Console(highlight=False, width=200)
_t0 = time.perf_counter()
_sinks: list[Callable[..., None]] = []  # each called as sink(event, **fields)
_quiet = False


def say(message: str) -> None:
    """Print `message` on rank 0, stamped with seconds since start, and hand it to the sinks."""
    if not dist_utils.is_main():
        return
    emit_event("message", message=message)
    if not _quiet:
        _console.print(f"[{time.perf_counter() - _t0:7.1f}s] {message}", markup=False, soft_wrap=True)


def console() -> Console:
    return _console


def emit_event(event: str, **fields) -> None:
    """Hand the structured event `event` with its fields to the sinks, on rank 0; nothing is printed."""
    if dist_utils.is_main():
        for sink in list(_sinks):
            sink(event, **fields)


def add_sink(sink: Callable[..., None]) -> None:
    _sinks.append(sink)


def remove_sink(sink: Callable[..., None]) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet
