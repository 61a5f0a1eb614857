"""Fingerprints that tie stored factors and IHVPs to the exact model and settings that made them."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over config.json and every weight file (names and full contents) of a model directory.
    Hashed once per process for unchanged files (the stages of one job share it)."""
    root = Path(model_dir).resolve()
    files = [root / "config.json"] + sorted(p for p in root.iterdir() if p.suffix in WEIGHT_SUFFIXES)
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
