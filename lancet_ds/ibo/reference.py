"""The frozen reference π_ref (DESIGN.md sections 3–4): its own DeepSpeed engine built from the
checkpoint on disk (never a deepcopy of the policy), ZeRO-3 with parameters offloaded to CPU, no
optimizer, eval mode, no gradients. It computes each selected sample's per-token log-probs once;
they are cached under `RunDir.ref_logprobs` (safetensors: flat `logprobs` + `offsets`, ids in
`index.json`) and reused on rerun when the model and the sample set are unchanged."""

from __future__ import annotations

import copy

import torch
from safetensors.torch import load_file

from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.records import EncodedSample
from lancet_ds.fileio import read_json, write_json
from lancet_ds.influence.factor_store import save_tensors
from lancet_ds.fingerprint import json_fingerprint
from lancet_ds.logprobs import response_token_logprobs
from lancet_ds.modeling import load_model, make_inference_engine, releases_engines, zero_stage
from lancet_ds.run_dir import RunDir
from lancet_ds.stage_guard import cached, record


def offloaded_config(ds_config: dict) -> dict:
    """The reference's DeepSpeed config: ZeRO-3 with parameters offloaded to CPU."""
    cfg = copy.deepcopy(ds_config)
    zero = dict(cfg.get("zero_optimization", {}))
    zero["stage"] = 3
    zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    zero.pop("offload_optimizer", None)
    cfg["zero_optimization"] = zero
    return cfg


def build_reference(model_dir: str, ds_config: dict):
    """The frozen reference engine (collective: every rank calls it)."""
    cfg = offloaded_config(ds_config)
    engine = make_inference_engine(load_model(model_dir, cfg), cfg)
    assert zero_stage(cfg) == 3
    return engine


def reference_facts(engine) -> dict:
    """What the reference engine is, as measured: its partitions per rank, where they live, whether it
    has an optimizer, is in eval mode, or was ever stepped."""
    params = list(engine.module.parameters())
    local = sum(p.ds_tensor.numel() for p in params)
    devices = sorted({str(p.ds_tensor.device) for p in params})
    return {"local_numel_per_rank": dist_utils.all_gather_object(local),
            "local_bytes_per_rank": dist_utils.all_gather_object(sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in params)),
            "full_numel": sum(p.ds_numel for p in params), "partition_devices": devices,
            # with no optimizer, ZeRO-3 still installs its parameter manager (DeepSpeedZeRoOffload) there
            "optimizer": None if type(engine.optimizer).__name__ in ("NoneType", "DeepSpeedZeRoOffload")
            else type(engine.optimizer).__name__,
            "parameter_manager": type(engine.optimizer).__name__,
            "training_mode": engine.module.training, "requires_grad": any(p.requires_grad for p in params),
            "global_steps": engine.global_steps}


@releases_engines
def reference_logprobs(run: RunDir, model_dir: str, model_fp: str, samples: list[EncodedSample], ds_config: dict,
                       pad_id: int, micro_batch: int) -> dict[str, torch.Tensor]:
    """{sample id: per-token reference log-probs}, computed once and cached in `run.ref_logprobs`."""
    out = run.ref_logprobs
    config = {"model": model_fp, "samples": json_fingerprint([(s.id, s.input_ids, s.loss_mask) for s in samples])}
    key = json_fingerprint(config)
    if cached(out, run.ref_logprobs_index.name, key, config, "reference log-probs"):
        index = read_json(run.ref_logprobs_index)
        flat = load_file(str(run.ref_logprobs_tensors))
        off = flat["offsets"].tolist()
        return {sid: flat["logprobs"][off[i]:off[i + 1]] for i, sid in enumerate(index["ids"])}
    engine = build_reference(model_dir, ds_config)
    say(f"reference log-probs: {len(samples)} samples on the CPU-offloaded reference")
    per = response_token_logprobs(engine.module, samples, pad_id, micro_batch)
    facts = reference_facts(engine)
    record(out, key, config)
    if dist_utils.is_main():
        offsets = torch.tensor([0] + [len(t) for t in per]).cumsum(0)
        save_tensors(run.ref_logprobs_tensors, {"logprobs": torch.cat(per) if per else torch.zeros(0),
                                                "offsets": offsets}, {"fingerprint": key})
        write_json(run.ref_logprobs_index, {"fingerprint": key, "ids": [s.id for s in samples],
                                            "reference_engine": facts})  # the marker: written last
    dist_utils.barrier()
    return {s.id: t for s, t in zip(samples, per)}
