"""Bench runs that share finished stages: a run directory reuses another's stage directories."""

from __future__ import annotations

from lancet_ds import distributed as dist_utils
from lancet_ds.run_dir import RunDir


def link_parts(src: RunDir, dst: RunDir, parts=("factors", "queries", "recall", "scores")) -> None:
    """`dst` reuses `src`'s finished stage directories (symlinks, made by rank 0)."""
    dst.root.mkdir(parents=True, exist_ok=True)
    if dist_utils.is_main():
        for part in parts:
            if not getattr(dst, part).exists():
                getattr(dst, part).symlink_to(getattr(src, part).resolve())
    dist_utils.barrier()
