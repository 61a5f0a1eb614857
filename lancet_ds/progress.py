"""Progress of the long stages (fit and score passes, correction steps, generation) that a person can read:
on rank 0, a rich bar with done/total, tokens/s and ETA on a terminal, and periodic `progress` events
(`console.emit_event`, which a job writes to its `log.jsonl`) for scheduled jobs. Other ranks get a no-op;
nothing here calls a collective, so reporting can never make ranks diverge.

    with track("fit: covariance pass", total=n, unit="passes") as bar:
        for ...:
            bar.advance(1, tokens=t)

An event (fields `task`, `done`, `total`, `unit`, `rate` in units/s, `tokens_per_second` when tokens are
given, `eta_seconds`) goes out at most every `LANCET_PROGRESS_SECONDS` (default 10) seconds, and always
once at the end. Rich allows one live display at a time: a track adds its task to the shared one (the
job's stage bar, see `share`) and starts a transient display of its own only when there is none.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from lancet_ds import distributed as dist_utils
from lancet_ds.console import console, emit_event, is_quiet

INTERVAL_ENV = "LANCET_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 10.0

_live: Progress | None = None  # the started display tracks add their tasks to


class _Detail(ProgressColumn):
    """A track's unit and tokens/s (blank for other tasks, such as the job's stage bar)."""

    def render(self, task: Task) -> Text:
        return Text(task.fields.get("detail", ""), style="progress.data.speed")


class _Remaining(TimeRemainingColumn):
    """rich's ETA, for tracks only."""

    def render(self, task: Task) -> Text:
        return super().render(task) if "detail" in task.fields else Text("")


def display() -> Progress:
    """A transient rich display (not started) with the columns every bar shares: description, bar,
    done/total, unit and tokens/s, ETA, elapsed."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _Detail(),
                    _Remaining(), TimeElapsedColumn(), console=console(), transient=True)


def share(progress: Progress | None) -> None:
    """Make the started display `progress` (the job's stage bar) the one tracks add their tasks to; None
    when it stops."""
    global _live
    _live = progress


def default_interval() -> float:
    """Seconds between two `progress` events: `LANCET_PROGRESS_SECONDS`, or 10."""
    return float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))


def _sig(x: float) -> float:
    return float(f"{x:.4g}")


class Tracker:
    """One task's count, rates, bar task and events (rank 0)."""

    def __init__(self, task: str, total: int, unit: str, done: int, interval: float, bar: Progress | None):
        self.task, self.total, self.unit = task, total, unit
        self.done = self.start = done
        self.tokens: int | None = None
        self.interval = interval
        self.t0 = self.last_event = time.perf_counter()
        self.reported: int | None = None  # `done` of the last event
        self.bar = bar
        self.bar_task = bar.add_task(task, total=total, completed=done, detail=unit) if bar is not None else None

    def advance(self, n: int = 1, tokens: int | None = None) -> None:
        """`n` more units done, holding `tokens` tokens (all ranks' when the caller can tell)."""
        self.done += n
        if tokens is not None:
            self.tokens = (self.tokens or 0) + int(tokens)
        if self.bar is not None:
            self.bar.update(self.bar_task, advance=n, detail=self._detail())
        if time.perf_counter() - self.last_event >= self.interval:
            self._event()

    def fields(self) -> dict:
        """The fields of a `progress` event; rates are averages since the track began."""
        seconds = time.perf_counter() - self.t0
        rate = (self.done - self.start) / seconds if seconds > 0 else 0.0
        out = {"task": self.task, "done": self.done, "total": self.total, "unit": self.unit, "rate": _sig(rate)}
        if self.tokens is not None:
            out["tokens_per_second"] = _sig(self.tokens / seconds) if seconds > 0 else 0.0
        out["eta_seconds"] = _sig(max(self.total - self.done, 0) / rate) if rate > 0 else None
        return out

    def close(self) -> None:
        """The final event (unless the last one already said as much); the bar task goes."""
        if self.reported != self.done:
            self._event()
        if self.bar is not None:
            self.bar.remove_task(self.bar_task)

    def _event(self) -> None:
        emit_event("progress", **self.fields())
        self.last_event, self.reported = time.perf_counter(), self.done

    def _detail(self) -> str:
        seconds = time.perf_counter() - self.t0
        if self.tokens is None or seconds <= 0:
            return self.unit
        return f"{self.unit} · {self.tokens / seconds:,.0f} tok/s"


class _NoOp:
    """What other ranks advance: nothing."""

    def advance(self, n: int = 1, tokens: int | None = None) -> None:
        pass


@contextmanager
def track(task: str, total: int, unit: str = "steps", done: int = 0,
          interval: float | None = None) -> Iterator[Tracker | _NoOp]:
    """Report `task` from `done` (a resume point) to `total` `unit`s; `interval`: seconds between events
    (default `default_interval()`). A no-op on ranks other than 0."""
    if not dist_utils.is_main():
        yield _NoOp()
        return
    global _live
    own = None
    if _live is None and console().is_terminal and not is_quiet():
        own = _live = display()
        own.start()
    tracker = Tracker(task, total, unit, done, default_interval() if interval is None else interval, _live)
    try:
        yield tracker
    finally:
        tracker.close()
        if own is not None:
            own.stop()
            _live = None
