"""DeepSpeed checkpoints of a model, read independently of the world size that wrote them.

A ZeRO checkpoint folder (`<dir>/<tag>/`) holds one optimizer-state partition per data-parallel rank;
DeepSpeed's engine can load it back directly only on the same world size. Two ways across:

* `fp32_weights` consolidates the fp32 master weights from every partition in one process through
  DeepSpeed's own `zero_to_fp32` (weights only: what an export needs, on any number of ranks);
* `universal_copy` converts the folder to DeepSpeed's universal checkpoint (`ds_to_universal`: weights
  and Adam moments per parameter, unpartitioned), which an engine built with `universal_config` loads on
  any world size (what resuming a correction on another number of ranks needs).

DeepSpeed reads these files with pickle (`torch.load(weights_only=False)`), so a run directory must be
trusted like a script.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shutil
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


_RANK_FILE = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_\d+_(?:optim|model)_states\.pt")


def drop_other_partitions(folder: Path, world: int) -> None:
    """Remove from checkpoint folder `folder` the files of ranks ≥ `world`: what an earlier save of the same
    tag on more ranks left behind (DeepSpeed never deletes them, and `saved_world_size` would count them)."""
    for path in folder.iterdir():
        m = _RANK_FILE.fullmatch(path.name)
        if m and int(m.group(1)) >= world:
            path.unlink()


UNIVERSAL_SUFFIX = ".universal"
_CONVERTED = "lancet_converted"  # written last in a universal copy: the conversion finished


def universal_copy(checkpoints: Path, tag: str) -> str:
    """Convert checkpoint `tag` under `checkpoints` to DeepSpeed's universal format, in
    `<checkpoints>/<tag>.universal` (once: a finished copy is reused); returns that copy's tag. Rank 0
    alone, CPU; peak memory about one partition plus one parameter's state; in serial (no worker
    processes: this process holds the distributed group)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    out = checkpoints / f"{tag}{UNIVERSAL_SUFFIX}"
    if not (out / _CONVERTED).exists():
        shutil.rmtree(out, ignore_errors=True)
        args = argparse.Namespace(input_folder=str(checkpoints / tag), output_folder=str(out), num_extract_workers=1,
                                  num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=False)
        with contextlib.redirect_stdout(io.StringIO()):
            ds_to_universal(args)
        (out / _CONVERTED).write_text(f"{tag}\n")
    return out.name


def remove_universal_copies(checkpoints: Path) -> None:
    """Delete every universal copy under `checkpoints` and ds_to_universal's `latest_universal` pointer (rank 0)."""
    for copy in checkpoints.glob(f"*{UNIVERSAL_SUFFIX}"):
        shutil.rmtree(copy)
    (checkpoints / "latest_universal").unlink(missing_ok=True)


def universal_config(ds_config: dict[str, Any]) -> dict[str, Any]:
    """`ds_config` for an engine that loads a universal checkpoint (saves stay ordinary checkpoints)."""
    return {**ds_config, "checkpoint": {**ds_config.get("checkpoint", {}), "load_universal": True}}


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
