"""`lancet-ds bench`: run the measurements, each in a process of its own, and write `OUT/bench.json`
(ratios beside the absolute figures, the command line, the machine) and `OUT/bench.md` (tables).

Every ratio is ours ÷ baseline as throughput over throughput (> 1: we are faster), except
`linfac_vs_fwdbwd` and `ibo_step_vs_sft_step`, which are time over time (< 1: we are faster), and the
memory ratios. Figures measured back to back in one process are comparable; absolute times on a shared
machine are noisy. Nothing here asserts a speed.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from lancet_ds.bench import table
from lancet_ds.bench.curves import draw_curves
from lancet_ds.bench.sizes import SIZES, BenchSize
from lancet_ds.bench.synthetic import save_random_llama, write_documents
from lancet_ds.console import say
from lancet_ds.cpu_numerics import cpuinfo
from lancet_ds.errors import LancetError
from lancet_ds.fileio import read_json, write_json
from lancet_ds.run_dir import RunDir

SUITES = ("speed", "quality", "scale", "all")


def machine() -> dict:
    import deepspeed
    import torch

    cpu = cpuinfo("model name") or platform.processor()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu_count": os.cpu_count(), "cpu": cpu, "device": gpu or "cpu", "torch": torch.__version__,
            "deepspeed": deepspeed.__version__, "python": platform.python_version(), "platform": platform.platform()}


def _worker(task: str, spec: dict, work: Path, name: str, ranks: int = 1) -> dict:
    """Run one worker process (under the DeepSpeed launcher when `ranks` > 1); its result."""
    from lancet_ds.distributed import _free_port

    spec = {**spec, "result": str(work / f"{name}.result.json")}
    write_json(work / f"{name}.spec.json", spec)
    module = ["-m", "lancet_ds.bench.worker"] if ranks == 1 else ["--module", "lancet_ds.bench.worker"]
    cmd = ([sys.executable] if ranks == 1 else ["deepspeed", "--num_gpus", str(ranks), "--master_port", str(_free_port())])
    cmd += module + [task, str(work / f"{name}.spec.json")]
    log = work / f"{name}.log"
    say(f"bench: {name} ({' '.join(cmd[:4])} ...), log {log}")
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise LancetError(f"bench worker {name} exited {proc.returncode}; the end of {log}:\n{tail}")
    say(f"bench: {name} done in {time.perf_counter() - t0:.1f}s")
    return read_json(spec["result"])


def launchable_ranks() -> int | None:
    """How many ranks the launcher can start on this node: None (any number) on the CPU accelerator, whose
    ranks are gloo processes; on a GPU, one per device (`deepspeed --num_gpus 4` on a 1-GPU node starts ranks
    that find no device)."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    return None if accelerator.device_name() == "cpu" else accelerator.device_count()


def startable(ranks: tuple[int, ...] | list[int], launchable: int | None) -> tuple[list[int], list[int]]:
    """`ranks` split into the world sizes this node can start and those it cannot (`launchable_ranks`)."""
    kept = [w for w in ranks if launchable is None or w <= launchable]
    return kept, [w for w in ranks if w not in kept]


def _ratio(num, den):
    return None if num is None or den is None or den == 0 else num / den


def speed(size: BenchSize, ds_config: str, work: Path) -> dict:
    model_dir = str(save_random_llama(work / "model", size))
    base = {"model_dir": model_dir, "ds_config": ds_config, "size": size.as_dict(), "work": str(work)}
    inf = _worker("influence", base, work, "influence")
    steps = _worker("steps", base, work, "steps")
    launchable = launchable_ranks()
    mem2 = _worker("memory", base, work, "memory-2ranks", ranks=2) if startable([2], launchable)[0] else None
    docs = {}
    for n in (size.tfidf_docs, 10 * size.tfidf_docs):
        corpus = work / f"docs-{n}.jsonl"
        if not corpus.exists():
            write_documents(corpus, n, seed=0)
        docs[n] = corpus
    queries = work / "doc-queries.jsonl"
    write_documents(queries, 100, seed=99)
    tf = {f"{impl}@{n}": _worker("tfidf", {"impl": impl, "corpus": str(path), "queries": str(queries),
                                            "work": str(work / f"recall-{n}")}, work, f"tfidf-{impl}-{n}")
          for n, path in docs.items() for impl in ("ours", "sklearn", "bm25s")}
    return figures(size, inf, steps, mem2, tf, launchable)


def figures(size: BenchSize, inf: dict, steps: dict, mem2: dict | None, tf: dict, launchable: int | None = None) -> dict:
    """The required ratios and the absolute figures behind them."""
    fb, tok, lin, ek, kr = inf["fwd_bwd"]["seconds"], inf["tokens"], inf["ours"]["linfac"], inf["ours"]["ekfac"], inf["kronfluence"]
    fb_all = sum(fb.values())
    big, small = 10 * size.tfidf_docs, size.tfidf_docs
    ibo = steps["ibo_vs_sft"]
    mem1 = steps["memory"]
    rate = lambda k: tf[k]["documents_per_second"] if "error" not in tf[k] else None  # noqa: E731
    ratios = {
        "fit_vs_fwdbwd": (tok["fit"] / lin["covariance_pass_seconds"]) / (tok["fit"] / fb["fit"]),
        "score_vs_fwdbwd": (tok["candidates"] / lin["score_seconds"]) / (tok["candidates"] / fb["candidates"]),
        "linfac_vs_fwdbwd": lin["total_seconds"] / fb_all,
        "linfac_vs_ekfac": ek["total_seconds"] / lin["total_seconds"],
        "linfac_vs_kronfluence": _ratio(kr.get("total_seconds"), lin["total_seconds"]),
        "tfidf_vs_sklearn": _ratio(rate(f"ours@{big}"), rate(f"sklearn@{big}")),
        "tfidf_vs_bm25s": _ratio(rate(f"ours@{big}"), rate(f"bm25s@{big}")),
        "tfidf_rss_10n_over_n": tf[f"ours@{big}"]["peak_rss_bytes"] / tf[f"ours@{small}"]["peak_rss_bytes"],
        "ibo_step_vs_sft_step": ibo["ibo_step_seconds"] / ibo["sft_step_seconds"],
        "zero3_param_mem_2r_over_1r": _ratio(mem2["param_bytes_per_rank"] if mem2 else None, mem1["param_bytes_per_rank"]),
    }
    notes = {}
    if mem2 is None:
        notes["zero3_param_mem_2r_over_1r"] = f"not measured: this node starts at most {launchable} rank(s), one per GPU"
    if kr.get("error"):
        notes["linfac_vs_kronfluence"] = kr["error"]
    absolute = {
        "model": {k: getattr(size, k) for k in ("hidden", "intermediate", "layers", "vocab", "seq_len")},
        "tokens": tok,
        "fwd_bwd_seconds": fb, "fwd_bwd_tokens_per_second": {k: tok[k] / fb[k] for k in fb},
        "linfac": lin, "ekfac": ek, "kronfluence": kr,
        "linfac_fit_tokens_per_second": tok["fit"] / lin["covariance_pass_seconds"],
        "linfac_score_tokens_per_second": tok["candidates"] / lin["score_seconds"],
        "bytes": {"linfac_factor_bytes": lin["factor_bytes"], "ekfac_factor_bytes": ek["factor_bytes"],
                  "ekfac_over_linfac_factor_bytes": ek["factor_bytes"] / lin["factor_bytes"],
                  "linfac_ihvp_bytes_per_query_batch": lin["ihvp_bytes_per_query_batch"],
                  "ekfac_ihvp_bytes_per_query_batch": ek["ihvp_bytes_per_query_batch"],
                  "ekfac_over_linfac_ihvp_bytes": ek["ihvp_bytes_per_query_batch"] / lin["ihvp_bytes_per_query_batch"],
                  "paper_predicted_ekfac_over_linfac": ek["paper_overhead_elements"] / lin["paper_overhead_elements"]},
        "score_correlation": inf["score_correlation"],
        "tfidf": tf,
        "tfidf_rss_growth_10n_over_n": _ratio(tf[f"ours@{big}"]["peak_rss_bytes"] - tf[f"ours@{big}"]["import_rss_bytes"],
                                              tf[f"ours@{small}"]["peak_rss_bytes"] - tf[f"ours@{small}"]["import_rss_bytes"]),
        "ibo_vs_sft": ibo,
        "zero3_param_memory": {"1_rank": mem1, "2_ranks": mem2},
    }
    return {**ratios, "notes": notes, "absolute": absolute}


def quality(size: BenchSize, ds_config: str, work: Path, out: Path) -> dict:
    return _worker("quality", {"out": str(out / "quality"), "size": size.as_dict(), "ds_config": ds_config},
                   work, "quality")


def scale(size: BenchSize, ds_config: str, work: Path) -> dict:
    """Per-rank memory of fit, queries and score on each world size and width, beside the plan (bench.scale).
    On more than one rank one launch scores with the IHVPs replicated, then sharded, after one fit and queries."""
    from lancet_ds.bench import scale as sc

    launchable = launchable_ranks()
    ranks, skipped = startable(size.scale_ranks, launchable)
    runs = {}
    for width in size.scale_widths:
        files = sc.prepare(work / "scale", width, layers=size.scale_layers, n_corpus=64, n_queries=8)
        spec = {**files, "ds_config": ds_config, "fit_samples": 32, "batches": 4, "n_queries": 8}
        plans = [(w, None, ["replicated", "sharded"] if w > 1 else ["replicated"], "") for w in ranks]
        budgeted = min(2, max(ranks))  # 2 ranks, or 1 where one GPU is all there is
        plans += [(budgeted, sc.partition_budgets(files["model"], budgeted, {**spec, "placement": "replicated"}),
                   ["sharded"], "-partitioned")]
        for w, budgets, placements, suffix in plans:
            name = f"w{width}-{w}r{suffix}"
            run_spec = {**spec, "run": str(work / "scale" / name), "budgets": budgets, "placements": placements}
            measured = _worker("scale", run_spec, work, f"scale-{name}", ranks=w)
            for i, placement in enumerate(placements):
                run_name = name + ("" if i == 0 else f"-{placement}")
                runs[run_name] = {"width": width, "ranks": w, "budgets": budgets, "measured": measured[placement],
                                  "predicted": sc.predicted(files["model"], w, {**run_spec, "placement": placement})}
                first = RunDir.of(work / "scale" / f"w{width}-{ranks[0]}r").score_rows
                runs[run_name]["scores_rel_diff_vs_1r"] = sc.max_rel_diff(first, RunDir.of(work / "scale" / run_name).score_rows)
    figures = sc.figures(runs, list(size.scale_widths), ranks)
    if skipped:
        figures["not_measured"] = f"world sizes {skipped}: this node starts at most {launchable} rank(s), one per GPU"
    return figures


def run_bench(suite: str, size_name: str, out_dir: str, ds_config: str) -> dict:
    """Measure, write bench.json and bench.md under `out_dir`; returns the bench.json content."""
    if suite not in SUITES or size_name not in SIZES:
        raise LancetError(f"suite must be one of {SUITES} and size one of {sorted(SIZES)}")
    from lancet_ds.ibo.proximity import unsupported_reason  # the suites' IBO steps snapshot θ_ref
    from lancet_ds.modeling import load_ds_config

    refused = unsupported_reason(load_ds_config(ds_config))
    if refused:
        raise LancetError(f"bench under {ds_config}: {refused}")
    out = Path(out_dir)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    size = SIZES[size_name]
    result: dict = {"command": shlex.join(["lancet-ds", *sys.argv[1:]]), "suite": suite, "size": size_name,
                    "preset": size.as_dict(), "machine": machine()}
    t0 = time.perf_counter()
    if suite in ("speed", "all"):
        result["speed"] = speed(size, ds_config, work)
    if suite in ("quality", "all"):
        result["quality"] = quality(size, ds_config, work, out)
        draw_curves(result["quality"]["correction"], out / "quality_curves.png")
    if suite in ("scale", "all"):
        result["scale"] = scale(size, ds_config, work)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out / "bench.json", result)
    text = table.markdown(result)
    (out / "bench.md").write_text(text)
    print(text)
    return result
