"""Fingerprints that tie stored factors and IHVPs to the exact model and settings that made them."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over config.json and every weight file (names and full contents) of a model directory.
    Hashed once per process for unchanged files (the stages of one job share it)."""
    root = Path(model_dir).resolve()
    files = [root / "config.json"] + sorted(p for p in root.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return _hash_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


def model_files_fingerprint(model_dir: str | Path) -> str:
    """sha256 over a model directory's other top-level files (tokenizer, chat template, generation config): what a
    stage reads beside the weights. A stage that names its model by `model_fingerprint` and leaves the path out
    (`path_free`) records this too, so the same weights with another tokenizer are told apart."""
    root = Path(model_dir).resolve()
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix not in WEIGHT_SUFFIXES
                   and p.name not in ("config.json", "README.md") and not p.name.endswith(".index.json")
                   and not p.name.startswith("lancet_"))
    return _hash_files(tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files))


@functools.lru_cache(maxsize=32)
def _hash_files(files: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in files:
        f = Path(name)
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 23), b""):
                h.update(block)
    return h.hexdigest()


def json_fingerprint(obj) -> str:
    """sha256 of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


INPUT, IN_RUN = "<input>", "<run>"


def path_free(config, inputs=(), run_root: str | Path | None = None):
    """`config` without where things lie, as stage records are compared (DESIGN.md section 2: the inputs'
    content fingerprints decide reuse): a string naming one of `inputs` (files or folders whose contents the
    same record holds, by sha256 or model fingerprint) becomes "<input>", and a path inside `run_root` is
    written relative to it ("<run>/model"). A run directory, corpus or model moved or copied elsewhere — a
    scheduled job's scratch copy, a node with other mounts — then keeps its finished and partial results."""
    names = {form for p in inputs if p for form in (str(p), str(Path(p).resolve()))}
    root = str(Path(run_root).resolve()) if run_root is not None else None

    def free(value):
        if isinstance(value, dict):
            return {k: free(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [free(v) for v in value]
        if isinstance(value, str):
            if value in names:
                return INPUT
            if root is not None and (value == root or value.startswith(root + os.sep)):
                return IN_RUN + value[len(root):]
        return value

    return free(config)


def compared_fingerprint(recorded: str | None, whole, free) -> str:
    """The fingerprint a stage's record is compared with: that of `free` (its `path_free` form), unless the record
    holds that of `whole` (paths included), as lancet_ds wrote before paths were left out: such a record keeps its
    own while nothing moved, and moved it no longer matches."""
    kept = json_fingerprint(whole)
    return kept if recorded == kept else json_fingerprint(free)


_CONTENT: dict[tuple[str, str], dict[str, Any]] = {}  # (path, stat key) → fingerprint, per process


def fingerprint_path(path: str | Path, previous: dict | None = None) -> dict[str, Any]:
    """sha256 over the names and contents of a file or of every file under a directory. The contents
    are hashed again only when a file's size or mtime changed since `previous` (so rerunning a job on a
    large, unchanged corpus costs a `stat` per file)."""
    p = Path(path).resolve()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    stat = [(f.name if f == p else str(f.relative_to(p)), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    stat_key = hashlib.sha256(json.dumps(stat).encode()).hexdigest()
    if previous and previous.get("path") == str(p) and previous.get("stat_key") == stat_key:
        return previous
    if (str(p), stat_key) in _CONTENT:
        return _CONTENT[(str(p), stat_key)]
    h = hashlib.sha256()
    for f, (name, _, _) in zip(files, stat):
        h.update(name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 23), b""):
                h.update(block)
    out = {"path": str(p), "stat_key": stat_key, "bytes": sum(s[1] for s in stat), "files": len(files),
           "sha256": h.hexdigest()}
    _CONTENT[(str(p), stat_key)] = out
    return out


def content_sha256(path: str | Path) -> str:
    """sha256 of a file's or directory's contents (what a stage guard records of its inputs), read by rank 0
    and handed to the others (every rank calls it): a corpus is read once, not once per rank."""
    from lancet_ds import distributed as dist_utils

    return dist_utils.on_rank0(lambda: fingerprint_path(path)["sha256"])
