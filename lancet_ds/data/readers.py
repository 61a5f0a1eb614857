"""Readers for JSONL, JSON, parquet and `datasets` directories, yielding rows one at a time.

* JSONL is read by a strict streaming line reader, because only a line reader can point a malformed
  line or a non-UTF-8 byte at `file:line`; blank lines are not records.
* parquet goes through `datasets` in streaming mode (`load_dataset("parquet", streaming=True)`), so a
  corpus larger than memory is read record batch by record batch.
* A `datasets` directory (`save_to_disk`) is opened with `load_from_disk` (memory-mapped Arrow) and
  iterated as an `IterableDataset`; a `DatasetDict` needs `split`.
* JSON holds one array of objects (or an object with exactly one array field); it is parsed whole.

Each reader yields `RawRow` for a readable row and `(location, reason, raw)` for an unreadable one; the
caller hands the latter to the bad-record policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Union

from lancet_ds.data.records import RawRow
from lancet_ds.errors import BadInputError

Unreadable = tuple[str, str, Any]
ReadResult = Union[RawRow, Unreadable]

FORMATS = ("jsonl", "json", "parquet", "datasets")
BOM = b"\xef\xbb\xbf"


def detect_format(path: str | Path) -> str:
    """The format of `path` from its suffix, or `datasets` for a `save_to_disk` directory."""
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{path}: no such file or directory. Check the option or job-file entry that names it.")
    if p.is_dir():
        if (p / "dataset_info.json").exists() or (p / "state.json").exists() or (p / "dataset_dict.json").exists():
            return "datasets"
        raise BadInputError(f"{path}: a directory, but not one written by datasets' save_to_disk "
                            "(no dataset_info.json, state.json or dataset_dict.json). Point at a file or such a directory.")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "json"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise BadInputError(f"{path}: cannot tell the format from the suffix {suffix!r}. "
                        f"Use one of .jsonl, .json, .parquet, or a datasets directory.")


def iter_rows(path: str | Path, split: str | None = None) -> Iterator[ReadResult]:
    """Yield every row of `path` (any supported format) in file order."""
    fmt = detect_format(path)
    reader = {"jsonl": _iter_jsonl, "json": _iter_json, "parquet": _iter_parquet, "datasets": _iter_datasets_dir}[fmt]
    if fmt == "datasets":
        yield from reader(str(path), split)
    else:
        yield from reader(str(path))


def _iter_jsonl(path: str) -> Iterator[ReadResult]:
    row = 0
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1 and raw.startswith(BOM):  # a byte-order mark is an encoding marker, not data
                raw = raw[len(BOM):]
            if not raw.strip():
                continue
            location = f"{path}:{line_no}"
            if row == 0 and raw.lstrip().startswith(b"[") and Path(path).suffix.lower() != ".json":
                raise BadInputError(f"{location}: this file holds a JSON array, not one object per line. Name it "
                                    f"{Path(path).with_suffix('.json').name} (a .json corpus is one array of objects), "
                                    "or write one object per line.")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield location, f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})", raw
                row += 1
                continue
            try:
                data = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                yield location, f"malformed JSON ({exc.msg} at column {exc.colno})", text.rstrip("\n")
                row += 1
                continue
            if not isinstance(data, dict):
                yield location, f"expected a JSON object, got {type(data).__name__}", text.rstrip("\n")
            else:
                yield RawRow(source=path, row=row, line=line_no, data=data)
            row += 1


def _iter_json(path: str) -> Iterator[ReadResult]:
    try:
        with open(path, encoding="utf-8-sig") as fh:  # -sig: a leading byte-order mark is skipped
            doc = json.load(fh)
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: not valid UTF-8 ({exc.reason} at byte {exc.start}). "
                            "Re-encode the file as UTF-8.") from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # one object per line under a .json name
            yield from _iter_jsonl(path)
            return
        raise BadInputError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}). "
                            "A .json corpus must hold one array of objects; fix the file.") from None
    if isinstance(doc, dict):
        arrays = [v for v in doc.values() if isinstance(v, list)]
        if len(arrays) != 1:
            raise BadInputError(f"{path}: a JSON object must hold exactly one array of records, found {len(arrays)}.")
        doc = arrays[0]
    if not isinstance(doc, list):
        raise BadInputError(f"{path}: expected a JSON array of objects, got {type(doc).__name__}.")
    for row, data in enumerate(doc):
        if isinstance(data, dict):
            yield RawRow(source=path, row=row, line=None, data=data)
        else:
            yield f"{path}:row {row}", f"expected a JSON object, got {type(data).__name__}", data


def _iter_parquet(path: str) -> Iterator[ReadResult]:
    import datasets

    try:
        stream = datasets.load_dataset("parquet", data_files=path, split="train", streaming=True)
        for row, data in enumerate(stream):
            yield RawRow(source=path, row=row, line=None, data=dict(data))
    except (OSError, ValueError) as exc:
        if isinstance(exc, BadInputError):
            raise
        raise BadInputError(f"{path}: cannot read as parquet ({exc}). Check that the file is a complete parquet file.") from None


def _iter_datasets_dir(path: str, split: str | None) -> Iterator[ReadResult]:
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise BadInputError(f"{path}: a DatasetDict with splits {sorted(ds)}; name one with --split.")
            split = next(iter(ds))
        if split not in ds:
            raise BadInputError(f"{path}: no split {split!r}; the splits are {sorted(ds)}.")
        ds = ds[split]
    for row, data in enumerate(ds.to_iterable_dataset()):
        yield RawRow(source=path, row=row, line=None, data=dict(data))
