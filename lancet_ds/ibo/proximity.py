"""The proximity term (λ_prox/2)‖θ − θ_ref‖² under ZeRO-3 (DESIGN.md section 3): θ_ref is held as each
rank's own fp32 partition, on CPU (never a full copy on one device); its gradient λ_prox(θ − θ_ref) is
added to each rank's local gradient partition between backward and the optimizer step, through
DeepSpeed's `safe_get_local_fp32_param` / `safe_get_local_grad` / `safe_set_local_grad`."""

from __future__ import annotations

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.errors import ConfigError


class ReferencePartitions:
    """A snapshot of the engine's local fp32 partitions, taken before any update."""

    def __init__(self, engine):
        from deepspeed.utils import safe_get_local_fp32_param

        if engine.zero_optimization_stage() != 3:
            raise ConfigError("post-training keeps θ_ref as ZeRO-3 partitions: use a ZeRO-3 DeepSpeed config "
                              "(ds_configs/zero3.json, zero3_offload.json or zero3_bf16.json).")
        self.engine = engine
        self.params = [p for p in engine.module.parameters() if p.requires_grad]
        self.ref = [safe_get_local_fp32_param(p).detach().float().cpu().clone() for p in self.params]

    def cpu_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.ref)

    def add_gradient(self, lam: float) -> float:
        """Add λ(θ − θ_ref) to the local gradient partitions; returns (λ/2)‖θ − θ_ref‖² over all ranks.
        Call after backward at a gradient-accumulation boundary, before `engine.step()`."""
        from deepspeed.utils import safe_get_local_fp32_param, safe_get_local_grad, safe_set_local_grad

        total = torch.zeros((), dtype=torch.float64)
        for p, ref in zip(self.params, self.ref):
            theta = safe_get_local_fp32_param(p)
            diff = theta.float() - ref.to(theta.device)
            total += diff.double().pow(2).sum().cpu()
            if lam:
                grad = safe_get_local_grad(p)
                update = lam * diff
                safe_set_local_grad(p, update.to(grad.dtype) + grad if grad is not None else update)
        dist_utils.all_reduce_sum(total)
        return float(0.5 * lam * total)
