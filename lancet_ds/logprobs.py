"""Per-sample response log-probabilities on a (possibly ZeRO-3-partitioned) model, every rank
running the same number of forward passes (DESIGN.md section 4)."""

from __future__ import annotations

from typing import Sequence

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.data.encoding import collate, padding_sample
from lancet_ds.data.records import EncodedSample
from lancet_ds.losses import token_logprobs


@torch.no_grad()
def response_token_logprobs(model, samples: Sequence[EncodedSample], pad_id: int, micro_batch: int = 8,
                            alone: bool = False) -> list[torch.Tensor]:
    """log p of every response token of each sample (float32, in order), on every rank.

    Samples are dealt round-robin over ranks in micro-batches; the short tail is padded with
    loss-free samples so every rank makes the same passes; the results are gathered on every rank.
    `alone`: this process scores every sample itself, with no collective (a plain model on one rank).
    """
    world, rank = (1, 0) if alone else (dist_utils.world_size(), dist_utils.rank())
    device = torch.device("cpu") if alone else dist_utils.device()
    n = len(samples)
    mine: dict[int, torch.Tensor] = {}
    was_training = model.training
    model.eval()
    pad = padding_sample(pad_id)
    for p in range(dist_utils.num_passes(n, micro_batch, world)):
        idx = dist_utils.pass_indices(p, micro_batch, rank, world)
        batch = collate([samples[i] if i < n else pad for i in idx], pad_id)
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        lp = token_logprobs(out.logits, batch["labels"].to(device)).float().cpu()
        for j, i in enumerate(idx):
            if i < n:
                mine[i] = lp[j][batch["loss_mask"][j].bool()]
    model.train(was_training)
    return [mine[i] for i in range(n)] if alone else dist_utils.gather_by_index(mine, n)


def response_logprobs(model, samples: Sequence[EncodedSample], pad_id: int, micro_batch: int = 8,
                      alone: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_t log p(y_t | ...), number of response tokens) for each sample, on every rank (`alone`: in this
    process only)."""
    per = response_token_logprobs(model, samples, pad_id, micro_batch, alone)
    return (torch.tensor([float(t.double().sum()) for t in per], dtype=torch.float64),
            torch.tensor([t.numel() for t in per], dtype=torch.float64))
