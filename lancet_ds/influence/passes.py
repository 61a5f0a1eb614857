"""The influence passes: forward + backward over a list of encoded sequences on a frozen (possibly
ZeRO-3) model, feeding tap consumers, with every rank making the same number of passes.

Sequences are dealt round-robin in micro-batches; the short tail is filled with loss-free one-token
samples of weight 0. The weights are frozen, so backward computes activation gradients only: the
embedding output is made to require grad, and no weight gradient is formed or reduced. A float16 model's
passes backpropagate a scaled loss, and a pass that overflows is redone at a lower scale; a non-finite
gradient in any other dtype stops the pass (`pass_scale`). Rank 0 reports the passes' progress
(`lancet_ds.progress`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.encoding import collate, padding_sample
from lancet_ds.data.records import EncodedSample
from lancet_ds.influence.covariance import BatchContext
from lancet_ds.influence.fisher import fisher_loss
from lancet_ds.influence.pass_scale import PassScale
from lancet_ds.influence.taps import Taps, TapPoint
from lancet_ds.progress import track


def run_passes(model, samples: Sequence[EncodedSample], points: Sequence[TapPoint], consumer, ctx: BatchContext,
               dtype: torch.dtype, micro_batch: int, pad_id: int, fisher: str, seed: int, start: int = 0,
               after_pass: Callable[[int], None] | None = None, label: str = "passes",
               loss_scale: PassScale | None = None) -> None:
    """Passes `start`, …, last over `samples`; `after_pass(passes_done)` runs after each one. `label` names
    the progress task (e.g. "fit: covariance pass"); its tokens/s is this rank's tokens (fillers included)
    × the world size, an estimate of all ranks' that costs no collective. `loss_scale` defaults to
    `PassScale.for_model(model)`."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    device = dist_utils.device()
    n = len(samples)
    pad = padding_sample(pad_id)
    embed_hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: o.requires_grad_(True))
    total = dist_utils.num_passes(n, micro_batch, world)
    scale = loss_scale or PassScale.for_model(model)
    try:
        with Taps(model, points, consumer, scale.gate), track(label, total, unit="passes", done=start) as bar:
            for p in range(start, total):
                idx = dist_utils.pass_indices(p, micro_batch, rank, world)
                batch = collate([samples[i] if i < n else pad for i in idx], pad_id)
                weight = torch.tensor([1.0 if i < n else 0.0 for i in idx])
                keys = [i if i < n else None for i in idx]
                ctx.set(batch["attention_mask"].to(device), weight.to(device), dtype, keys)
                complete = False
                while not complete:  # more than once only when a float16 pass overflowed
                    with torch.enable_grad():
                        logits = model(input_ids=batch["input_ids"].to(device),
                                       attention_mask=batch["attention_mask"].to(device)).logits
                        loss = fisher_loss(logits, batch["labels"].to(device), fisher, keys, seed)
                        torch.autograd.backward(scale.scaled(loss))
                    complete = scale.finish(f"{label} {p + 1} of {total}", [samples[i].id for i in idx if i < n], loss)
                if after_pass:
                    after_pass(p + 1)
                bar.advance(1, tokens=int(batch["attention_mask"].sum()) * world)
    finally:
        embed_hook.remove()
    if scale.redone:
        say(f"{label}: {scale.redone} tries redone after an overflow of the scaled loss; loss scale now "
            f"{scale.scale:g}")
