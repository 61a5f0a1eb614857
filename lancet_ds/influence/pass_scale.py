"""The loss scale of the influence passes, and their check that every gradient the taps hand on is finite.

The passes backpropagate the summed response loss L (Eq. 10-11: the curvature factors, the query gradients
and the scores all read g = ∂L/∂s at the tapped sublayers). A float16 model computes g in float16, where
values below 6.1e-5 lose precision and those below 6e-8 become 0: on a demo world's 4-layer model half the
last sublayer's gradient entries are that small, and they shrink with width and depth. So under float16 the
passes backpropagate s·L instead and the taps hand the consumers g / s in float32, as mixed-precision
training does (DeepSpeed's dynamic loss scale; kronfluence's `amp_scale`).

A scale that is too large overflows to inf. Training would skip the step; a pass may not skip its data, so
it is redone at s/2. A tap point whose gradient was finite in the first try has already been counted; in the
redo the taps hand it zeros (a and g), which every consumer's contribution (LinFAC/EK-FAC sums, Λ̂, query
gradients, scores) turns into an exact 0, so each point counts each batch once. Every rank redoes the pass
when any rank overflowed (one all-reduce per pass): ranks stay in step for ZeRO-3's gathers and the
consumers' broadcasts. After `growth_interval` clean passes the scale doubles, to keep small gradients
representable.

In float32 and bfloat16 (float32's exponent range) the scale is 1 and a non-finite gradient or activation
can only come from the model or the data: the pass stops with an error naming the sublayers and samples.
"""

from __future__ import annotations

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.errors import LancetError

FP16_INITIAL_SCALE = 2.0 ** 16  # DeepSpeed's and kronfluence's start
FP16_MIN_SCALE = 2.0 ** -10  # below 1: an activation gradient may exceed float16's 65504 unscaled
GROWTH_INTERVAL = 1000  # clean passes before the scale doubles (DeepSpeed's loss_scale_window)


class NonFiniteGradientError(LancetError):
    """An influence pass met NaN or inf that no loss scale removes."""


class PassScale:
    """The scale s of one sequence of passes. Call `gate` from the taps and `finish` after each backward."""

    def __init__(self, scale: float = 1.0, dynamic: bool = False, growth_interval: int = GROWTH_INTERVAL,
                 min_scale: float = FP16_MIN_SCALE):
        self.scale, self.dynamic = float(scale), dynamic
        self.growth_interval, self.min_scale = growth_interval, min_scale
        self.redone = 0  # passes redone at a lower scale
        self._clean = 0
        self._reset()

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> "PassScale":
        """Dynamic from 2^16 when `model`'s weights are float16; 1 otherwise."""
        dtype = next(model.parameters()).dtype
        return cls(FP16_INITIAL_SCALE, dynamic=True) if dtype == torch.float16 else cls()

    def _reset(self) -> None:
        self._done: dict[tuple[str, int], torch.Tensor] = {}  # per delivery: counted in this pass (dynamic only)
        self._bad: dict[tuple[str, int], torch.Tensor] = {}  # per delivery: met a non-finite value not yet counted
        self._seen: dict[str, int] = {}  # deliveries per tap point in this try (a module called twice gets two)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.scale != 1.0 else loss

    def gate(self, name: str, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, g / s) for the consumer; under a dynamic scale zeros where the point overflowed or was counted in
        an earlier try of this pass. Device-side only: no synchronisation per point."""
        finite = torch.isfinite(g).all() & torch.isfinite(a).all()
        self._seen[name] = self._seen.get(name, 0) + 1
        key = (name, self._seen[name])  # the same in every try: the graph is the same
        if not self.dynamic:
            self._bad[key] = ~finite
            return a, (g if self.scale == 1.0 else g.float() / self.scale)
        done = self._done.get(key, torch.zeros((), dtype=torch.bool, device=g.device))
        ok = finite & ~done
        self._bad[key] = ~finite & ~done
        self._done[key] = done | ok
        return (torch.where(ok, a, torch.zeros((), dtype=a.dtype, device=a.device)),
                torch.where(ok, g.float() / self.scale, torch.zeros((), dtype=torch.float32, device=g.device)))

    def finish(self, where: str, sample_ids: list[str]) -> bool:
        """After a try of a pass: True when the pass is complete; False when some rank overflowed and the pass
        must be redone, at half the scale. Collective (one all-reduce): every rank calls it after every try."""
        local = float(torch.stack(list(self._bad.values())).any()) if self._bad else 0.0
        if not dist_utils.all_reduce_max(torch.tensor([local])).item():
            self._reset()
            self._clean += 1
            if self.dynamic and self._clean % self.growth_interval == 0:
                self.scale *= 2.0
            return True
        if self.dynamic and self.scale / 2.0 >= self.min_scale:
            self.scale /= 2.0
            self._clean = 0
            self.redone += 1
            self._bad, self._seen = {}, {}
            return False
        bad = sorted({n for (n, _), flag in self._bad.items() if bool(flag)})
        raise NonFiniteGradientError(self._message(where, bad, sample_ids))

    def _message(self, where: str, bad: list[str], sample_ids: list[str]) -> str:
        here = (f"at sublayers {', '.join(bad)} for samples {', '.join(sample_ids) or '(padding only)'} on rank "
                f"{dist_utils.rank()}" if bad else "on another rank")
        if self.dynamic:
            cause = (f"even at a float16 loss scale of {self.scale:g}, so the forward pass itself overflows in "
                     "float16: run the influence stages in bfloat16 (ds_configs/zero3_bf16.json) or float32 instead")
        else:
            cause = ("so the model gives NaN or inf on these samples: check the checkpoint's weights are finite and "
                     "that the samples' loss is finite in a plain forward pass")
        return f"{where}: a gradient or activation was not finite {here}, {cause}."
