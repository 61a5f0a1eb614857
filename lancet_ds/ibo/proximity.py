"""The proximity term (λ_prox/2)‖θ − θ_ref‖² of IBO (DESIGN.md section 3, Eq. 17), added as a gradient
λ_prox(θ − θ_ref) between backward and the optimizer step, never as a loss over gathered weights. The
formula is `ibo.objective.proximity`, applied here to each parameter (or partition) in turn.

* ZeRO-3: θ_ref is each rank's own fp32 partition, on CPU (never a full copy on one device); the
  gradient goes into each rank's local gradient partition through DeepSpeed's
  `safe_get_local_fp32_param` / `safe_get_local_grad` / `safe_set_local_grad`.
* ZeRO-1/2 (small models; every rank holds the full weights anyway): θ_ref is a full fp32 copy on CPU
  and the gradient goes through `safe_get_full_fp32_param` / `safe_get_full_grad` / `safe_set_full_grad`.

Between backward and the step DeepSpeed's gradients carry the loss scale (fp16's, static or dynamic, or the torch
GradScaler's under `torch_autocast` in fp16; 1 in fp32 and bf16), which the step divides out: the proximity gradient
is added at that scale, and the norms are read without it.
"""

from __future__ import annotations

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.ibo.objective import proximity
from lancet_ds.modeling import zero_stage


def unsupported_reason(ds_config: dict) -> str | None:
    """Why `ReferencePartitions` cannot snapshot θ_ref and reach the gradients under `ds_config`, with what to do;
    None where it can (ZeRO stages 1-3, whose optimizers keep the fp32 weights DeepSpeed's `safe_get_*` read)."""
    if zero_stage(ds_config) == 0:
        return ("zero_optimization.stage is 0 (or missing): ZeRO stage 0 keeps no fp32 weights for DeepSpeed's "
                "safe_get_full_fp32_param to read (it returns None), so the reference θ_ref of the proximity term and "
                "the logged gradient norms cannot be read; use a ZeRO-1/2/3 config (ds_configs/zero2.json, zero3.json)")
    return None


class ReferencePartitions:
    """A snapshot of the engine's fp32 weights (local partitions under ZeRO-3), taken before any update."""

    def __init__(self, engine):
        from deepspeed import utils as ds_utils

        self.partitioned = engine.zero_optimization_stage() == 3
        kind = "local" if self.partitioned else "full"
        self._get_param = getattr(ds_utils, f"safe_get_{kind}_fp32_param")
        self._get_grad = getattr(ds_utils, f"safe_get_{kind}_grad")
        self._set_grad = getattr(ds_utils, f"safe_set_{kind}_grad")
        self.optimizer = engine.optimizer
        self.params = [p for p in engine.module.parameters() if p.requires_grad]
        self.ref = [self._get_param(p).detach().float().cpu().clone() for p in self.params]

    def cpu_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.ref)

    def loss_scale(self) -> float:
        """The factor the engine's gradients carry from backward to the optimizer step, which divides it out: under
        DeepSpeed's `torch_autocast` in fp16 its torch GradScaler's scale, else the ZeRO optimizer's loss scale (fp16's,
        static or dynamic; 1 in fp32 and bf16)."""
        scaler = getattr(self.optimizer, "torch_autocast_gradscaler", None)
        if scaler is not None:
            return float(scaler.get_scale())
        return float(getattr(self.optimizer, "loss_scale", None) or 1.0)

    def gradient_norm(self) -> float:
        """The norm in parameter space of the gradient the engine holds now (after a backward, before the step), of the
        whole model, without the loss scale: this rank's partitions' squares, summed over ranks under ZeRO-3. Call on
        every rank."""
        sums: dict[torch.device, torch.Tensor] = {}
        for p in self.params:
            grad = self._get_grad(p)
            if grad is not None:
                _add_on_device(sums, grad.double().pow(2).sum())
        total = _on_host(sums, ())
        if self.partitioned:
            dist_utils.all_reduce_sum(total)
        return float(total.sqrt()) / self.loss_scale()

    def add_gradient(self, lam: float) -> dict[str, float]:
        """Add λ(θ − θ_ref) to the gradients. Returns, of the whole model: `proximity`, the term's value
        (λ/2)‖θ − θ_ref‖², and the norms in parameter space of the two parts of the step's gradient,
        `grad_norm_terms` (the objective's terms together: what backward left) and `grad_norm_proximity`
        (‖λ(θ − θ_ref)‖), both without the loss scale. Value and gradient come from `objective.proximity`, per
        partition; the gradient is added at the loss scale the engine's gradients carry. Call on every rank after
        backward at a gradient-accumulation boundary, before `engine.step()`."""
        scale = self.loss_scale()
        sums: dict[torch.device, torch.Tensor] = {}  # per device: the value, ‖terms' gradient‖², ‖proximity's‖²
        for p, ref in zip(self.params, self.ref):
            value, update = proximity(self._get_param(p).detach(), ref, lam)
            grad = self._get_grad(p)
            terms = grad.double().pow(2).sum() if grad is not None else torch.zeros_like(value)
            _add_on_device(sums, torch.stack([value, terms.to(value.device), update.double().pow(2).sum()]))
            if lam:
                scaled = update * scale  # exact at 1
                self._set_grad(p, scaled.to(grad.dtype) + grad if grad is not None else scaled)
        total = _on_host(sums, (3,))
        if self.partitioned:
            dist_utils.all_reduce_sum(total)
        return {"proximity": float(total[0]), "grad_norm_terms": float(total[1].sqrt()) / scale,
                "grad_norm_proximity": float(total[2].sqrt())}


def _add_on_device(sums: dict[torch.device, torch.Tensor], part: torch.Tensor) -> None:
    """Add `part` to the running sum kept on its own device (no host copy per parameter)."""
    sums[part.device] = sums[part.device] + part if part.device in sums else part


def _on_host(sums: dict[torch.device, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """The per-device sums added on the host (one copy per device), float64 of `shape`."""
    return sum((t.cpu() for t in sums.values()), torch.zeros(shape, dtype=torch.float64))
