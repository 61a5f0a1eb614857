"""Each term's gradient norm in parameter space, for the correction log (issue 14's diagnosis of IBO's strength):
‖∇_θ c_k‖ for each part c_k of the step's objective (`ibo.step.term_part`: L_COR, w·L_BD, μ·NLL_replay, …, weight
and sign included, so the parts add up to Eq. 17's objective without the proximity term, whose own norm is
`ReferencePartitions.add_gradient`'s `grad_norm_proximity`).

The terms share one forward pass in the step, and their gradients in parameter space are only ever summed by
backward, so each is measured on its own: a forward pass of the step's draw (`ibo.step.step_loss` with `term`),
a backward into the engine's gradient partitions (a ZeRO-3 engine releases the gathered weights after a backward,
so a graph is never differentiated twice), the partitions' norm over every rank
(`ReferencePartitions.gradient_norm`), and the partitions zeroed. The step's own forward and backward come after
on zeroed partitions, so the update is the one a step without this log takes (the same to the bit on CPU; a
test checks it): one more forward and backward pass per term, on the steps `term_grad_norms_every` names. Each
pass runs on a fork of the random generators, so a model with dropout draws in it the masks the step's own pass
then draws, as it would without this log.
"""

from __future__ import annotations

from typing import Callable

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.ibo.proximity import ReferencePartitions


def term_gradient_norms(engine, grads: ReferencePartitions, terms: list[str],
                        term_loss: Callable[[str], torch.Tensor]) -> dict[str, float]:
    """{"grad_norm_<term>": ‖∇_θ of its part‖} for each of `terms` (`ibo.step.method_terms`); `term_loss(term)`
    runs a forward pass and returns this rank's share of that part (as `ibo.step.step_loss` returns the loss).
    Leaves the engine's gradients zeroed. Call on every rank, before the step's own forward pass."""
    norms = {}
    here = dist_utils.device()
    for term in terms:
        engine.optimizer.zero_grad()
        with torch.random.fork_rng(devices=[] if here.type == "cpu" else [here], device_type=here.type):
            engine.backward(term_loss(term))
        norms[f"grad_norm_{term}"] = grads.gradient_norm()
    engine.optimizer.zero_grad()
    return norms
