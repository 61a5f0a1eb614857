"""`RUN_DIR/manifest.json` (DESIGN.md section 2): per stage its input fingerprints, resolved config,
status, wall time and world size; for the job its spec, DeepSpeed config, package versions and status.
Written by rank 0, atomically, at every change, so it is readable while a job runs and after a kill."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from lancet_ds import __version__
from lancet_ds import distributed as dist_utils
from lancet_ds.run_dir import RunDir
from lancet_ds.fileio import read_json, write_json

PACKAGES = ("torch", "deepspeed", "transformers", "datasets", "safetensors", "scikit-learn", "accelerate", "numpy")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"lancet_ds": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


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
    h = hashlib.sha256()
    for f, (name, _, _) in zip(files, stat):
        h.update(name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 23), b""):
                h.update(block)
    return {"path": str(p), "stat_key": stat_key, "bytes": sum(s[1] for s in stat), "files": len(files),
            "sha256": h.hexdigest()}


class Manifest:
    def __init__(self, run_dir: str | Path):
        self.path = RunDir.of(run_dir).manifest
        self.data: dict[str, Any] = read_json(self.path) if self.path.exists() else {"stages": {}}

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def start_job(self, job: dict, ds_config: dict) -> None:
        self.data.update(lancet_ds_version=__version__, versions=package_versions(), job=job, ds_config=ds_config,
                         world_size=dist_utils.world_size(), status="running", started=_now(), finished=None)
        self.save()

    def finish_job(self, status: str, wall_seconds: float) -> None:
        self.data.update(status=status, finished=_now(), wall_seconds=round(wall_seconds, 2))
        self.save()

    def update_stage(self, name: str, **fields) -> None:
        self.data["stages"].setdefault(name, {}).update(fields)
        self.save()

    def save(self) -> None:
        if dist_utils.is_main():
            write_json(self.path, self.data)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
