"""Token log-probabilities of responses: the quantity L(z) (DESIGN.md section 3) and every
log-prob measurement are built from."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lancet_ds.data.encoding import IGNORE_INDEX


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label_t | tokens < t) per position, in fp32 at least; 0 where labels == IGNORE_INDEX.

    `logits[:, t]` predicts token t+1, so position t of the result scores `labels[:, t]` with
    `logits[:, t-1]` (position 0 is always 0).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    shifted = logits[:, :-1].to(dtype)
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    lp = -F.cross_entropy(shifted.transpose(1, 2), targets.clamp_min(0), reduction="none")
    out = torch.zeros(labels.shape, dtype=dtype, device=logits.device)
    out[:, 1:] = lp * mask
    return out


def response_nll_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L summed over the batch: −Σ_samples Σ_{t∈y} log p(y_t | y_<t, x) (prompt positions masked)."""
    return -token_logprobs(logits, labels).sum()
