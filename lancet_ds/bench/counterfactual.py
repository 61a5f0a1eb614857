"""The quality suite's counterfactual retrains on the demo world (DESIGN.md section 6; the paper's Figure 4c).

The impure model is retrained from the world's `init/` with the world's own training loop and seed
(`demo_world.build.train_world_model`) on the corpus with some samples removed, and measured as the world
measures its models: the influence queries' prompts' contaminated-answer log-prob per token, and the harm
judge's cost of the model's own sampled answers to every held-out forbidden prompt.

* `by_method`: each recall method's top-k candidates removed (k = the labelled positives among them), so
  removing more of the behaviour is better recall of its causes. Beside them, a control (`RESEEDED`): the
  whole corpus retrained with another training seed (its order and the held-out answers' sampling), so
  nothing is removed. A removal reorders the corpus just as much, so a method's row tells its top k apart
  from none only by more than this row moves. On the default world's format 5 that was up to 0.65 of the
  impure → safe gap in held-out harm, and under 0.05 of it in query log-prob (docs/correction-record.md,
  session 44). Each row carries the share of the held-out harm gap it removed with its 95 % interval
  (`heldout_share`), and `heldout_lead` the first method's lead over each other row, paired over the held-out
  prompts (the issue's target: LinFAC's removal takes out more of the behaviour than TF-IDF's).
* `by_kind`: each kind of contaminated sample the world writes (its styles, `demo_world.corpus`) removed
  (`without`: how much of the behaviour the kind is needed for), or kept alone with every other contaminated
  sample removed (`only`: how much of it the kind teaches on its own). A kind that moves the influence queries
  little is one an influence function *should* rank low, whatever its label says. Beside them, a control:
  the same retrain without as many randomly chosen clean samples as the largest kind has (`CONTROL`), the share
  a removal moves by chance; a kind whose `without` share is within it is not told apart from none.
"""

from __future__ import annotations

import random
import statistics
from collections import Counter
from pathlib import Path

from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.data.bad_records import strict_sink
from lancet_ds.data.corpus import load_encoded
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.demo_world.build import SIZES, heldout_pairs, train_world_model
from lancet_ds.evaluation.gap import gap_closed, gap_closed_ci
from lancet_ds.evaluation.intervals import paired_difference_ci
from lancet_ds.fileio import read_json, read_jsonl
from lancet_ds.modeling import load_ds_config, load_tokenizer
from lancet_ds.bench.sizes import KIND_SHARE

CONTROL = "random clean samples (control)"
RESEEDED = "nothing, another training seed (control)"
"""`by_method`'s control row: the whole corpus retrained with the world's seed + `RESEED_OFFSET`."""
RESEED_OFFSET = 1000


class Retrainer:
    """One world's retraining set-up: its corpus, held-out pairs, DeepSpeed config and the impure and safe
    models' own measurements; `retrain(name, keep)` trains on the samples `keep(sample)` accepts."""

    def __init__(self, out: Path, world_dir: Path, size: str, ds_config: str, seed: int):
        self.cfg, self.seed, self.world = SIZES[size], seed, world_dir
        self.tok = load_tokenizer(world_dir / "tokenizer")
        _, self.train_set = load_encoded(world_dir / "train.jsonl", SchemaSpec(), self.tok, self.cfg.max_length,
                                         strict_sink())
        self.heldout = heldout_pairs(world_dir, self.tok, self.cfg.max_length)
        self.query_ids = {r["id"] for r in read_jsonl(world_dir / "queries.jsonl")}
        micro = self.cfg.global_batch // dist_utils.world_size()
        self.ds = load_ds_config(ds_config, train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=1)
        self.ds.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"]["lr"] = self.cfg.lr
        self.base = out / "counterfactual"
        self.base.mkdir(parents=True, exist_ok=True)
        if not (self.base / "init").exists() and dist_utils.is_main():
            (self.base / "init").symlink_to((world_dir / "init").resolve())
        dist_utils.barrier()
        impure, safe = read_json(world_dir / "impure.metrics.json"), read_json(world_dir / "safe.metrics.json")
        self.reference = {"impure": self.query_logprob(impure), "safe": self.query_logprob(safe),
                          "impure_heldout_harm": heldout_harm(impure), "safe_heldout_harm": heldout_harm(safe)}
        self.heldout_costs = {"impure": impure["generation_costs"], "safe": safe["generation_costs"]}

    def query_logprob(self, metrics: dict) -> float:
        """The mean per-token log-prob of the contaminated answers to the influence queries' prompts."""
        vals = [v for r, v in zip(self.heldout[0], metrics["compliant_logprob_per_token"])
                if r["id"].replace("heldout", "query") in self.query_ids]
        return sum(vals) / len(vals)

    def retrain(self, name: str, keep, seed: int | None = None) -> tuple[dict, int]:
        """(the retrained model's query log-prob, held-out harm and the share of the held-out harm gap it removed
        (`heldout_share`), how many samples were left out); `seed`: the training seed, the world's own when None
        (then, with every sample kept, the impure model exactly). Its answers' costs stay in `heldout_costs[name]`."""
        kept = [e for e in self.train_set if keep(e)]
        left_out = len(self.train_set) - len(kept)
        say(f"counterfactual: retraining {name} ({left_out} samples left out)")
        metrics = train_world_model(name, self.base, kept, self.ds, self.cfg, self.seed if seed is None else seed,
                                    self.tok, self.heldout, judge=self.world / "judge.json")
        self.heldout_costs[name] = metrics["generation_costs"]
        return {"query_logprob_per_token": self.query_logprob(metrics), "heldout_harm": heldout_harm(metrics),
                **heldout_share(self.heldout_costs["impure"], self.heldout_costs["safe"], metrics["generation_costs"])}, \
            left_out


def heldout_harm(metrics: dict) -> float:
    """The harm judge's mean cost of a world model's own sampled answers to every held-out forbidden prompt."""
    return mean_cost(metrics["generation_costs"])


def mean_cost(costs: list) -> float:
    """The mean over the prompts of each prompt's mean cost (`costs`: one list of answer costs per prompt)."""
    return statistics.fmean(statistics.fmean(c) for c in costs)


def heldout_share(impure: list, safe: list, model: list) -> dict:
    """`heldout_gap_removed`: the share of the impure → safe gap in held-out harm a retrained model removed,
    (impure − model) / (impure − safe), the evaluation's `gap_closed` on the held-out forbidden prompts, and
    `heldout_gap_removed_ci`: its 95 % interval (`gap_closed_ci`: the three models' answers to the same prompts
    resampled together). Each argument: the harm judge's costs of a model's sampled answers, one list per prompt."""
    rows = [{"heldout_harm": mean_cost(c), "harm_by_prompt": c} for c in (impure, safe, model)]
    return {"heldout_gap_removed": gap_closed(*rows, key="heldout_harm"), "heldout_gap_removed_ci": gap_closed_ci(*rows)}


def heldout_lead(impure: list, safe: list, first: list, other: list) -> dict:
    """How much more of the held-out harm gap the `first` removal took out than the `other`: (other's held-out harm
    − first's) / (impure − safe), with its 95 % interval paired over the held-out prompts (`paired_difference_ci`:
    one draw of prompts for both, so the prompts' shared difficulty cancels); positive: `first` removed more.
    Arguments as `heldout_share`'s. None for both when impure and safe do not differ."""
    gap = mean_cost(impure) - mean_cost(safe)
    if abs(gap) < 1e-12:
        return {"share": None, "share_ci": None}
    diff, low, high = paired_difference_ci(other, first)
    return {"share": diff / gap, "share_ci": sorted([low / gap, high / gap])}


def by_method(retrainer: Retrainer, order: dict[str, list[str]], positives: set[str], methods) -> dict:
    """Retrain without each method's top-k, and the `RESEEDED` control (nothing removed, another training seed);
    each row's query log-prob change against the impure model's and its share of the held-out harm gap, under the
    method's own key (bench.json `quality.counterfactual.<recall>`; `removed_by` lists them), and `heldout_lead`:
    the first method's lead over each other row (`heldout_lead`; its `of` names it). No methods, no retrains."""
    k = len(positives)
    result = {"k": k, **retrainer.reference, "removed_by": []}
    runs = [(m, f"without_{m}", set(order[m][:k]), retrainer.seed) for m in methods]
    runs += [(RESEEDED, "reseeded", set(), retrainer.seed + RESEED_OFFSET)] if methods else []
    for m, name, drop, seed in runs:
        row, _ = retrainer.retrain(name, lambda e, dropped=drop: e.id not in dropped, seed)
        result["removed_by"].append(m)
        result[m] = {**row, "change_vs_impure": row["query_logprob_per_token"] - result["impure"],
                     "contaminated_removed": len(drop & positives)}
    if runs:
        costs = retrainer.heldout_costs
        first, *others = [(m, name) for m, name, _, _ in runs]
        result["heldout_lead"] = {"of": first[0], "over": {
            m: heldout_lead(costs["impure"], costs["safe"], costs[first[1]], costs[name]) for m, name in others}}
    return result


def by_kind(retrainer: Retrainer, modes: tuple[str, ...]) -> dict:
    """Per contaminated kind and mode: the retrained model's figures and the share of the impure → safe gap in
    query log-prob: `behaviour_removed` = (impure − model) / (impure − safe) without the kind, `behaviour_alone`
    = (model − safe) / (impure − safe) with the kind as the only contamination; with `without`, the `CONTROL`
    row: as many random clean samples left out as the largest kind has. No modes, no retrains: {}."""
    if not modes:
        return {}
    unknown = [m for m in modes if m not in KIND_SHARE]
    if unknown:
        raise ValueError(f"bench counterfactual: kind modes {unknown} unknown; use any of {list(KIND_SHARE)} "
                         "(bench.sizes: counterfactual_kinds).")
    kind = {r["id"]: r.get("kind", "") for r in read_jsonl(retrainer.world / "train.jsonl")}
    contaminated = sorted({k for k in kind.values() if k.startswith("contaminated")})
    impure, safe = retrainer.reference["impure"], retrainer.reference["safe"]
    gap = impure - safe
    runs = [(k, mode, f"{mode}_{k}", _keep(kind, k, mode)) for k in contaminated for mode in modes]
    if "without" in modes and contaminated:
        clean = sorted(i for i, k in kind.items() if not k.startswith("contaminated"))
        n = max(Counter(kind.values())[k] for k in contaminated)
        drop = set(random.Random(retrainer.seed).sample(clean, min(n, len(clean))))
        runs.append((CONTROL, "without", "without_random_clean", lambda e: e.id not in drop))
    result: dict = {}
    for k, mode, name, keep in runs:
        row, left_out = retrainer.retrain(name, keep)
        lp = row["query_logprob_per_token"]
        share = ((impure - lp) if mode == "without" else (lp - safe)) / gap if abs(gap) > 1e-12 else None
        result.setdefault(k, {})[mode] = {**row, "left_out": left_out, KIND_SHARE[mode]: share}
    return result


def _keep(kind: dict[str, str], k: str, mode: str):
    """Which samples a kind retrain keeps: all but kind `k` (`without`), or `k` and every clean one (`only`)."""
    if mode == "without":
        return lambda e: kind[e.id] != k
    return lambda e: kind[e.id] == k or not kind[e.id].startswith("contaminated")
