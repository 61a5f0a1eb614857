"""Supervised training on a DeepSpeed engine (ZeRO-3 or not), reused for the demo world's models,
replay and counterfactual retraining.

* Seeded data order: epoch e visits the samples in `randperm(n, seed + e)`, cut into global batches of
  micro_batch × grad_accum × world_size samples.
* World-size independence: a global batch is split into micro-batches over ranks; each micro-batch's
  summed response NLL is divided by the global batch's response-token count (known on every rank) and
  multiplied by world_size × grad_accum, which DeepSpeed's averaging undoes. The update is then the
  gradient of the global per-token mean, whatever the world size.
* Every rank runs the same number of passes: short batches are filled with a one-token sample whose
  loss mask is empty, so ZeRO-3's collective gathers never wait on a rank that stopped.
* Checkpoints (`engine.save_checkpoint`, with the step in client state) every `save_every` steps; a
  rerun resumes from the latest one and follows the same data order, ending where an uninterrupted run
  ends. The step log (`log_path`) is cut back to the checkpoint's step first, so it holds every step once.
  `LANCET_FAULT_AFTER_STEP=N` kills the process after step N (tests inject faults with it).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.encoding import collate, padding_sample
from lancet_ds.data.records import EncodedSample
from lancet_ds.faults import maybe_inject_fault
from lancet_ds.fileio import append_lines, cut_step_log
from lancet_ds.losses import response_nll_sum


@dataclass
class TrainArgs:
    """Options of a supervised training run (batch sizes and optimizer come from the DeepSpeed config)."""

    epochs: float = 3.0
    """Passes over the data; fractional values stop part-way through the last epoch."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides epochs when smaller)."""
    seed: int = 0
    """Seed of the data order."""
    save_every: int = 0
    """Checkpoint every N optimizer steps (0: no intermediate checkpoints)."""
    checkpoint_dir: str | None = None
    """Where checkpoints go and where a rerun resumes from."""
    log_path: str | None = None
    """JSON-lines log of every step's loss (rank 0 writes it; a resumed run first cuts it back to its checkpoint)."""


def step_plan(n: int, global_batch: int, epochs: float, seed: int, max_steps: int | None = None) -> list[list[int]]:
    """Sample indices of every optimizer step, in order."""
    per_epoch = math.ceil(n / global_batch)
    total = math.ceil(per_epoch * epochs)
    if max_steps is not None:
        total = min(total, max_steps)
    steps: list[list[int]] = []
    epoch = 0
    while len(steps) < total:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        steps.extend(perm[i:i + global_batch] for i in range(0, n, global_batch))
        epoch += 1
    return steps[:total]


def rank_micro_batches(step: Sequence[int], rank: int, world: int, micro: int, accum: int) -> list[list[int | None]]:
    """This rank's `accum` micro-batches of one step; None marks a padding slot."""
    padded = list(step) + [None] * (micro * accum * world - len(step))
    return [padded[(j * world + rank) * micro:(j * world + rank + 1) * micro] for j in range(accum)]


def _resume_step(engine, checkpoint_dir: str | None) -> int:
    if not checkpoint_dir or not (Path(checkpoint_dir) / "latest").exists():
        return 0
    _, client = engine.load_checkpoint(checkpoint_dir)
    return int((client or {}).get("step", 0))


def _prune_checkpoints(checkpoint_dir: str, keep: str) -> None:
    """Drop older `step*` checkpoints once `keep` is written (rank 0; `latest` already names `keep`)."""
    dist_utils.barrier()
    if dist_utils.is_main():
        for old in Path(checkpoint_dir).glob("step*"):
            if old.name != keep:
                shutil.rmtree(old, ignore_errors=True)


def train(engine, data: Sequence[EncodedSample], args: TrainArgs, pad_id: int,
          on_step: Callable[[int, float], None] | None = None) -> list[dict]:
    """Train `engine` on `data`; returns the per-step log (loss = global per-token mean NLL)."""
    world, rank = dist_utils.world_size(), dist_utils.rank()
    micro, accum = engine.train_micro_batch_size_per_gpu(), engine.gradient_accumulation_steps()
    plan = step_plan(len(data), micro * accum * world, args.epochs, args.seed, args.max_steps)
    start = _resume_step(engine, args.checkpoint_dir)
    if args.log_path and dist_utils.is_main():
        warning = cut_step_log(args.log_path, start)  # the interrupted run's steps after `start` are logged again
        if warning:
            say(warning)
    pad = padding_sample(pad_id)
    device = dist_utils.device()
    history: list[dict] = []
    engine.train()
    for step in range(start, len(plan)):
        t0 = time.perf_counter()
        tokens = sum(data[i].num_response_tokens for i in plan[step])
        local = torch.zeros((), dtype=torch.float64)
        for mb in rank_micro_batches(plan[step], rank, world, micro, accum):
            batch = collate([data[i] if i is not None else pad for i in mb], pad_id)
            out = engine(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device))
            nll = response_nll_sum(out.logits, batch["labels"].to(device))
            engine.backward(nll * (world * accum) / max(tokens, 1))
            engine.step()
            local += nll.detach().double().cpu()
        loss = float(dist_utils.all_reduce_sum(local).item() / max(tokens, 1))
        entry = {"step": step + 1, "of": len(plan), "loss": loss, "tokens": tokens,
                 "seconds": round(time.perf_counter() - t0, 4)}
        history.append(entry)
        if args.log_path and dist_utils.is_main():
            append_lines(args.log_path, [json.dumps(entry)])
        if on_step:
            on_step(step + 1, loss)
        done = step + 1
        if args.checkpoint_dir and args.save_every and done % args.save_every == 0 and done < len(plan):
            engine.save_checkpoint(args.checkpoint_dir, tag=f"step{done}", client_state={"step": done})
            _prune_checkpoints(args.checkpoint_dir, keep=f"step{done}")
        maybe_inject_fault(done)
    return history
