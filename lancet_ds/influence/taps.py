"""Forward/backward taps on (possibly ZeRO-3-partitioned) modules.

A tap point has an input module and an output module (the same module for most sublayers). The tap
reads the input module's input activation a (B, T, M) in the forward pass and registers a tensor hook
on the output module's output s (B, T, P); when autograd delivers g = ∂L/∂s, the tap hands
(a, g) to a consumer and lets both go. Only activations and their gradients are read — never the
partitioned weights — so the taps add no all-gathers, work with DeepSpeed's prefetching, and work
under gradient checkpointing (the hook that fires is the one on the tensor autograd actually reaches;
a recomputed forward only refreshes the stored input with identical values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

Consumer = Callable[[str, torch.Tensor, torch.Tensor], None]
Gate = Callable[[str, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TapPoint:
    name: str
    input_module: str
    output_module: str


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor:
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for key in ("hidden_states", "input", "x"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return kwargs[key]
    raise RuntimeError("a tapped module was called without a tensor input")


def _output_tensor(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class Taps:
    """Context manager installing taps on `model` for `points`; `consumer(name, *gate(name, a, g))` runs in
    backward (`pass_scale.PassScale.gate`: unscaling, checks)."""

    def __init__(self, model: nn.Module, points: Sequence[TapPoint], consumer: Consumer, gate: Gate):
        self.model, self.points, self.consumer, self.gate = model, list(points), consumer, gate
        self._inputs: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def __enter__(self) -> "Taps":
        modules = dict(self.model.named_modules())
        for p in self.points:
            self._handles.append(modules[p.input_module].register_forward_pre_hook(self._pre_hook(p), with_kwargs=True))
            self._handles.append(modules[p.output_module].register_forward_hook(self._post_hook(p)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._inputs.clear()

    def _pre_hook(self, point: TapPoint):
        def hook(module, args, kwargs):
            self._inputs[point.name] = _first_tensor(args, kwargs).detach()
        return hook

    def _post_hook(self, point: TapPoint):
        def hook(module, args, output):
            s = _output_tensor(output)
            if not s.requires_grad:
                return
            a = self._inputs[point.name]

            def on_grad(g: torch.Tensor):
                self.consumer(point.name, *self.gate(point.name, a, g.detach()))

            s.register_hook(on_grad)
        return hook
