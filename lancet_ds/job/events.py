"""The job's record of what happened: `RUN_DIR/log.jsonl` (one JSON object a line: time, event, stage,
and the event's fields; every console message and structured event, such as `progress`, too) beside a
rich progress bar over the stages on a terminal (long stages add their own bars to it, `lancet_ds.progress`),
plain stage lines otherwise, nothing but errors and the final summary with `--quiet`."""

from __future__ import annotations

import json
import time

from lancet_ds import distributed as dist_utils
from lancet_ds.run_dir import RunDir
from lancet_ds.console import add_sink, console, is_quiet, remove_sink, say
from lancet_ds.progress import display, share



class JobEvents:
    def __init__(self, run: RunDir, total: int):
        self.path = run.log
        self.stage: str | None = None
        self.t0 = time.perf_counter()
        self.progress = None
        if dist_utils.is_main():
            add_sink(self.emit)
            if console().is_terminal and not is_quiet():
                self.progress = display()
                self.progress.start()
                share(self.progress)  # the stages' own bars are added to this display
                self.task = self.progress.add_task("job", total=total)

    def emit(self, event: str, **fields) -> None:
        if dist_utils.is_main():
            row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "elapsed": round(time.perf_counter() - self.t0, 3),
                   "event": event, "stage": self.stage, **fields}
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    def stage_start(self, index: int, total: int, name: str) -> None:
        self.stage = name
        self.emit("stage_start", index=index, total=total)
        if self.progress is not None:
            self.progress.update(self.task, description=name)
        else:
            say(f"stage {index}/{total}: {name}")

    def stage_end(self, status: str, seconds: float = 0.0, **fields) -> None:
        self.emit("stage_" + status, seconds=round(seconds, 3), **fields)
        if self.progress is not None:
            self.progress.advance(self.task)
        self.stage = None

    def close(self) -> None:
        if self.progress is not None:
            share(None)
            self.progress.stop()
        remove_sink(self.emit)
