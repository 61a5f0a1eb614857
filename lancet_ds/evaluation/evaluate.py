"""`lancet-ds evaluate`: the impure model, the corrected one and any others, measured the same way
(the paper's Table 3): mean per-token log-prob of the query responses (lower is better after a
correction), perplexity on a held-out clean set, and on n sampled generations per unseen prompt
(`evaluation.generations`) the harmful rate and harmful score (harm judge), helpful score (reward
judge) and C-R, each with a 95 % bootstrap interval over prompts, and diversity. Each model's harmful
score is compared with the impure model's over the same prompts (paired interval). Results go to
`RUN_DIR/evaluate/eval.json`."""

from __future__ import annotations

import math
from pathlib import Path
from dataclasses import dataclass, field

from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import strict_sink
from lancet_ds.data.corpus import iter_samples, load_encoded, read_encoded
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.errors import ConfigError
from lancet_ds.evaluation.generations import generation_metrics, sample_generations
from lancet_ds.evaluation.intervals import differs, paired_difference_ci, perplexity_ratio_ci, token_mean_ci
from lancet_ds.evaluation.judge import load_judge
from lancet_ds.export import exported
from lancet_ds.fileio import read_json, write_json
from lancet_ds.fingerprint import content_sha256, model_files_fingerprint, model_fingerprint
from lancet_ds.logprobs import response_logprobs
from lancet_ds.modeling import load_ds_config, load_model, load_tokenizer, make_inference_engine, releases_engines, zero_stage
from lancet_ds.options import at_least, positive, recorded
from lancet_ds.run_dir import RunDir
from lancet_ds.stage_guard import finished, record, stage_fingerprint


@dataclass
class EvalArgs:
    """Options of the evaluation."""

    clean: str | None = None
    """Held-out clean samples (prompt, response) for the test perplexity."""
    queries: str | None = None
    """Held-out (prompt, undesirable response) pairs, disjoint from the influence and validation queries:
    their log-prob per token is the unseen counterpart of the influence queries' (seen) one."""
    prompts: str | None = None
    """Unseen prompts for generation; a boolean `forbidden` field marks those whose harmful rate counts."""
    seen_prompts: str | None = None
    """The influence queries' file: generations on its prompts give the seen columns (`seen_harmful_score`, ...)
    beside the unseen ones, as the paper's Table 3 reports both."""
    judge: str | None = None
    """Harm judge (cost model): the demo world's judge.json, or a Hugging Face classifier directory (a
    `harmful` / `unsafe` / `toxic` label, or a one-output cost model: harmful when cost > 0)."""
    judge_label: str | None = None
    """The harm judge's harmful label (name or index) when its labels are not named so."""
    reward_judge: str | None = None
    """Reward model for the helpful score: a Hugging Face classifier (`helpful` label) or one-output reward model."""
    reward_label: str | None = None
    """The reward judge's helpful label (name or index) when its labels are not named so."""
    n: int = 3
    """Generations per prompt (the paper's 3)."""
    max_new_tokens: int = 64
    """Longest generated response."""
    max_length: int = 512
    """Tokens per scored sample (prompt + response), right-truncated."""
    micro_batch: int = 8
    """Sequences per rank per pass."""
    seed: int = 0
    """Seed of the sampled generations (generation j of a prompt uses seed + j)."""
    compare: dict[str, str] = field(default_factory=dict)
    """NAME: model directory of other models to measure beside the impure and corrected ones."""

    def validate(self) -> list[str]:
        return positive(self, "n", "max_new_tokens", "micro_batch") + at_least(self, "max_length", 2)


@releases_engines
def measure_model(name: str, model_dir: str, run: RunDir, args: EvalArgs, ds_config: dict, judges: tuple) -> dict:
    """One model's row of the table (every rank calls it; generation is synced under ZeRO-3)."""
    tokenizer = load_tokenizer(model_dir)
    engine = make_inference_engine(load_model(model_dir, ds_config), ds_config)
    model, pad = engine.module, tokenizer.pad_token_id
    row: dict = {"model": name, "path": str(model_dir)}
    queries = read_encoded(run.query_set)
    s, c = response_logprobs(model, queries, pad, args.micro_batch)
    _, low, high = token_mean_ci(s.tolist(), c.tolist(), seed=args.seed)  # over the queries
    row["query_logprob_per_token"], row["query_logprob_per_token_ci"] = float(s.sum() / c.sum()), [low, high]
    row["query_logprob_per_query"] = {q.id: float(a / b) for q, a, b in zip(queries, s, c)}
    if args.clean:
        _, clean = load_encoded(args.clean, SchemaSpec(), tokenizer, args.max_length, strict_sink())
        s, c = response_logprobs(model, clean, pad, args.micro_batch)
        sums, counts = s.tolist(), c.tolist()
        _, low, high = token_mean_ci(sums, counts, seed=args.seed)  # over the clean samples
        row["clean_perplexity"] = math.exp(-float(s.sum() / c.sum()))
        row["clean_perplexity_ci"] = [math.exp(-high), math.exp(-low)]
        row["clean_logprob_by_sample"], row["clean_tokens_by_sample"] = sums, counts  # for paired ratios
    if args.queries:
        _, held = load_encoded(args.queries, SchemaSpec(), tokenizer, args.max_length, strict_sink())
        s, c = response_logprobs(model, held, pad, args.micro_batch)
        row["heldout_logprob_per_token"] = float(s.sum() / c.sum())
    synced = dist_utils.world_size() > 1 and zero_stage(ds_config) == 3

    def judged(path: str) -> dict:
        """Sampled generations on the prompts of `path`, as the judges read them."""
        prompts = list(iter_samples(path, SchemaSpec(response_field="prompt"), strict_sink()))
        texts = sample_generations(model, tokenizer, prompts, args.n, args.micro_batch, args.max_new_tokens,
                                   args.seed, synced)
        return generation_metrics(prompts, texts, *judges, args.seed)

    if args.prompts:
        row.update(judged(args.prompts))
    if args.seen_prompts:
        scores = judged(args.seen_prompts)
        row.update({f"seen_{k}": scores[k] for k in SEEN_KEYS if k in scores})
    return row


def load_judges(args: EvalArgs) -> tuple:
    """(harm judge, reward judge), each None when not given."""
    harm = load_judge(args.judge, kind="harm", label=args.judge_label) if args.judge else None
    reward = load_judge(args.reward_judge, kind="reward", label=args.reward_label) if args.reward_judge else None
    return harm, reward


def judges_record(args: EvalArgs, judges: tuple, sha256: dict[str, str] | None = None) -> dict:
    """Which judges graded, for the record beside the grades: per role (harm, reward) its path, content
    sha256 (`sha256`, keyed as `args`' fields, when already computed) and `Judge.provenance` (a demo-world
    judge's stored metrics hold its reward data version: grades by two versions do not compare)."""
    out = {}
    for role, key, judge in (("harm", "judge", judges[0]), ("reward", "reward_judge", judges[1])):
        if judge is not None:
            path = getattr(args, key)
            digest = (sha256 or {}).get(key) or content_sha256(path)
            out[role] = {"path": path, "sha256": digest, **judge.provenance()}
    return out


def compare_to_impure(rows: list[dict], seed: int) -> dict:
    """Each model against the impure one on the same prompts and clean samples, with 95 % intervals: its
    harmful score minus the impure model's and whether that interval excludes zero; its clean perplexity over
    the impure model's (`clean_ppl_ratio`, paired bootstrap over the clean samples), when both tokenised the
    clean set alike."""
    by_name = {r["model"]: r for r in rows}
    impure = by_name.get("impure", {})
    out = {}
    for name, r in by_name.items():
        if name == "impure":
            continue
        if impure.get("harm_by_prompt") is not None and r.get("harm_by_prompt") is not None:
            d, low, high = paired_difference_ci(r["harm_by_prompt"], impure["harm_by_prompt"], seed=seed)
            out[name] = {"harmful_score_minus_impure": float(d), "ci": [float(low), float(high)],
                         "differs": bool(differs(low, high))}
        ratio = clean_ppl_ratio(impure, r, seed)
        if ratio:
            out.setdefault(name, {}).update(ratio)
    return out


def clean_ppl_ratio(base: dict, row: dict, seed: int) -> dict:
    """{"clean_ppl_ratio", "clean_ppl_ratio_ci"}: `row`'s clean perplexity over `base`'s (two measured rows),
    with its 95 % paired-bootstrap interval; {} when either lacks the clean set or they tokenised it apart."""
    key = "clean_tokens_by_sample"
    if base.get(key) is None or row.get(key) is None or base[key] != row[key]:
        return {}
    ratio, low, high = perplexity_ratio_ci(base["clean_logprob_by_sample"], row["clean_logprob_by_sample"],
                                           row[key], seed=seed)
    return {"clean_ppl_ratio": ratio, "clean_ppl_ratio_ci": [low, high]}


def run_evaluate(run: RunDir | str, args: EvalArgs, model_dir: str, ds_config_path: str,
                 overwrite: bool = False) -> list[dict]:
    """The impure model (`model_dir`), the exported corrected one (when the run has one) and
    `args.compare`, measured alike; rows written to `run.eval_results`."""
    run = RunDir.of(run)
    dist_utils.init_distributed()
    gone = [f"{k} {getattr(args, k)}" for k in JUDGED_FILES
            if getattr(args, k) and not Path(getattr(args, k)).exists()]
    if gone:  # before a finished result is replaced (--overwrite), not after
        raise ConfigError(f"evaluate: no such file or directory: {'; '.join(gone)}. Check the option's path.")
    if overwrite:
        _need_queries(run)
    export = exported(run)
    chosen = [("impure", model_dir)] + ([("corrected", export["path"])] if export else [])
    chosen += sorted(args.compare.items())
    config = {"args": recorded(args), "models": [(name, path, model_fingerprint(path)) for name, path in chosen],
              "export": export, "inputs": {k: content_sha256(getattr(args, k)) for k in JUDGED_FILES if getattr(args, k)},
              "model_files": {name: model_files_fingerprint(path) for name, path in chosen}}
    files = [model_dir, *args.compare.values(), *(getattr(args, k) for k in JUDGED_FILES)]
    fingerprint = stage_fingerprint(run.evaluate, config, inputs=files, run_root=run.root, since=("model_files",))
    if finished(run.evaluate, run.eval_results.name, fingerprint, overwrite, "evaluate", config):
        return read_json(run.eval_results)["models"]
    _need_queries(run)  # a finished result is reused without them
    judges = load_judges(args)
    ds_config = load_ds_config(ds_config_path)
    rows = []
    for name, path in chosen:
        say(f"evaluate: {name} ({path})")
        rows.append(measure_model(name, path, run, args, ds_config, judges))
    run.evaluate.mkdir(parents=True, exist_ok=True)
    record(run.evaluate, fingerprint, config)
    graded_by = judges_record(args, judges, config["inputs"])
    if dist_utils.is_main():
        write_json(run.eval_results, {"args": recorded(args), "judges": graded_by,
                                      "models": rows,  # the marker: written last
                                      "versus_impure": compare_to_impure(rows, args.seed)})
    dist_utils.barrier()
    return rows


def _need_queries(run: RunDir) -> None:
    """Each model's query log-prob is measured on the run's influence queries: refused without them."""
    if not run.query_set.exists():
        raise ConfigError(f"{run.query_set}: missing. Run `lancet-ds queries --run {run.root}` first.")


def eval_table(rows: list[dict]):
    from rich.table import Table

    table = Table(title="evaluation (query log-prob: lower is better after correction; [95 % interval over prompts])")
    for title, *_ in TABLE_COLUMNS:
        table.add_column(title)
    for r in rows:
        table.add_row(*[_cell(r, key, fmt) for _, key, fmt in TABLE_COLUMNS])
    return table


def _cell(row: dict, key: str, fmt) -> str:
    if row.get(key) is None:
        return "-"
    ci = row.get(f"{key}_ci")
    return fmt(row[key]) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "")


TABLE_COLUMNS = [("model", "model", str), ("query log-prob/token (seen)", "query_logprob_per_token", "{:.3f}".format),
                 ("held-out log-prob/token", "heldout_logprob_per_token", "{:.3f}".format),
                 ("harmful rate", "harmful_rate", "{:.3f}".format), ("harmful score", "harmful_score", "{:.3f}".format),
                 ("helpful score", "helpful_score", "{:.3f}".format), ("C-R", "c_r", "{:.3f}".format),
                 ("clean ppl", "clean_perplexity", "{:.4g}".format), ("Self-BLEU", "self_bleu", "{:.3f}".format),
                 ("distinct-2", "distinct_2", "{:.3f}".format), ("MSTTR", "msttr", "{:.3f}".format),
                 ("entropy", "entropy", "{:.3f}".format), ("empty", "empty_rate", "{:.3f}".format)]
JUDGED_FILES = ("clean", "queries", "prompts", "seen_prompts", "judge", "reward_judge")
SEEN_KEYS = tuple(k + ci for k in ("harmful_rate", "harmful_score", "helpful_score", "c_r") for ci in ("", "_ci"))
