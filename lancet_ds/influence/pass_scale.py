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

A non-finite loss or sublayer input comes from the forward pass, which no scale changes: the pass stops at
once. So does a non-finite gradient in float32 and bfloat16 (float32's exponent range; the scale is 1 there),
where only the model or the data can cause it. The error names the ranks, sublayers and samples.
"""

from __future__ import annotations

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.errors import LancetError

FP16_INITIAL_SCALE = 2.0 ** 16  # DeepSpeed's and kronfluence's start
FP16_MIN_SCALE = 2.0 ** -10  # below 1: an activation gradient may exceed float16's 65504 unscaled
GROWTH_INTERVAL = 1000  # clean passes before the scale doubles (DeepSpeed's loss_scale_window)
CLEAN, OVERFLOW, FORWARD = 0.0, 1.0, 2.0  # a try's outcome on a rank; the worst over ranks decides


class NonFiniteGradientError(LancetError):
    """An influence pass met NaN or inf that no loss scale removes."""


def scales(model: torch.nn.Module) -> bool:
    """Whether an influence pass over `model` runs under a dynamic loss scale: its weights are float16."""
    return next(model.parameters()).dtype == torch.float16


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
        """Dynamic from 2^16 when `model`'s weights are float16 (`scales`); 1 otherwise."""
        return cls(FP16_INITIAL_SCALE, dynamic=True) if scales(model) else cls()

    def _reset(self) -> None:
        self._done: dict[tuple[str, int], torch.Tensor] = {}  # per delivery: counted in this pass (dynamic only)
        self._bad: dict[tuple[str, int], torch.Tensor] = {}  # per delivery: a non-finite g not yet counted
        self._forward_bad: dict[tuple[str, int], torch.Tensor] = {}  # per delivery: a non-finite input a
        self._seen: dict[str, int] = {}  # deliveries per tap point in this try (a module called twice gets two)

    def scaled(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.scale != 1.0 else loss

    def gate(self, name: str, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, g / s) for the consumer; under a dynamic scale zeros where the point overflowed or was counted in
        an earlier try of this pass. Device-side only: no synchronisation per point."""
        finite_g, finite_a = torch.isfinite(g).all(), torch.isfinite(a).all()
        self._seen[name] = self._seen.get(name, 0) + 1
        key = (name, self._seen[name])  # the same in every try: the graph is the same
        self._forward_bad[key] = ~finite_a
        if not self.dynamic:
            self._bad[key] = ~finite_g
            return a, (g if self.scale == 1.0 else g.float() / self.scale)
        done = self._done.get(key, torch.zeros((), dtype=torch.bool, device=g.device))
        ok = finite_g & finite_a & ~done
        self._bad[key] = ~finite_g & ~done
        self._done[key] = done | ok
        return (torch.where(ok, a, torch.zeros((), dtype=a.dtype, device=a.device)),
                torch.where(ok, g.float() / self.scale, torch.zeros((), dtype=torch.float32, device=g.device)))

    def finish(self, where: str, sample_ids: list[str], loss: torch.Tensor) -> bool:
        """After a try of a pass whose unscaled loss was `loss`: True when the pass is complete; False when some
        rank's scaled backward overflowed and the pass must be redone, at half the scale. A non-finite loss or
        sublayer input (the forward pass: no scale helps) stops the pass at once, as does a non-finite gradient
        in float32 or bfloat16 or at the smallest float16 scale. Collective (one all-reduce): every rank calls it
        after every try."""
        forward = torch.stack([~torch.isfinite(loss.detach()).all(), *self._forward_bad.values()]).any()
        backward = torch.stack(list(self._bad.values())).any() if self._bad else torch.zeros((), dtype=torch.bool)
        mine = FORWARD if bool(forward) else OVERFLOW if bool(backward) else CLEAN
        code = dist_utils.all_reduce_max(torch.tensor([mine])).item()
        if code == CLEAN:
            self._reset()
            self._clean += 1
            if self.dynamic and self._clean % self.growth_interval == 0:
                self.scale *= 2.0
            return True
        if code == OVERFLOW and self.dynamic and self.scale / 2.0 >= self.min_scale:
            self.scale /= 2.0
            self._clean = 0
            self.redone += 1
            self._bad, self._forward_bad, self._seen = {}, {}, {}
            return False
        report = {"rank": dist_utils.rank(), "code": mine, "samples": sample_ids,
                  "sublayers": sorted({n for (n, _), flag in self._bad.items() if bool(flag)})}
        exc = NonFiniteGradientError(self._message(where, code, dist_utils.all_gather_object(report)))
        exc.on_every_rank = True  # every rank raises it here, together (`distributed.shutdown`)
        raise exc

    def _message(self, where: str, code: float, reports: list[dict]) -> str:
        def batch(r: dict) -> str:
            return f"rank {r['rank']}'s micro-batch ({', '.join(r['samples']) or 'padding only'})"

        if code == FORWARD:
            at = "; ".join(batch(r) for r in reports if r["code"] == FORWARD)
            hint = ("; a float16 model's activations may also overflow: run the influence stages in bfloat16 "
                    "(ds_configs/zero3_bf16.json) or float32") if self.dynamic else ""
            return (f"{where}: the forward pass gave NaN or inf (the loss or a sublayer's input) on {at}. Check that "
                    f"the checkpoint's weights are finite and that these samples' loss is finite in a plain forward "
                    f"pass{hint}.")
        at = "; ".join(f"sublayers {', '.join(r['sublayers'])} on {batch(r)}" for r in reports if r["code"] == OVERFLOW)
        if self.dynamic:
            return (f"{where}: the gradient overflowed float16 even at a loss scale of {self.scale:g}, at {at}. Run "
                    "the influence stages in bfloat16 (ds_configs/zero3_bf16.json) or float32.")
        return (f"{where}: the backward pass gave NaN or inf at {at}, though the loss was finite. Check that the "
                "checkpoint's weights are finite and that these samples' loss has finite gradients in a plain forward "
                "and backward pass.")
