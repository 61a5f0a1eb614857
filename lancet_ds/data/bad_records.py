"""The bad-record policy (DESIGN.md section 5): fail fast with file:line and the reason, or set the
record aside in `rejects.jsonl` with the reason and count it. Nothing is dropped silently."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from lancet_ds.errors import BadRecordError
from lancet_ds.run_dir import REJECTS

POLICIES = ("fail", "skip")


class RejectSink:
    """Receives every bad record of a pass and applies the policy.

    With `policy="fail"` the first bad record raises `BadRecordError`; with `"skip"` it is appended to
    `rejects_path` (one JSON object a line: `location`, `reason`, `raw`) and counted by reason.
    `collect=True` keeps every reject in memory instead of raising (used by `data inspect`, which
    lists them all before it fails).
    """

    def __init__(self, policy: str = "fail", rejects_path: str | Path | None = None, collect: bool = False,
                 skippable: bool = True):
        if policy not in POLICIES:
            raise ValueError(f"on_bad_record must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.rejects_path = Path(rejects_path) if rejects_path else None
        self.collect = collect
        self.skippable = skippable  # False: a file always read whole (evaluation, validation): no skip to offer
        self.rejects: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        if self.rejects_path is not None and policy == "skip":
            self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
            self.rejects_path.write_text("")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def reject(self, location: str, reason: str, raw: Any = None) -> None:
        entry = {"location": location, "reason": reason, "raw": _printable(raw)}
        self.counts[_reason_kind(reason)] += 1
        if self.collect:
            self.rejects.append(entry)
            return
        if self.policy == "fail":
            raise BadRecordError(fail_message(location, reason, self.skippable))
        if self.rejects_path is not None:
            with open(self.rejects_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def summary(self) -> dict[str, Any]:
        return {"rejected": self.total, "by_reason": dict(self.counts),
                "rejects_file": str(self.rejects_path) if self.rejects_path and self.total else None}


def strict_sink() -> RejectSink:
    """The sink of a file always read whole (evaluation and validation files, corrections, a demo world's corpus):
    the first bad record stops the read, and the message offers no skip."""
    return RejectSink("fail", skippable=False)


def stage_sink(policy: str, directory: str | Path) -> RejectSink:
    """The sink of a stage that every rank runs over the whole input: rank 0 writes
    `directory/rejects.jsonl`, the other ranks count only (each stage has its own file)."""
    from lancet_ds import distributed as dist_utils

    return RejectSink(policy, Path(directory) / REJECTS if dist_utils.is_main() else None)


def nothing_usable(path: str | Path, what: str, directory: str | Path) -> str:
    """The message of a stage left with no usable record (`what`) in `path`: an empty file, or every record set
    aside into its `stage_sink(directory)`'s rejects file; and what to check."""
    return (f"{path}: no usable {what}: the file holds no record, or every record was set aside (reasons in "
            f"{Path(directory) / REJECTS}). Check the file and its schema options (--schema, --prompt-field, "
            "--response-field).")


def fail_message(location: str, reason: str, skippable: bool = True) -> str:
    """The fail-fast message: where, why, and the ways forward (a file always read whole has one)."""
    if not skippable:
        return f"{location}: {reason}\n  Fix the record: this file is always read whole (bad records are not skipped)."
    return (f"{location}: {reason}\n"
            "  Fix the record, or rerun with --on-bad-record skip (in a job: `on_bad_record: skip` in that file's "
            "entry, e.g. --set corpus.on_bad_record=skip) to set bad records aside in rejects.jsonl (with their "
            "reasons) and go on without them.")


def _reason_kind(reason: str) -> str:
    """Group reasons for the counts: the text before the first parenthesis or colon."""
    return reason.split(" (")[0].split(":")[0].strip()


def _printable(raw: Any) -> Any:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="backslashreplace")
    return raw
