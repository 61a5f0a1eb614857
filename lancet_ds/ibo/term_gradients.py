"""Each term's gradient norm in parameter space, for the correction log (issue 14's diagnosis of IBO's strength):
‖∇_θ c_k‖ for each part c_k of the step's objective (`ibo.step.term_part`: L_COR, w·L_BD, μ·NLL_replay, …, weight
and sign included, so the parts add up to Eq. 17's objective without the proximity term, whose own norm is
`ReferencePartitions.add_gradient`'s `grad_norm_proximity`).

The terms share one forward pass in the step, and their gradients in parameter space are only ever summed by
backward, so each is measured on its own: a forward pass of the step's draw (`ibo.step.step_loss` with `term`),
a backward into the engine's gradient partitions (a ZeRO-3 engine releases the gathered weights after a backward,
so a graph is never differentiated twice), the partitions' norm over every rank
(`ReferencePartitions.gradient_norm`), and the gradients reset (`zero_grad`). The step's own forward and backward
come after on reset gradients, so the update is the one a step without this log takes (the same to the bit on CPU; a
test checks it): one more forward and backward pass per term, on the steps `term_grad_norms_every` names. Each
pass runs on a fork of the random generators, so a model with dropout draws in it the masks the step's own pass
then draws, as it would without this log.

That relies on DeepSpeed overwriting, not adding to, what the term passes left, once `zero_grad` has reset its
micro-step count: ZeRO-3 copies a step's first backward over its gradient partitions (every parameter gets a
gradient in every pass: a term with no local items is still on the graph, `ibo.step.step_loss`), and so do
ZeRO-1/2 in fp32 without optimizer offload. With offload, or in bf16/fp16, ZeRO-1/2 may add into buffers they
clear only at the optimizer step: `unsupported_reason` refuses those (the correct stage refuses ZeRO-0 itself,
`ibo.proximity.unsupported_reason`). Under fp16 the norms are read without the loss
scale the gradients carry until the step (`ReferencePartitions.gradient_norm`).
"""

from __future__ import annotations

from typing import Callable

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.checkpoint_io import model_dtype
from lancet_ds.ibo.proximity import ReferencePartitions
from lancet_ds.modeling import zero_stage


def unsupported_reason(ds_config: dict) -> str | None:
    """Why the per-term passes would not leave the update as it is (or not measure the terms) under `ds_config`, with
    what to do; None where they do."""
    stage, dtype = zero_stage(ds_config), model_dtype(ds_config)
    if stage == 3:
        return None
    if ds_config.get("zero_optimization", {}).get("offload_optimizer"):
        return (f"ZeRO stage {stage} with optimizer offload adds every backward's gradients into buffers it clears "
                "only at the optimizer step, so the term passes would change the update; use a ZeRO-3 config "
                "(ds_configs/zero3_offload.json) or drop the option")
    if dtype != torch.float32:
        half, config = ("bf16", "ds_configs/zero3_bf16.json") if dtype == torch.bfloat16 else \
            ("fp16", 'ds_configs/zero3.json with "fp16": {"enabled": true} added')
        return (f"ZeRO stage {stage} in {half} may add every backward's gradients into buffers it clears only at the "
                f"optimizer step, so the term passes would change the update; use a ZeRO-3 config ({config}) or drop "
                "the option")
    return None


def term_gradient_norms(engine, grads: ReferencePartitions, terms: list[str],
                        term_loss: Callable[[str], torch.Tensor]) -> dict[str, float]:
    """{"grad_norm_<term>": ‖∇_θ of its part‖} for each of `terms` (`ibo.step.method_terms`); `term_loss(term)`
    runs a forward pass and returns this rank's share of that part (as `ibo.step.step_loss` returns the loss);
    `grads` reads the engine's gradient. Leaves the engine reset by `zero_grad`, for the step's own forward and
    backward. Call on every rank, under a config `unsupported_reason` passes."""
    norms = {}
    here = dist_utils.device()
    for term in terms:
        engine.optimizer.zero_grad()
        with torch.random.fork_rng(devices=[] if here.type == "cpu" else [here], device_type=here.type):
            engine.backward(term_loss(term))
        norms[f"grad_norm_{term}"] = grads.gradient_norm()
    engine.optimizer.zero_grad()
    return norms
