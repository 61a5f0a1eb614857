"""kronfluence-style protection of a finished stage: the resolved options are saved beside its
outputs; a rerun with the same options reuses them, with other options it is refused unless the user
asks to overwrite (DESIGN.md section 7)."""

from __future__ import annotations

import shutil
from pathlib import Path

from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.errors import ConfigError
from lancet_ds.fileio import read_json, write_json
from lancet_ds.run_dir import STAGE_RECORD

CONFIG_FILE = STAGE_RECORD


def finished(out: Path, marker: str, fingerprint: str, overwrite: bool, stage: str) -> bool:
    """True when `out` holds this stage's finished result for `fingerprint` (reuse it). Refuses other
    options unless `overwrite`, in which case the old result is removed (rank 0) and False returned."""
    done = (out / marker).exists()
    old = _recorded(out)
    if done and old == fingerprint and not overwrite:
        say(f"{stage}: {out} already holds this result; reusing it")
        return True
    if done and not overwrite:
        raise ConfigError(f"{out}: holds a {stage} result made with other options. Rerun with --overwrite to "
                          "replace it, or use another run directory.")
    if done:
        _clear(out)
    return False


def resumable(out: Path, marker: str, fingerprint: str, config: dict, overwrite: bool, stage: str) -> bool:
    """`finished`, for stages that keep partial progress in `out` (score parts, correction checkpoints):
    progress made with other options is refused (or cleared with `overwrite`), never resumed; the
    options are recorded before any new progress is written."""
    if finished(out, marker, fingerprint, overwrite, stage):
        return True
    old = _recorded(out)
    if old not in (None, fingerprint):
        if not overwrite:
            raise ConfigError(f"{out}: holds an unfinished {stage} run made with other options. Rerun with "
                              "--overwrite to discard it, or use another run directory.")
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    record(out, fingerprint, config)
    return False


def _recorded(out: Path) -> str | None:
    return read_json(out / CONFIG_FILE).get("fingerprint") if (out / CONFIG_FILE).exists() else None


def _clear(out: Path) -> None:
    dist_utils.barrier()
    if dist_utils.is_main():
        shutil.rmtree(out, ignore_errors=True)
    dist_utils.barrier()


def record(out: Path, fingerprint: str, config: dict, **extra) -> None:
    """Save the resolved options (rank 0); every rank returns once they are on disk."""
    if dist_utils.is_main():
        write_json(out / CONFIG_FILE, {"fingerprint": fingerprint, "config": config, **extra})
    dist_utils.barrier()
