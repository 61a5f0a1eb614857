"""Hugging Face causal LMs under DeepSpeed (DESIGN.md section 4): configs, partitioned loading,
engines, and consolidated export.

* `HfDeepSpeedConfig` is created before `from_pretrained` when the config is ZeRO-3, so weights are
  partitioned as they load; it is kept alive on the model (transformers holds it only weakly).
* `trust_remote_code` stays off unless the caller asks for it.
* Saving a ZeRO-3 model gathers it layer by layer to rank 0 (every rank must call `save_model`).
* A job runs its stages in one process, so a stage frees its engines when it returns (`releases_engines`).
"""

from __future__ import annotations

import copy
import functools
import gc
import json
import shutil
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.errors import ConfigError
from lancet_ds.fingerprint import WEIGHT_SUFFIXES
from lancet_ds.packaged import DS_CONFIGS

_ENGINES: weakref.WeakSet = weakref.WeakSet()
"""Every engine `make_engine` and `make_inference_engine` built that is still alive (held weakly)."""


def release_engine(engine) -> None:
    """Let a finished engine's weights, gradients and optimizer state be freed. DeepSpeed's `destroy` removes
    its hooks and optimizer buffers, but DeepSpeed 0.19 still keeps the module alive for the rest of the
    process from two globals (seen on a GPU as one more weights shard left per stage of a job): ZeRO-3's
    forward-module stack, to which every engine's top module is appended and never removed, and the
    class-level `lru_cache` of the parameter coordinator's release sets, keyed by coordinator and submodule.
    The module and its submodules (left there by a forward that raised) leave the stack; the cache is cleared
    (for live engines it is only a cache)."""
    from deepspeed.runtime.zero import parameter_offload
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

    engine.destroy()
    stack = parameter_offload.FWD_MODULE_STACK
    mine = {id(m) for m in engine.module.modules()}
    stack[:] = [m for m in stack if id(m) not in mine]
    release_sets = getattr(PartitionedParameterCoordinator, "_PartitionedParameterCoordinator__params_to_release", None)
    for cached in [release_sets, *(c.cell_contents for c in getattr(release_sets, "__closure__", None) or ())]:
        if hasattr(cached, "cache_clear"):  # under DeepSpeed's NVTX wrapper, in its closure
            cached.cache_clear()
    _ENGINES.discard(engine)


def releases_engines(fn):
    """Decorate a stage function: the engines it built are released when it returns or raises, and the
    memory they held goes back to the allocator (and the accelerator's cache) before the next stage."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        before, finished = {id(e) for e in _ENGINES}, False
        try:
            out = fn(*args, **kwargs)
            finished = True
            return out
        finally:
            _release_engines_since(before)  # in a function of its own: no local here may hold an engine
            gc.collect()
            if finished and dist_utils.device().type == "cuda":  # never wait on a failed rank's pending work
                torch.cuda.synchronize()
                torch.cuda.empty_cache()

    return wrapper


def _release_engines_since(before: set[int]) -> None:
    for engine in [e for e in _ENGINES if id(e) not in before]:
        try:
            release_engine(engine)
        except Exception as exc:  # noqa: BLE001 - never hide the stage's own error behind a failed clean-up
            warnings.warn(f"could not release a DeepSpeed engine ({exc.__class__.__name__}: {exc}); its memory "
                          "stays allocated until the process ends", RuntimeWarning, stacklevel=2)


def load_ds_config(path: str | Path, **overrides: Any) -> dict[str, Any]:
    """The DeepSpeed JSON config at `path`, with top-level `overrides` (None values ignored)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: DeepSpeed config not found. Pass --ds-config with one of "
                          f"{sorted(x.name for x in DS_CONFIGS.glob('*.json'))} from ds_configs/, or your own.")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}). Fix the DeepSpeed config.") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: a DeepSpeed config must be a JSON object.")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def zero_stage(ds_config: dict[str, Any]) -> int:
    return int(ds_config.get("zero_optimization", {}).get("stage", 0))


def check_model_dir(model_dir: str | Path, option: str = "--model") -> Path:
    """`model_dir` as a Path, or a ConfigError telling the user to point `option` (the command-line flag, or the
    job file's key) at a save_pretrained directory."""
    p = Path(model_dir)
    if not (p / "config.json").is_file():
        raise ConfigError(f"{model_dir}: not a Hugging Face model directory (no config.json). "
                          f"Point {option} at a directory written by save_pretrained.")
    for f in _weight_files(p, option):
        if f.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(f), "pt"):  # reads the header alone: a truncated or foreign file fails here
                    pass
            except (SafetensorError, OSError) as exc:
                raise ConfigError(f"{f}: not a readable safetensors file ({exc}); copy the model again or point "
                                  f"{option} at another save_pretrained directory.") from None
    return p


def _weight_files(p: Path, option: str) -> list[Path]:
    """The weight files `from_pretrained` reads in `p`: the shards a `*.index.json` names (each must exist), else the
    visible `*.safetensors` / `*.bin` / `*.pt` files (a copy's hidden `._model.safetensors` is no weight file). A
    ConfigError when there are none."""
    for index in sorted(p.glob("*.index.json")):
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue  # not a weight index: left to from_pretrained
        missing = [s for s in shards if not (p / s).is_file()]
        if missing:
            raise ConfigError(f"{index}: names weight shards that are not there ({', '.join(missing[:3])}"
                              f"{' …' if len(missing) > 3 else ''}); copy the model again.")
        return [p / s for s in shards]
    weights = sorted(f for f in p.iterdir() if f.suffix in WEIGHT_SUFFIXES and not f.name.startswith("."))
    if not weights:
        raise ConfigError(f"{p}: no weights beside config.json (no {', '.join('*' + s for s in WEIGHT_SUFFIXES)}"
                          f" file). Point {option} at a directory written by save_pretrained, weights included.")
    return weights


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer saved with the model (a pad token is borrowed from EOS when it has none)."""
    from transformers import AutoTokenizer

    if not Path(path).is_dir():
        raise ConfigError(f"{path}: no such directory; a tokenizer is read from the model directory.")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot load a tokenizer ({exc}). Save one beside the model "
                          "weights with tokenizer.save_pretrained.") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_dir: str | Path, ds_config: dict[str, Any], trust_remote_code: bool = False,
               dtype: torch.dtype = torch.float32):
    """The causal LM in `model_dir`, partitioned at load when `ds_config` is ZeRO-3."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    check_model_dir(model_dir)
    # the HfDeepSpeedConfig of a model loaded before (e.g. the ZeRO-3 reference) is global: without this
    # a ZeRO-2 model would be loaded partitioned
    unset_hf_deepspeed_config()
    keepalive = HfDeepSpeedConfig(copy.deepcopy(ds_config)) if zero_stage(ds_config) == 3 else None
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=trust_remote_code, dtype=dtype)
    except OSError as exc:  # what `check_model_dir` lets through; every rank reads the same files, so all stop
        raise ConfigError(f"{model_dir}: the weights do not load ({' '.join(str(exc).split())}). Copy the model "
                          "again, or point at another save_pretrained directory.") from None
    model._lancet_hf_ds_config = keepalive
    return model


def load_plain(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """`from_pretrained` with no ZeRO-3 partitioning, on this rank alone (e.g. rank 0 checking an export)
    even while a ZeRO-3 model is loaded: the global HfDeepSpeedConfig would otherwise make it collective."""
    from transformers import AutoModelForCausalLM
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)


def make_engine(model, ds_config: dict[str, Any]):
    """A DeepSpeed training engine over `model` (optimizer and scheduler from `ds_config`)."""
    import deepspeed

    dist_utils.init_distributed()
    params = [p for p in model.parameters() if p.requires_grad]
    try:
        engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=copy.deepcopy(ds_config))
    except AssertionError as exc:
        raise ConfigError(f"DeepSpeed rejected the config for world size {dist_utils.world_size()}: {exc}") from None
    _ENGINES.add(engine)
    return engine


def consolidated_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The full state dict on rank 0 (None elsewhere). Collective under ZeRO-3: call on every rank."""
    if engine.zero_optimization_stage() == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()
        return sd if dist_utils.is_main() else None
    return engine.module.state_dict() if dist_utils.is_main() else None


def save_model(engine, out_dir: str | Path, tokenizer=None, max_shard_size: str = "2GB") -> None:
    """Write a Hugging Face checkpoint (safetensors) of the engine's weights to `out_dir`, atomically.
    Every rank must call it."""
    out = Path(out_dir)
    sd = consolidated_state_dict(engine)
    if dist_utils.is_main():
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        engine.module.save_pretrained(str(tmp), state_dict=sd, safe_serialization=True, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    dist_utils.barrier()


def local_and_full_numel(model) -> tuple[int, int]:
    """(elements this rank holds, elements of the full model): shows the ZeRO-3 partitioning."""
    local = sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in model.parameters())
    full = sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters())
    return local, full


def make_inference_engine(model, ds_config: dict[str, Any]):
    """A DeepSpeed engine with no optimizer over a frozen `model` in eval mode: ZeRO-3 still partitions
    and gathers its weights. Gradients can flow to activations (the influence passes) but never to the
    weights. Call `engine.module(...)` for forward passes whose backward goes through
    `torch.autograd.backward`."""
    import deepspeed

    dist_utils.init_distributed()
    cfg = {k: v for k, v in copy.deepcopy(ds_config).items() if k not in ("optimizer", "scheduler")}
    if zero_stage(cfg) < 3:  # stages 1-2 shard optimizer state only: with no optimizer, plain data parallel
        cfg["zero_optimization"] = {"stage": 0}
    model.requires_grad_(False)
    model.eval()
    engine, *_ = deepspeed.initialize(model=model, config=cfg)
    engine.eval()
    _ENGINES.add(engine)
    return engine
