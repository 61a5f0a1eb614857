"""Fingerprints that tie stored factors and IHVPs to the exact model and settings that made them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


def model_fingerprint(model_dir: str | Path) -> str:
    """sha256 over config.json and every weight file (names and full contents) of a model directory."""
    root = Path(model_dir)
    h = hashlib.sha256()
    files = [root / "config.json"] + sorted(p for p in root.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 23), b""):
                h.update(block)
    return h.hexdigest()


def json_fingerprint(obj) -> str:
    """sha256 of a JSON-serialisable object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
