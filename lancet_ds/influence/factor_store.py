"""Factors on disk: per-rank safetensors shards under `RUN_DIR/factors/` plus `index.json`
(`{"weight_map": {tensor: file}, "metadata": {...}}`), written atomically (DESIGN.md section 2).

Tensor names: `<sublayer>.A`, `.S` (LinFAC: the normalised factors of Eq. 11; EK-FAC: token-mean
covariances, `<sublayer>` then being the Linear's module name), `.QA`, `.LA`, `.QS`, `.LS`
(eigenvectors as columns, eigenvalues) and `.Lambda` when eigenvalue-corrected. Every shard carries
the metadata too (model fingerprint, sublayer names, method, fisher type, damping rule, sequence and
token counts, dtype, lancet_ds version). `load_factors` refuses files that are missing, corrupt, or
made for another model or sublayer set, saying why.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lancet_ds.errors import ConfigError
from lancet_ds.fileio import read_json, write_json
from lancet_ds.run_dir import SHARD_INDEX

FACTOR_KEYS = ("A", "S", "QA", "LA", "QS", "LS", "Lambda")


def shard_name(rank: int, world: int, prefix: str = "factors") -> str:
    return f"{prefix}-{rank:05d}-of-{world:05d}.safetensors"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write a safetensors file atomically; metadata values are stored as JSON strings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata={k: json.dumps(v) for k, v in metadata.items()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_shard(directory: Path, rank: int, world: int, tensors: dict[str, torch.Tensor], metadata: dict[str, Any],
               prefix: str = "factors") -> str:
    """Write one rank's tensors and return the shard's file name."""
    name = shard_name(rank, world, prefix)
    save_tensors(directory / name, tensors, metadata)
    return name


def write_index(directory: Path, weight_map: dict[str, str], metadata: dict[str, Any]) -> None:
    write_json(directory / SHARD_INDEX, {"weight_map": dict(sorted(weight_map.items())), "metadata": metadata})


def load_factors(directory: str | Path, model_fingerprint: str | None = None, sublayers: list[str] | None = None,
                 only: set[str] | None = None, keys: tuple[str, ...] = FACTOR_KEYS
                 ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """{sublayer: {A, S, QA, LA, QS, LS[, Lambda]}} and the metadata; validated as the module says. With
    `only` (sublayer names) and `keys`, just those tensors are read from the shards (a rank loads what it owns)."""
    d = Path(directory)
    index_path = d / SHARD_INDEX
    if not index_path.is_file():
        raise ConfigError(f"{index_path}: no factor index. Run `lancet-ds fit` for this run directory first.")
    try:
        index = read_json(index_path)
        weight_map, meta = index["weight_map"], index["metadata"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{index_path}: not a valid factor index ({exc}). Rerun `lancet-ds fit`.") from None
    if model_fingerprint is not None and meta.get("model_fingerprint") != model_fingerprint:
        raise ConfigError(f"{d}: these factors were fitted on another model (fingerprint "
                          f"{str(meta.get('model_fingerprint'))[:12]}…, this model {model_fingerprint[:12]}…). "
                          "Refit with `lancet-ds fit` for this model.")
    if sublayers is not None and sorted(meta.get("sublayers", [])) != sorted(sublayers):
        raise ConfigError(f"{d}: the factors cover sublayers {meta.get('sublayers')}, but {sublayers} were asked "
                          "for. Refit with the same sublayer selection.")
    wanted = {t for t in weight_map if (only is None or t.rsplit(".", 1)[0] in only) and t.rsplit(".", 1)[1] in keys}
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted({weight_map[t] for t in wanted}):
        path = d / file
        try:
            with safe_open(str(path), "pt") as fh:
                tensors.update({t: fh.get_tensor(t) for t in fh.keys() if t in wanted})
        except (SafetensorError, OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the factor shard ({exc}). It is missing or corrupt; "
                              "rerun `lancet-ds fit`.") from None
    missing = sorted(wanted - set(tensors))
    if missing:
        raise ConfigError(f"{d}: the index names tensors no shard holds: {missing[:5]}. Rerun `lancet-ds fit`.")
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for full, t in tensors.items():
        sub, key = full.rsplit(".", 1)
        if key in FACTOR_KEYS:
            factors.setdefault(sub, {})[key] = t
    return factors, meta
