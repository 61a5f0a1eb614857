"""Checkpoints of a pass's running sums, so a killed fit resumes where it stopped and ends with the
same factors. Each rank writes its own file per checkpoint (`<phase>-p<passes>-rank<r>-of-<world>`);
a checkpoint counts only when every rank's file exists with the same run fingerprint; older ones are
removed once a newer one is complete."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from lancet_ds import distributed as dist_utils
from lancet_ds.influence.factor_store import save_tensors

_NAME = re.compile(r"(?P<phase>\w+)-p(?P<p>\d{8})-rank(?P<r>\d{5})-of-(?P<w>\d{5})\.safetensors")


def _file(directory: Path, phase: str, passes: int, rank: int, world: int) -> Path:
    return directory / f"{phase}-p{passes:08d}-rank{rank:05d}-of-{world:05d}.safetensors"


def latest(directory: Path, phase: str, world: int, fingerprint: str) -> int:
    """The most passes for which every rank has a checkpoint with this fingerprint (0 if none)."""
    from safetensors import safe_open

    ranks: dict[int, set[int]] = {}
    for f in directory.glob(f"{phase}-p*.safetensors") if directory.exists() else []:
        m = _NAME.fullmatch(f.name)
        if not m or int(m["w"]) != world:
            continue
        try:
            with safe_open(str(f), "pt") as fh:
                if (fh.metadata() or {}).get("fingerprint") != f'"{fingerprint}"':
                    continue
        except Exception:
            continue
        ranks.setdefault(int(m["p"]), set()).add(int(m["r"]))
    complete = [p for p, rs in ranks.items() if rs == set(range(world))]
    return max(complete, default=0)


def save(directory: Path, phase: str, passes: int, sums: dict[str, dict[str, torch.Tensor]], fingerprint: str) -> None:
    rank, world = dist_utils.rank(), dist_utils.world_size()
    flat = {f"{name}.{key}": t for name, d in sums.items() for key, t in d.items()}
    target = _file(directory, phase, passes, rank, world)
    save_tensors(target, flat, {"fingerprint": fingerprint, "passes": passes})
    dist_utils.barrier()
    for old in directory.glob(f"{phase}-p*-rank{rank:05d}-of-{world:05d}.safetensors"):
        if old != target:
            old.unlink()


def load(directory: Path, phase: str, passes: int, home: torch.device | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """This rank's sums of checkpoint `passes`, on `home` (the device by default)."""
    flat = load_file(str(_file(directory, phase, passes, dist_utils.rank(), dist_utils.world_size())))
    sums: dict[str, dict[str, torch.Tensor]] = {}
    for full, t in flat.items():
        name, key = full.rsplit(".", 1)
        sums.setdefault(name, {})[key] = t.to(home or dist_utils.device())
    return sums
