"""Atomic writes (temp file + rename) and JSON / JSON-lines helpers used by every stage."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    atomic_write_text(path, text)


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Read a JSON-lines file this tool wrote (user corpora go through `lancet_ds.data.readers`). A line
    that does not parse is an error naming the file and line: such a file was damaged after writing."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    from lancet_ds.errors import LancetError

                    raise LancetError(f"{path}:{n}: damaged line ({exc.msg}); this file was written by lancet_ds "
                                      "and changed since. Rerun its stage with --overwrite (or --force in a job).") \
                        from None


def append_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Append whole lines and make them durable (flush + fsync) before returning: a kill can only tear
    the line being written, which `repair_appended` then drops."""
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def repair_appended(path: str | os.PathLike) -> str | None:
    """Cut a file written by `append_lines` back to its last complete, parseable line (a run killed in
    the middle of an append leaves a torn last line). Returns a warning when something was cut."""
    path = Path(path)
    if not path.exists():
        return None
    data = path.read_bytes()
    good = data.rfind(b"\n") + 1
    tail = data[good:]
    if good:
        last_start = data.rfind(b"\n", 0, good - 1) + 1
        try:
            json.loads(data[last_start:good])
        except ValueError:
            good, tail = last_start, data[last_start:]
    if not tail:
        return None
    with open(path, "r+b") as fh:
        fh.truncate(good)
        fh.flush()
        os.fsync(fh.fileno())
    return f"{path}: dropped a torn last line ({len(tail)} bytes) left by an interrupted run; its rows are redone"


def cut_step_log(path: str | os.PathLike, step: int) -> str | None:
    """Cut a per-step log written by `append_lines` back to its rows of steps ≤ `step`, a checkpoint a run
    resumes from: the interrupted run logged the steps after it, which the resumed run logs again, and may have
    torn its last row. Returns `repair_appended`'s warning when a torn row was cut."""
    if not Path(path).exists():
        return None
    warning = repair_appended(path)
    write_jsonl(path, [r for r in read_jsonl(path) if r["step"] <= step])
    return warning
