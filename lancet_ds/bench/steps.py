"""Two figures about training steps under ZeRO-3, on the speed model:

* An IBO step (pairs drawn within a batch, L_BD on neutral samples, L_COR, the proximity gradient added to
  the partitions, optimizer step) against a plain supervised step on the same engine and the same number of
  sequences (`training.train`). The IBO step is the recipe's own step (`ibo.step.draw`, `ibo.step.step_loss`,
  `ReferencePartitions`); the reference log-probs are the engine's own before any update (in `correct`
  they come from a cached frozen reference, outside the step).
* ZeRO-3 per-rank parameter memory: the bytes of this rank's parameter partitions (and its peak RSS);
  the bench runs it on 1 and on 2 ranks and reports the ratio.
"""

from __future__ import annotations

import time

from lancet_ds import distributed as dist_utils
from lancet_ds.ibo.correct import CorrectArgs
from lancet_ds.ibo.proximity import ReferencePartitions
from lancet_ds.ibo.selection import Selection
from lancet_ds.ibo.step import draw, step_loss
from lancet_ds.logprobs import response_token_logprobs
from lancet_ds.modeling import load_ds_config, load_model, local_and_full_numel, make_engine, releases_engines
from lancet_ds.training import TrainArgs, train

from lancet_ds.bench.synthetic import PAD_ID
from lancet_ds.bench.tfidf_speed import peak_rss


def _selection(samples, k: int) -> Selection:
    """One query batch: the first k samples positive, the next k negative, the rest neutral."""
    ids = [s.id for s in samples]
    pos = [(i, 1.0 - j / (2 * k)) for j, i in enumerate(ids[:k])]
    neg = [(i, -1.0 + j / (2 * k)) for j, i in enumerate(ids[k:2 * k])]
    return Selection(positive={0: pos}, negative={0: neg}, neutral=ids[2 * k:], max_abs=1.0)


@releases_engines
def ibo_vs_sft(model_dir: str, ds_config: str, samples, steps: int) -> dict:
    """Mean seconds per optimizer step of SFT and of IBO on one engine (one warm-up step each)."""
    args = CorrectArgs(pair_batch=4, neutral_batch=8, lr=1e-5, top_k=8)
    per_step = 2 * args.pair_batch + args.neutral_batch  # sequences in one IBO step's forward
    world = dist_utils.world_size()
    cfg = load_ds_config(ds_config, train_micro_batch_size_per_gpu=max(1, per_step // world),
                         gradient_accumulation_steps=1)
    cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"].update(lr=args.lr, weight_decay=0.0)
    engine = make_engine(load_model(model_dir, cfg), cfg)
    enc = {s.id: s for s in samples}
    ref = dict(zip(enc, response_token_logprobs(engine.module, samples, PAD_ID)))
    anchor = ReferencePartitions(engine)
    sel = _selection(samples, args.top_k)
    history = train(engine, samples, TrainArgs(max_steps=steps + 1, seed=0), PAD_ID)
    sft = sum(h["seconds"] for h in history[1:]) / steps
    engine.train()
    times = []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        pairs, neutral_ids = draw(step, args, sel, sel.neutral)
        loss, _ = step_loss(engine, args, pairs, neutral_ids, enc, ref, PAD_ID)
        engine.backward(loss)
        anchor.add_gradient(args.lam_prox)
        engine.step()
        times.append(time.perf_counter() - t0)
    ibo = sum(times[1:]) / steps
    return {"sequences_per_step": per_step, "sft_step_seconds": sft, "ibo_step_seconds": ibo,
            "world_size": world}


@releases_engines
def zero3_param_memory(model_dir: str, ds_config: str) -> dict:
    """This rank's parameter-partition bytes under a ZeRO-3 training engine, and its peak RSS."""
    cfg = load_ds_config(ds_config, train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1)
    engine = make_engine(load_model(model_dir, cfg), cfg)
    local, full = local_and_full_numel(engine.module)
    size = next(engine.module.parameters()).element_size()
    rows = dist_utils.all_gather_object({"param_bytes": local * size, "full_param_bytes": full * size,
                                         "peak_rss_bytes": peak_rss()})
    return {"world_size": dist_utils.world_size(), "per_rank": rows,
            "param_bytes_per_rank": max(r["param_bytes"] for r in rows), "full_param_bytes": rows[0]["full_param_bytes"]}
