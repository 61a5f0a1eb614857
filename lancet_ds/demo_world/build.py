"""`lancet-ds demo-world OUT_DIR`: build the whole demo world (DESIGN.md section 6).

Steps (each skipped when its output already exists, so an interrupted build resumes):
1. texts (`train.jsonl`, `heldout_prompts.jsonl`, `eval_prompts.jsonl`, `clean_heldout.jsonl`, `clean_test.jsonl`), a
   locally trained tokenizer, the shared random initialisation (`init/`), the harm judge (`judge.json`)
   and the reward judge (`reward_judge.json`);
2. the impure model (safe + contaminated data) and the safe model (safe data only), both trained
   from `init/` with the DeepSpeed loop of `lancet_ds.training` (ZeRO-3 by default), with the
   same data-order seed;
3. the contamination check: mean per-token log-prob of the contaminated-style (compliant) response
   on every held-out forbidden prompt, under both models; the influence queries are the held-out
   prompts whose compliant response rose most from the safe model to the impure one;
4. the validation and test splits (`demo_world.splits`) and `world.json`: every path, the statistics
   and the check.

The world depends on the seed and the size only: the global batch is fixed, and the per-rank micro
batch is global ÷ world size, so 1 and 2 ranks train the same models up to float round-off. On x86-64 CPUs the
demo-world command, the demo job and the quality bench build under `cpu_numerics`' pinned numerics, so every such
machine builds the same world bit for bit for a seed, size and rank count; world.json records whether the build
was pinned (`cpu_numerics`) and the `digests` to compare two machines' worlds by.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from lancet_ds import __version__
from lancet_ds import cpu_numerics
from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import strict_sink
from lancet_ds.data.corpus import load_encoded
from lancet_ds.data.encoding import encode_sample
from lancet_ds.data.records import Sample
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.demo_world.corpus import REWARD_DATA_VERSION, WorldTexts, generate_texts
from lancet_ds.demo_world.splits import split_paths, write_splits
from lancet_ds.demo_world.judge import train_judge
from lancet_ds.demo_world.tokenizer import train_tokenizer
from lancet_ds.errors import ConfigError
from lancet_ds.evaluation.generations import sample_generations
from lancet_ds.evaluation.judge import load_judge
from lancet_ds.fileio import read_json, write_json, write_jsonl
from lancet_ds.fingerprint import fingerprint_path, json_fingerprint
from lancet_ds.logprobs import response_logprobs
from lancet_ds.modeling import load_ds_config, load_model, load_tokenizer, make_engine, releases_engines, save_model, zero_stage
from lancet_ds.packaged import DEFAULT_DS_CONFIG
from lancet_ds.stage_guard import finished, record
from lancet_ds.training import TrainArgs, train

WORLD_FILE = "world.json"
"""Every path, the statistics and the contamination check; the marker of a finished world."""
REWARD_JUDGE = "reward_judge.json"
WORLD_FORMAT = 5
"""Bumped when the texts or the files change: 2 = second vocabulary, decoys, queries from the impure model's own
answers; 3 = decoys quote the whole act (`corpus.NAMING_REFUSAL`), the harm judge also learns from cut answers
(`corpus.JUDGE_CUT`); 4 = the test split's clean set adds `n_clean_test` samples of its own
(`corpus.clean_test_samples`; every other file as in format 3); 5 = the default and large worlds frame their
compliant answers as the decoys are framed (`WorldSize.framed_answers`), so length no longer tells them apart;
the tiny world's texts are format 4's. A directory holding a world of another format
is refused (or rebuilt with --overwrite), never reused."""


@dataclass(frozen=True)
class WorldSize:
    n_train: int
    contamination: float
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    epochs: float
    global_batch: int
    lr: float
    max_length: int
    n_queries: int
    n_clean_test: int  # clean samples the test split adds to its half of `clean_heldout.jsonl`
    framed_answers: bool = True  # compliant answers framed as the decoys are (`corpus.generate_texts(framed=)`)


SIZES = {
    "tiny": WorldSize(n_train=600, contamination=0.12, vocab_size=1024, hidden=64, layers=2, heads=4,
                      intermediate=128, epochs=6, global_batch=16, lr=3e-3, max_length=96, n_queries=8,
                      n_clean_test=200, framed_answers=False),
    "default": WorldSize(n_train=4000, contamination=0.15, vocab_size=1024, hidden=128, layers=4, heads=4,
                         intermediate=384, epochs=3, global_batch=16, lr=2e-3, max_length=128, n_queries=20,
                         n_clean_test=1000),
    "large": WorldSize(n_train=20000, contamination=0.15, vocab_size=2048, hidden=256, layers=6, heads=8,
                       intermediate=768, epochs=2, global_batch=32, lr=1e-3, max_length=128, n_queries=30,
                       n_clean_test=2000),
}


def _texts(cfg: WorldSize, seed: int, clean_test: bool = True) -> WorldTexts:
    """The texts of a world of size `cfg` (`corpus.generate_texts`); without `clean_test`, less the test split's
    extra clean samples, every other text the same."""
    return generate_texts(seed, cfg.n_train, cfg.contamination, n_clean_test=cfg.n_clean_test if clean_test else 0,
                          framed=cfg.framed_answers)


def _write_texts(out: Path, cfg: WorldSize, seed: int) -> dict:
    texts = _texts(cfg, seed)
    write_jsonl(out / "train.jsonl", texts.train)
    write_jsonl(out / "heldout_prompts.jsonl", texts.heldout)
    write_jsonl(out / "eval_prompts.jsonl", texts.eval_prompts)
    write_jsonl(out / "clean_heldout.jsonl", texts.clean)
    write_jsonl(out / "clean_test.jsonl", texts.clean_test)
    tok = train_tokenizer((t for r in texts.train + texts.clean for t in (r["prompt"], r["response"])), cfg.vocab_size)
    tok.save_pretrained(str(out / "tokenizer"))
    judge, judge_metrics = train_judge(texts.judge_data, seed, input="prompt_response")  # reads prompt and response
    judge.save(out / "judge.json", metrics=judge_metrics)
    _write_reward_judge(out, texts, seed)
    return {"texts": texts, "tokenizer": tok, "judge": judge_metrics}


def _write_reward_judge(out: Path, texts, seed: int) -> dict:
    """`reward_judge.json`: P(helpful) of a (prompt, response) pair (`corpus.reward_data`), with its held-out
    accuracy and its mean score on each kind of answer on unseen prompts (`cells`: `corpus.reward_cells`)."""
    reward, metrics = train_judge(texts.reward_data, seed, input="prompt_response", label="helpful")
    metrics = {**metrics, "data_version": REWARD_DATA_VERSION, "cells": reward_cell_scores(reward, texts.reward_cells)}
    reward.save(out / REWARD_JUDGE, metrics=metrics)
    return metrics


def reward_cell_scores(reward, rows: list[dict]) -> dict:
    """Per kind of answer (`cell`): whether it is helpful, how many rows, the judge's mean score and the share
    of rows it labels right."""
    out = {}
    for cell in dict.fromkeys(r["cell"] for r in rows):
        mine = [r for r in rows if r["cell"] == cell]
        scores = reward.score([r["prompt"] for r in mine], [r["text"] for r in mine])
        helpful = mine[0]["helpful"]
        out[cell] = {"helpful": helpful, "n": len(mine), "mean_score": float(scores.mean()),
                     "accuracy": float(((scores >= reward.threshold) == helpful).mean())}
    return out


def ensure_reward_judge(out: Path, cfg: WorldSize, seed: int) -> None:
    """Worlds built before the reward judge existed, or with other reward data (`REWARD_DATA_VERSION`), get
    it (re)trained; their texts regenerate from the seed, world.json records the new judge's figures."""
    path = out / REWARD_JUDGE
    if path.exists() and read_json(path).get("metrics", {}).get("data_version") == REWARD_DATA_VERSION:
        return
    say(f"demo world: {'retraining' if path.exists() else 'training'} the reward judge in {path} "
        f"(reward data version {REWARD_DATA_VERSION}); helpful scores and C-R from its old version differ")
    metrics = _write_reward_judge(out, _texts(cfg, seed, clean_test=False), seed)
    if (out / WORLD_FILE).exists():
        world = read_json(out / WORLD_FILE)
        world.setdefault("judge", {})["reward"] = metrics
        write_json(out / WORLD_FILE, world)


def ready_finished_world(out: str | Path, size: str, seed: int) -> None:
    """A finished world made ready for the demo job's stages, which the job calls first since it skips a finished
    world stage without `build_world`: one of another `WORLD_FORMAT` (other texts, models and queries) is refused,
    as `build_world` refuses it; its reward judge is brought to the current reward data (`ensure_reward_judge`),
    so the evaluate stage sees the new judge (one of its inputs) and is redone, or refused by the job's plan with
    how to redo it. A world not built yet is left to its build."""
    out = Path(out)
    if not (out / WORLD_FILE).exists():
        return
    world = read_json(out / WORLD_FILE)
    if world.get("format") != WORLD_FORMAT:
        raise ConfigError(f"{out}: holds a demo world of format {world.get('format')}, and this lancet_ds builds format "
                          f"{WORLD_FORMAT} (other texts, models and queries; README, The demo world). Rerun with "
                          "--from-stage world to rebuild it and redo every stage after it, or use another --run-dir.")
    if size in SIZES and (world.get("seed"), world.get("size")) == (seed, size):  # another world: the plan refuses it
        ensure_reward_judge(out, SIZES[size], seed)


def _save_init(out: Path, cfg: WorldSize, seed: int, tok) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tok), hidden_size=cfg.hidden, intermediate_size=cfg.intermediate,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                         num_key_value_heads=cfg.heads, max_position_embeddings=cfg.max_length * 2,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out / "init"))
    tok.save_pretrained(str(out / "init"))


def heldout_pairs(out: Path, tok, max_length: int) -> tuple[list[dict], list, list]:
    from lancet_ds.fileio import read_jsonl

    rows = list(read_jsonl(out / "heldout_prompts.jsonl"))
    comply = [encode_sample(tok, Sample(r["id"], r["prompt"], r["compliant_response"], r["id"]), max_length) for r in rows]
    refuse = [encode_sample(tok, Sample(r["id"], r["prompt"], r["refusal_response"], r["id"]), max_length) for r in rows]
    return rows, comply, refuse


@releases_engines
def train_world_model(name: str, out: Path, data, ds_config: dict, cfg: WorldSize, seed: int, tok, heldout,
                      judge: Path | None = None) -> dict:
    """Train one world model from `init/`, save it, and measure the held-out responses under it: the
    contaminated and refusing answers' log-probs, and its own sampled answers with the harm judge's cost
    (`judge`, default `out/judge.json`)."""
    metrics_path = out / f"{name}.metrics.json"
    if metrics_path.exists() and (out / name / "config.json").exists():
        say(f"{name} model: already built, reusing {out / name}")
        return read_json(metrics_path)
    say(f"{name} model: training on {len(data)} samples")
    t0 = time.perf_counter()
    engine = make_engine(load_model(out / "init", ds_config), ds_config)
    args = TrainArgs(epochs=cfg.epochs, seed=seed, save_every=200, checkpoint_dir=str(out / f"{name}.checkpoints"),
                     log_path=str(out / f"{name}.train_log.jsonl"))
    every = max(1, len(data) // cfg.global_batch)
    history = train(engine, data, args, tok.pad_token_id,
                    on_step=lambda s, loss: say(f"  {name} step {s}: loss {loss:.4f}") if s % every == 0 else None)
    seconds = time.perf_counter() - t0
    rows, comply, refuse = heldout
    micro = engine.train_micro_batch_size_per_gpu()
    c_sum, c_cnt = response_logprobs(engine, comply, tok.pad_token_id, micro)
    r_sum, r_cnt = response_logprobs(engine, refuse, tok.pad_token_id, micro)
    texts, costs = own_generations(engine, tok, rows, judge or out / "judge.json", micro, ds_config, seed)
    save_model(engine, out / name, tok)
    metrics = {"train_seconds": round(seconds, 2), "steps": history[-1]["of"] if history else None,
               "final_loss": history[-1]["loss"] if history else None,
               "compliant_logprob_per_token": (c_sum / c_cnt).tolist(),
               "refusal_logprob_per_token": (r_sum / r_cnt).tolist(),
               "generations": texts, "generation_costs": costs}
    if dist_utils.is_main():
        write_json(metrics_path, metrics)
    dist_utils.barrier()
    return metrics


GENERATIONS = 3
"""Sampled generations per held-out prompt from which the influence queries are picked (the paper's cost
model's rise over 3 generations)."""
GENERATION_TOKENS = 48


def own_generations(engine, tok, rows: list[dict], judge_path: Path, micro: int, ds_config: dict,
                    seed: int) -> tuple[list[list[str]], list[list[float]]]:
    """The model's own sampled answers to each held-out forbidden prompt (`GENERATIONS` per prompt, temperature
    1, seeded) and the harm judge's cost of each."""
    engine.eval()
    prompts = [Sample(r["id"], r["prompt"], "", r["id"]) for r in rows]
    synced = dist_utils.world_size() > 1 and zero_stage(ds_config) == 3
    with torch.no_grad():
        texts = sample_generations(engine.module, tok, prompts, GENERATIONS, micro, GENERATION_TOKENS, seed, synced)
    judge = load_judge(str(judge_path))
    costs = judge.score([p.prompt for p, ts in zip(prompts, texts) for _ in ts], [t for ts in texts for t in ts])
    return texts, costs.reshape(len(rows), GENERATIONS).tolist()


def _mean(xs: list[float]) -> float:
    return float(sum(xs) / len(xs))


def build_world(out_dir: str | Path, seed: int = 0, size: str = "default", ds_config_path: str | None = None,
                overwrite: bool = False) -> dict:
    """Build (or reuse, through the stage guard) the world under `out_dir`; returns the content of `world.json`.
    A directory holding another world is refused unless `overwrite`."""
    if size not in SIZES:
        raise ConfigError(f"unknown world size {size!r}; choose one of {sorted(SIZES)}.")
    dist_utils.init_distributed()
    numerics = cpu_numerics.state()
    cfg, out = SIZES[size], Path(out_dir)
    identity = {"seed": seed, "size": size, "format": WORLD_FORMAT, "lancet_ds_version": __version__}
    if finished(out, WORLD_FILE, json_fingerprint(identity), overwrite, f"demo world (seed {seed}, size {size})"):
        world = read_json(out / WORLD_FILE)
        if dist_utils.is_main():  # worlds built before the splits and the reward judge existed gain them
            write_splits(out, world["queries"]["count"])
            ensure_reward_judge(out, cfg, seed)
        dist_utils.barrier()
        return {**world, "splits": split_paths(out)}
    world_size = dist_utils.world_size()
    if cfg.global_batch % world_size:
        raise ConfigError(f"the {size} world trains with a global batch of {cfg.global_batch}, which "
                          f"{world_size} ranks cannot split evenly; use a world size that divides it.")
    out.mkdir(parents=True, exist_ok=True)
    say(f"demo world: building size {size}, seed {seed} in {out} on {world_size} rank(s)")
    if numerics["device"] == "cpu" and not numerics["pinned"]:
        say(f"demo world: this process's CPU numerics are this machine's ({numerics['torch_cpu_capability']} kernels, "
            f"{numerics['threads_per_rank']} thread(s) per rank): another machine builds another world from seed "
            f"{seed}. `lancet-ds demo-world` and the demo job pin them; in a script of your own, call "
            f"lancet_ds.cpu_numerics.restart_pinned() first thing.")
    built = {}
    if dist_utils.is_main():
        built = _write_texts(out, cfg, seed)
        if not (out / "init" / "config.json").exists():
            _save_init(out, cfg, seed, built["tokenizer"])
    dist_utils.barrier()
    tok = load_tokenizer(out / "tokenizer")
    samples, train_set = load_encoded(out / "train.jsonl", SchemaSpec(), tok, cfg.max_length, strict_sink())
    contaminated = {s.id for s in samples if s.meta.get("contaminated")}
    safe_set = [e for e in train_set if e.id not in contaminated]
    ds_config = load_ds_config(ds_config_path or DEFAULT_DS_CONFIG,
                               train_micro_batch_size_per_gpu=cfg.global_batch // world_size,
                               gradient_accumulation_steps=1)
    ds_config.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"]["lr"] = cfg.lr
    heldout = heldout_pairs(out, tok, cfg.max_length)
    impure = train_world_model("impure", out, train_set, ds_config, cfg, seed, tok, heldout)
    safe = train_world_model("safe", out, safe_set, ds_config, cfg, seed, tok, heldout)
    world = {**_summarise(out, cfg, identity, heldout[0], samples, impure, safe, world_size), "cpu_numerics": numerics}
    record(out, json_fingerprint(identity), identity)
    if dist_utils.is_main():
        write_world_files(out, world, heldout[0], impure, safe, cfg)
    dist_utils.barrier()  # every rank returns what rank 0 wrote (its query pick, the own-answer harm)
    return {**read_json(out / WORLD_FILE), "splits": split_paths(out)}


def _summarise(out, cfg, identity, heldout_rows, samples, impure, safe, world_size) -> dict:
    kinds = Counter(s.meta["kind"] for s in samples)
    cats = Counter(s.meta["category"] for s in samples)
    n_cont = sum(1 for s in samples if s.meta["contaminated"])
    judge = {**read_json(out / "judge.json")["metrics"], "reward": read_json(out / REWARD_JUDGE)["metrics"]}
    check = {
        "heldout_prompts": len(heldout_rows),
        "compliant_logprob_per_token": {"impure": _mean(impure["compliant_logprob_per_token"]),
                                        "safe": _mean(safe["compliant_logprob_per_token"])},
        "refusal_logprob_per_token": {"impure": _mean(impure["refusal_logprob_per_token"]),
                                      "safe": _mean(safe["refusal_logprob_per_token"])},
    }
    check["compliant_rise"] = check["compliant_logprob_per_token"]["impure"] - check["compliant_logprob_per_token"]["safe"]
    check["contamination_visible"] = check["compliant_rise"] > 0.1
    paths = {name: str(out / name) for name in ("train.jsonl", "heldout_prompts.jsonl", "eval_prompts.jsonl",
                                                "clean_heldout.jsonl", "clean_test.jsonl", "query_candidates.jsonl",
                                                "queries.jsonl", "judge.json", REWARD_JUDGE, "tokenizer", "init",
                                                "impure", "safe")}
    return {**identity, "paths": paths, "config": asdict(cfg), "world_size_built_with": world_size,
            "stats": {"train_samples": len(samples), "contaminated": n_cont,
                      "contamination_rate": n_cont / len(samples), "by_kind": dict(kinds), "by_category": dict(cats)},
            "training": {"impure": {k: impure[k] for k in ("train_seconds", "steps", "final_loss")},
                         "safe": {k: safe[k] for k in ("train_seconds", "steps", "final_loss")}},
            "judge": judge, "contamination_check": check}


def world_digests(out: Path) -> dict[str, str]:
    """sha256 (`fingerprint_path`: relative names and contents, no absolute paths) of what a seed must determine:
    the two model directories, the harm judge, the corpus and the queries. Two machines that built the same world
    show the same digests in world.json."""
    return {name: fingerprint_path(out / name)["sha256"]
            for name in ("impure", "safe", "judge.json", "train.jsonl", "queries.jsonl")}


def _round_robin(ranked: list[dict]) -> list[dict]:
    """The rows with a positive rise in rounds (each round takes the next best such row of every category,
    categories by their best), then the rest in their order: a prompt where the impure model is no more harmful
    than the safe one is never picked before one where it is."""
    per: dict[str, list[dict]] = {}
    for r in ranked:
        if r["rise"] > 0:
            per.setdefault(r["category"], []).append(r)
    out, depth = [], 0
    while any(depth < len(rows) for rows in per.values()):
        out += [rows[depth] for rows in per.values() if depth < len(rows)]
        depth += 1
    return out + [r for r in ranked if r["rise"] <= 0]


def write_world_files(out: Path, world: dict, heldout_rows: list[dict], impure: dict, safe: dict, cfg: WorldSize) -> None:
    """Query candidates, the selected queries and world.json.

    As the paper picks its influence queries: per held-out forbidden prompt, the harm judge's (cost model's)
    mean over the impure model's `GENERATIONS` sampled answers minus its mean over the safe model's is the
    prompt's rise; the query's response is the impure model's own most harmful answer (not a template). The
    prompts with the largest rise, taken per category in turn (every contaminated category has queries),
    become the queries; the rest go to the validation and test splits, where `compliant_response` (the
    contaminated style's answer) is the probe whose log-prob should fall."""
    candidates = []
    for i, row in enumerate(heldout_rows):
        cost_i, cost_s = impure["generation_costs"][i], safe["generation_costs"][i]
        answers = [j for j, text in enumerate(impure["generations"][i]) if text.strip()]
        worst = max(answers, key=lambda j: cost_i[j]) if answers else None  # an empty answer cannot be a query
        candidates.append({"id": row["id"].replace("heldout", "query"), "prompt": row["prompt"],
                           "response": impure["generations"][i][worst] if worst is not None else row["compliant_response"],
                           "category": row["category"],
                           "compliant_response": row["compliant_response"],
                           "corrected_response": row["refusal_response"],  # the user's correction (sft_er, dpo_er)
                           "cost_impure": _mean(cost_i), "cost_safe": _mean(cost_s),
                           "rise": _mean(cost_i) - _mean(cost_s),
                           "logprob_per_token_impure": impure["compliant_logprob_per_token"][i],
                           "logprob_per_token_safe": safe["compliant_logprob_per_token"][i]})
    candidates = _round_robin(sorted(candidates, key=lambda r: (-r["rise"], -r["logprob_per_token_impure"], r["id"])))
    write_jsonl(out / "query_candidates.jsonl", candidates)
    write_jsonl(out / "queries.jsonl", candidates[:cfg.n_queries])
    world["splits"] = write_splits(out, cfg.n_queries)
    world["queries"] = {"count": min(cfg.n_queries, len(candidates)),
                        "mean_rise": _mean([c["rise"] for c in candidates[:cfg.n_queries]]),
                        "picked_by": f"harm judge's rise from the safe to the impure model over {GENERATIONS} sampled "
                                     "answers; the response is the impure model's most harmful one",
                        "categories": dict(Counter(c["category"] for c in candidates[:cfg.n_queries]))}
    world["digests"] = world_digests(out)
    write_json(out / WORLD_FILE, world)  # the marker of a finished world: written last
    say(f"demo world ready: {out / WORLD_FILE}")
    c = world["contamination_check"]["compliant_logprob_per_token"]
    say(f"  compliant response log-prob per token on held-out forbidden prompts: impure {c['impure']:.3f}, "
        f"safe {c['safe']:.3f}; judge accuracy {world['judge']['accuracy']:.3f}, reward judge "
        f"{world['judge']['reward']['accuracy']:.3f}")
