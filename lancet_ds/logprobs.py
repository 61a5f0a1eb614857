"""Per-sample response log-probabilities on a (possibly ZeRO-3-partitioned) model, every rank
running the same number of forward passes (DESIGN.md section 4)."""

from __future__ import annotations

import math
from typing import Sequence

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.data.encoding import collate, padding_sample
from lancet_ds.data.records import EncodedSample
from lancet_ds.losses import token_logprobs


@torch.no_grad()
def response_logprobs(model, samples: Sequence[EncodedSample], pad_id: int, micro_batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_t log p(y_t | ...), number of response tokens) for each sample, on every rank.

    Samples are dealt round-robin over ranks in micro-batches; the short tail is padded with
    loss-free samples so every rank makes the same passes; results are summed over ranks.
    """
    world, rank = dist_utils.world_size(), dist_utils.rank()
    device = dist_utils.device()
    n = len(samples)
    sums = torch.zeros(n, dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.float64)
    was_training = model.training
    model.eval()
    passes = math.ceil(n / (micro_batch * world)) if n else 0
    pad = padding_sample(pad_id)
    for p in range(passes):
        idx = [(p * world + rank) * micro_batch + j for j in range(micro_batch)]
        batch = collate([samples[i] if i < n else pad for i in idx], pad_id)
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        lp = token_logprobs(out.logits, batch["labels"].to(device)).sum(dim=1).double().cpu()
        for j, i in enumerate(idx):
            if i < n:
                sums[i] = lp[j]
                counts[i] = samples[i].num_response_tokens
    model.train(was_training)
    return dist_utils.all_reduce_sum(sums), dist_utils.all_reduce_sum(counts)


@torch.no_grad()
def response_token_logprobs(model, samples: Sequence[EncodedSample], pad_id: int, micro_batch: int = 8) -> list[torch.Tensor]:
    """log p of every response token of each sample (float32, in order), on every rank; passes as in
    `response_logprobs`."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    device = dist_utils.device()
    n = len(samples)
    mine: dict[int, list[float]] = {}
    was_training = model.training
    model.eval()
    pad = padding_sample(pad_id)
    for p in range(math.ceil(n / (micro_batch * world)) if n else 0):
        idx = [(p * world + rank) * micro_batch + j for j in range(micro_batch)]
        batch = collate([samples[i] if i < n else pad for i in idx], pad_id)
        out = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
        lp = token_logprobs(out.logits, batch["labels"].to(device)).float().cpu()
        for j, i in enumerate(idx):
            if i < n:
                mine[i] = lp[j][batch["loss_mask"][j].bool()].tolist()
    model.train(was_training)
    merged: dict[int, list[float]] = {}
    for part in dist_utils.all_gather_object(mine):
        merged.update(part)
    return [torch.tensor(merged[i], dtype=torch.float32) for i in range(n)]
