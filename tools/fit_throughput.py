"""Fit throughput next to a plain forward+backward on the same batches, measured in one run.

    deepspeed --num_gpus 2 tools/fit_throughput.py MODEL_DIR FIT_SET_JSONL [DS_CONFIG]

FIT_SET_JSONL is a `factors/fit_set.jsonl` written by `lancet-ds fit`. Prints one JSON line. (A stopgap
until `lancet-ds bench` exists; the figure in the issue-3 note came from this.)
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lancet_ds import distributed as du  # noqa: E402
from lancet_ds.data.encoding import collate, padding_sample  # noqa: E402
from lancet_ds.data.records import EncodedSample  # noqa: E402
from lancet_ds.influence.fit import FitArgs, compute_factors, tap_points  # noqa: E402
from lancet_ds.influence.sublayers import discover  # noqa: E402
from lancet_ds.losses import response_nll_sum  # noqa: E402
from lancet_ds.modeling import load_ds_config, load_model, load_tokenizer, make_engine, make_inference_engine  # noqa: E402

MICRO = 8


def main(model_dir: str, fit_set: str, ds_config: str) -> None:
    du.init_distributed()
    samples = [EncodedSample(r["id"], r["input_ids"], r["loss_mask"]) for r in map(json.loads, open(fit_set))]
    tokens = sum(len(s.input_ids) for s in samples)
    pad = load_tokenizer(model_dir).pad_token_id
    cfg = load_ds_config(ds_config, train_micro_batch_size_per_gpu=MICRO)
    engine = make_engine(load_model(model_dir, cfg), cfg)
    world, rank = du.world_size(), du.rank()
    t0 = time.perf_counter()
    for p in range(du.num_passes(len(samples), MICRO, world)):
        idx = du.pass_indices(p, MICRO, rank, world)
        batch = collate([samples[i] if i < len(samples) else padding_sample(pad) for i in idx], pad)
        out = engine(input_ids=batch["input_ids"].to(du.device()), attention_mask=batch["attention_mask"].to(du.device()))
        engine.backward(response_nll_sum(out.logits, batch["labels"].to(du.device())))
    plain = time.perf_counter() - t0
    del engine
    inference = make_inference_engine(load_model(model_dir, cfg), cfg)
    points = tap_points(discover(inference.module), "linfac")
    t0 = time.perf_counter()
    compute_factors(inference.module, samples, points, FitArgs(micro_batch=MICRO), pad,
                    Path("/tmp/fit_throughput_partial"), "throughput")
    fit = time.perf_counter() - t0
    if du.is_main():
        print(json.dumps({"tokens": tokens, "world_size": world, "plain_fwd_bwd_tokens_per_s": round(tokens / plain),
                          "linfac_fit_tokens_per_s": round(tokens / fit), "fit_over_plain": round(plain / fit, 3)}))
    du.shutdown(True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    main(args[0], args[1], args[2] if len(args) > 2 else str(Path(__file__).resolve().parent.parent / "ds_configs/zero3.json"))
