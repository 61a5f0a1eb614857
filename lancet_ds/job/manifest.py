"""`RUN_DIR/manifest.json` (DESIGN.md section 2): per stage its input fingerprints, resolved config,
status, wall time and world size; for the job its spec, DeepSpeed config, package versions and status.
Written by rank 0, atomically, at every change, so it is readable while a job runs and after a kill."""

from __future__ import annotations

import platform
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from lancet_ds import __version__
from lancet_ds import distributed as dist_utils
from lancet_ds.fileio import read_json, write_json
from lancet_ds.run_dir import RunDir

PACKAGES = ("torch", "deepspeed", "transformers", "datasets", "safetensors", "scikit-learn", "accelerate", "numpy")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"lancet_ds": __version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


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
