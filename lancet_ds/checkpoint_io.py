"""DeepSpeed checkpoints of a model, read independently of the world size that wrote them.

A ZeRO checkpoint folder (`<dir>/<tag>/`) holds one optimizer-state partition per data-parallel rank;
DeepSpeed's engine can load it back only on the same world size. `fp32_weights` consolidates the fp32
master weights from every partition in one process through DeepSpeed's own `zero_to_fp32` (weights
only: what an export needs, on any number of ranks). DeepSpeed reads these files with pickle
(`torch.load(weights_only=False)`), so a run directory must be trusted like a script.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from lancet_ds.errors import ConfigError

_PARTITION = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt")


def saved_world_size(folder: Path) -> int:
    """The data-parallel world size that wrote the checkpoint folder `folder` (`<dir>/<tag>`)."""
    ranks = {int(m.group(1)) for p in folder.iterdir() if (m := _PARTITION.fullmatch(p.name))}
    if not ranks:
        raise ConfigError(f"{folder}: no ZeRO optimizer partitions (zero_pp_rank_*_optim_states.pt); not a "
                          "checkpoint written by `lancet-ds correct`. Rerun the correction.")
    return max(ranks) + 1


def model_dtype(ds_config: dict[str, Any]) -> torch.dtype:
    """The dtype the engine's module had under `ds_config` (what its 16-bit consolidation would save)."""
    if ds_config.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def fp32_weights(checkpoints: Path, tag: str) -> dict[str, torch.Tensor]:
    """The full fp32 state dict of checkpoint `tag` under `checkpoints`, from any saved world size (CPU,
    this process alone; peak memory: the model in fp32 plus one partition)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(checkpoints), tag=tag)


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Copy `state` into `model` (cast to its dtype); only weights tied to another may be absent."""
    missing, unexpected = model.load_state_dict({k: v.to(model.dtype) for k, v in state.items()}, strict=False)
    tied = {k for k in missing if _tied(model, k)}
    if set(missing) - tied or unexpected:
        raise ConfigError(f"{where}: the checkpoint does not fit the model (missing {sorted(set(missing) - tied)[:5]}, "
                          f"unexpected {sorted(unexpected)[:5]}); export with the model the correction started from.")
    if tied:
        model.tie_weights()


def _tied(model: torch.nn.Module, key: str) -> bool:
    out = model.get_output_embeddings()
    return out is not None and key.startswith("lm_head") and out.weight is model.get_input_embeddings().weight
