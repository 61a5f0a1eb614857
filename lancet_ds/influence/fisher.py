"""The loss whose gradients build the curvature factors: L = −Σ_{t∈y} log p(ŷ_t | ·) with Fisher labels
ŷ (DESIGN.md section 3, Eq. 11): `sampled` draws ŷ_t from the model's own predictive distribution,
`empirical` uses the dataset labels. Sampling is seeded per sample (seed, sample index), so the labels
do not depend on how samples are batched or spread over ranks."""

from __future__ import annotations

from typing import Sequence

import torch

from lancet_ds.data.encoding import IGNORE_INDEX
from lancet_ds.losses import token_logprobs

FISHER_TYPES = ("sampled", "empirical")


def sample_labels(logits: torch.Tensor, labels: torch.Tensor, sample_keys: Sequence[int | None], seed: int) -> torch.Tensor:
    """Labels with each response position replaced by a draw from softmax(logits one position earlier).
    Only the response positions' distributions are formed (never B × T × vocabulary at once)."""
    out = labels.clone()
    for b, key in enumerate(sample_keys):
        positions = (labels[b, 1:] != IGNORE_INDEX).nonzero().flatten()
        if key is None or positions.numel() == 0:
            continue
        probs = torch.softmax(logits[b, positions].detach().float(), dim=-1)
        # a row the forward pass left NaN or inf draws from the uniform instead of failing in multinomial: its loss
        # is not finite all the same, and the pass stops with the forward error (`pass_scale`)
        probs = torch.where(torch.isfinite(probs).all(-1, keepdim=True), probs, torch.ones_like(probs))
        gen = torch.Generator(device=probs.device).manual_seed(seed * 1_000_003 + key)
        out[b, positions + 1] = torch.multinomial(probs, 1, generator=gen).flatten().to(labels.device)
    return out


def fisher_loss(logits: torch.Tensor, labels: torch.Tensor, fisher: str, sample_keys: Sequence[int | None],
                seed: int) -> torch.Tensor:
    """Σ over the batch of the per-sample summed response NLL under Fisher labels."""
    if fisher == "sampled":
        labels = sample_labels(logits, labels, sample_keys, seed)
    elif fisher != "empirical":
        raise ValueError(f"fisher must be one of {FISHER_TYPES}, got {fisher!r}")
    return -token_logprobs(logits, labels).sum()
