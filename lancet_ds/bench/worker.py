"""One bench measurement in a process of its own:

    python -m lancet_ds.bench.worker TASK SPEC_JSON
    deepspeed --num_gpus 2 --module lancet_ds.bench.worker memory SPEC_JSON

SPEC_JSON holds the task's arguments and `result`, the JSON file rank 0 writes the figures to. Tasks:
`influence` (forward+backward vs LinFAC / EK-FAC / kronfluence), `steps` (IBO vs SFT step, 1-rank
parameter memory), `memory` (parameter memory on however many ranks it was launched with), `tfidf` (one
implementation on one corpus), `quality` (the demo-world suite), `scale` (fit → queries → score's per-rank memory on the ranks launched).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from lancet_ds.bench.sizes import BenchSize
from lancet_ds.fileio import read_json, write_json


def _influence(spec: dict) -> dict:
    import torch

    from lancet_ds.bench import influence_speed, kron
    from lancet_ds.bench.synthetic import sequences

    size, work = BenchSize(**spec["size"]), Path(spec["work"])
    sets = {"fit": sequences(size.fit_sequences, size, "fit", 1), "queries": sequences(size.queries, size, "query", 2),
            "candidates": sequences(size.candidates, size, "cand", 3)}
    base = influence_speed.baseline(spec["model_dir"], spec["ds_config"], sets, size.micro_batch)
    ours = influence_speed.ours(spec["model_dir"], spec["ds_config"], sets, size.micro_batch, work)
    peer = {"error": kron.available()}
    if peer["error"] is None:
        try:
            peer = kron.ekfac(spec["model_dir"], sets, size.micro_batch, work)
        except Exception as exc:  # noqa: BLE001 - a failing peer is reported, not fatal to the bench
            peer = {"error": f"kronfluence failed: {exc.__class__.__name__}: {exc}"}
    scores = {m: r.pop("scores") for m, r in ours.items()}
    if "scores" in peer:
        scores["kronfluence"] = peer.pop("scores")
    agree = {f"{a}~{b}": float(torch.corrcoef(torch.stack([scores[a].flatten(), scores[b].flatten()]))[0, 1])
             for a, b in (("linfac", "ekfac"), ("ekfac", "kronfluence"), ("linfac", "kronfluence")) if b in scores}
    return {"tokens": {k: influence_speed.tokens(v) for k, v in sets.items()}, "fwd_bwd": base, "ours": ours,
            "kronfluence": peer, "score_correlation": agree}


def _steps(spec: dict) -> dict:
    from lancet_ds.bench import steps
    from lancet_ds.bench.synthetic import sequences

    size = BenchSize(**spec["size"])
    samples = sequences(64, size, "train", 4)
    return {"ibo_vs_sft": steps.ibo_vs_sft(spec["model_dir"], spec["ds_config"], samples, size.train_steps),
            "memory": steps.zero3_param_memory(spec["model_dir"], spec["ds_config"])}


def _memory(spec: dict) -> dict:
    from lancet_ds.bench import steps

    return steps.zero3_param_memory(spec["model_dir"], spec["ds_config"])


def _tfidf(spec: dict) -> dict:
    from lancet_ds.bench import tfidf_speed

    return tfidf_speed.measure(spec["impl"], Path(spec["corpus"]), Path(spec["queries"]), Path(spec["work"]))


def _quality(spec: dict) -> dict:
    from lancet_ds.bench.quality import quality

    size = BenchSize(**spec["size"])
    return quality(Path(spec["out"]), size.world, spec["ds_config"], size.seeds, size.eval_n,
                   size.eval_max_new_tokens, size.counterfactual_methods, chosen=size.corrections,
                   strengths=size.strengths, checks_per_strength=size.checks_per_strength,
                   lr_scales=size.lr_scales, counterfactual_kinds=size.counterfactual_kinds)


def _scale(spec: dict) -> dict:
    from lancet_ds.bench.scale import run_stages

    return run_stages(spec)


TASKS = {"scale": _scale, "influence": _influence, "steps": _steps, "memory": _memory, "tfidf": _tfidf, "quality": _quality}


def main(argv: list[str]) -> None:
    task, spec_path = [a for a in argv if not a.startswith("--local_rank")][:2]
    spec = read_json(spec_path)
    if task == "quality":  # its demo worlds, retrains and corrections compute the same on every x86 CPU
        from lancet_ds.cpu_numerics import restart_pinned

        restart_pinned("quality bench")
    if task != "tfidf":  # the peers' processes stay free of torch and DeepSpeed (their peak RSS is theirs)
        from lancet_ds import distributed as dist_utils

        dist_utils.init_distributed()
    ok = False
    try:
        result = TASKS[task](spec)
        if os.environ.get("RANK", "0") == "0":
            write_json(spec["result"], result)
        ok = True
    finally:
        if "torch" in sys.modules:
            from lancet_ds import distributed as dist_utils

            dist_utils.shutdown(ok)



if __name__ == "__main__":
    main(sys.argv[1:])
