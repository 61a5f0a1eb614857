"""Tap consumers that use per-sequence modular gradients G(z) = Σ_t g_t a_tᵀ (Eq. 10), where
g_t = ∂L/∂s_t of the summed response loss L (dataset labels).

* `QueryGradientSums`: Σ_{q∈B} Q(z_q) per query batch B, with Q(z_q) = Σ_t Dq_t a_tᵀ and
  Dq_t = ∂ log p(z_r|z_p)/∂s_t = −g_t (Eq. 13 before the mean).
* `InfluenceScores`: I(z_m, B) = −Σ_sublayers ⟨IHVP(V_B), G(z_m)⟩ (Eq. 9), computed inside each
  sublayer's hook, so no sample's gradient for all sublayers exists at once.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from lancet_ds import distributed as dist_utils
from lancet_ds.influence.covariance import BatchContext, modular_gradient
from lancet_ds.influence.memory import tensor_bytes


def modular_gradients(ctx: BatchContext, a: torch.Tensor, g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """G (B, P, M) of each row of the batch, padding positions masked."""
    a, g = ctx.tokens_first(a, dtype), ctx.tokens_first(g, dtype)
    return modular_gradient(ctx.mask.to(a.device), g, a)


class QueryGradientSums:
    def __init__(self, ctx: BatchContext, dtype: torch.dtype, batch_of: list[int], n_batches: int):
        self.ctx, self.dtype, self.batch_of, self.n_batches = ctx, dtype, batch_of, n_batches
        self.sums: dict[str, dict[str, torch.Tensor]] = {}

    def __call__(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        G = modular_gradients(self.ctx, a, g, self.dtype)
        rows = [b for b, i in enumerate(self.ctx.indices) if i is not None]
        if name not in self.sums:
            self.sums[name] = {"V": torch.zeros((self.n_batches,) + G.shape[1:], dtype=self.dtype, device=G.device)}
        if rows:
            target = torch.tensor([self.batch_of[self.ctx.indices[b]] for b in rows], device=G.device)
            self.sums[name]["V"].index_add_(0, target, -G[rows])


class InfluenceScores:
    """Scores of the batch in flight: `current` (B, K) summed over sublayers, `by_sublayer` kept when
    asked. `ihvps[name]` is either a (k, P, M) tensor or low-rank factors ((k, P, r), (k, M, r)) for the k
    batches `columns[name]` of all `n_batches` (default: every batch, k = K); the others add 0. `ihvps` may
    instead be a `BroadcastIHVPs`, which hands a point's IHVPs over one batch at a time."""

    def __init__(self, ctx: BatchContext, dtype: torch.dtype, ihvps, per_sublayer: bool = False,
                 columns: dict[str, list[int]] | None = None, n_batches: int | None = None):
        self.ctx, self.dtype, self.ihvps, self.per_sublayer = ctx, dtype, ihvps, per_sublayer
        self.columns, self.n_batches = columns or {}, n_batches
        self.reset()

    def reset(self) -> None:
        self.current: torch.Tensor | None = None
        self.by_sublayer: dict[str, torch.Tensor] = {}

    def _slices(self, name: str):
        """(batch columns, their IHVPs) pieces of point `name`."""
        if isinstance(self.ihvps, BroadcastIHVPs):
            return self.ihvps.slices(name)
        return [(self.columns.get(name, slice(None)), self.ihvps[name])]

    def __call__(self, name: str, a: torch.Tensor, g: torch.Tensor) -> None:
        G = a3 = gm = None
        for cols, x in self._slices(name):
            if isinstance(x, tuple):  # ⟨U Vᵀ, Σ_t g_t a_tᵀ⟩ = Σ_t (g_tᵀU)(Vᵀa_t)
                if a3 is None:
                    a3, g3 = self.ctx.tokens_first(a, self.dtype), self.ctx.tokens_first(g, self.dtype)
                    gm = g3 * self.ctx.mask.to(a.device)[..., None]
                u, v = (t.to(device=a.device, dtype=self.dtype) for t in x)
                dots = -torch.einsum("btkr,btkr->bk", torch.einsum("btp,kpr->btkr", gm, u),
                                     torch.einsum("btm,kmr->btkr", a3, v))
            else:
                if G is None:
                    G = modular_gradients(self.ctx, a, g, self.dtype).flatten(1)
                x = x.to(device=a.device, dtype=self.dtype)
                # ⟨X_k, G_b⟩ as one matrix product (B × PM)(PM × K): einsum took ~5× as long on CPU
                dots = -(G @ x.reshape(x.shape[0], -1).T)
            if self.current is None:
                self.current = dots.new_zeros((dots.shape[0], self.n_batches or dots.shape[1]))
            self.current[:, cols] += dots
            if self.per_sublayer:
                if name not in self.by_sublayer:
                    self.by_sublayer[name] = self.current.new_zeros(self.current.shape)
                self.by_sublayer[name][:, cols] += dots  # += : a redone pass adds 0


class BroadcastIHVPs:
    """A partition's IHVPs when each rank keeps only those of the tap points it owns (`score
    --ihvp-placement sharded`, `mine`): a hook gets a point's IHVPs one query batch at a time, broadcast by
    the point's owner, so a rank holds its own share plus one (point, batch) IHVP. Every rank asks for the
    same points in the same order (the hooks fire in the model's backward order on every rank), so the
    broadcasts pair up."""

    def __init__(self, mine: dict, owners: dict[str, int], columns: dict[str, list[int]],
                 shapes: dict[str, tuple[tuple[int, ...], ...]], dtype: torch.dtype, device: torch.device):
        self.mine, self.owners, self.columns, self.shapes = mine, owners, columns, shapes
        self.dtype, self.device = dtype, device
        self.largest_borrowed = 0  # bytes of the largest IHVP received at once

    def slices(self, name: str):
        own = self.mine.get(name)
        for j, b in enumerate(self.columns[name]):
            if own is not None:
                parts = tuple(t[j:j + 1] for t in (own if isinstance(own, tuple) else (own,)))
            else:
                parts = tuple(torch.empty((1, *shape[1:]), dtype=self.dtype, device=self.device)
                              for shape in self.shapes[name])
                self.largest_borrowed = max(self.largest_borrowed, tensor_bytes(parts))
            if dist_utils.world_size() > 1:
                for t in parts:
                    dist.broadcast(t, src=self.owners[name])
            yield [b], (parts if len(parts) == 2 else parts[0])
