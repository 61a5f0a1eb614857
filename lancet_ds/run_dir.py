"""The run directory (DESIGN.md section 2): the one place its file and folder names are spelled.

    RUN/
      manifest.json  log.jsonl  .lock            the job's record, events and lock
      world/                                     the demo world (embedded default job only)
      factors/   index.json  factors-*.safetensors  fit_set.jsonl (+ .meta.json)  partial/   fit
      queries/   index.json  queries-*.safetensors  batches.json  query_set.jsonl          queries
      recall/    recall.jsonl  candidates.json  summary.json  cache-RRRRR/                 recall
      scores/    part-RRRRR.jsonl  scores.jsonl  scored_set.jsonl  summary.json            score
      selection.jsonl  ref_logprobs/  correct/{checkpoints/, log.jsonl, summary.json}      correct
      model/  export.json                                                                   export
      evaluate/eval.json                                                                    evaluate
      compare/ekfac/                             a run directory of its own (EK-FAC beside LinFAC)
      report.json  report.md  plots/                                                        report

Every stage folder also holds `stage_config.json` (the stage guard's record: resolved options and input
fingerprints) and, under `on_bad_record=skip`, `rejects.jsonl`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAGE_RECORD = "stage_config.json"
REJECTS = "rejects.jsonl"
SHARD_INDEX = "index.json"
"""A sharded safetensors store's index (weight map + metadata), written last: the marker of a finished store."""


@dataclass(frozen=True)
class RunDir:
    root: Path

    @classmethod
    def of(cls, where: "RunDir | str | Path") -> "RunDir":
        return where if isinstance(where, RunDir) else cls(Path(where))

    def __str__(self) -> str:
        return str(self.root)

    # ---- the job ----------------------------------------------------------------------------------
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def log(self) -> Path:
        return self.root / "log.jsonl"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def world(self) -> Path:
        return self.root / "world"

    # ---- fit ----------------------------------------------------------------------------------------
    @property
    def factors(self) -> Path:
        return self.root / "factors"

    @property
    def factors_index(self) -> Path:
        return self.factors / SHARD_INDEX

    @property
    def fit_set(self) -> Path:
        return self.factors / "fit_set.jsonl"

    @property
    def fit_partial(self) -> Path:
        return self.factors / "partial"

    # ---- queries ------------------------------------------------------------------------------------
    @property
    def queries(self) -> Path:
        return self.root / "queries"

    @property
    def queries_index(self) -> Path:
        return self.queries / SHARD_INDEX

    @property
    def batches(self) -> Path:
        return self.queries / "batches.json"

    @property
    def query_set(self) -> Path:
        return self.queries / "query_set.jsonl"

    # ---- recall -------------------------------------------------------------------------------------
    @property
    def recall(self) -> Path:
        return self.root / "recall"

    @property
    def recall_rows(self) -> Path:
        return self.recall / "recall.jsonl"

    @property
    def candidates(self) -> Path:
        return self.recall / "candidates.json"

    @property
    def recall_summary(self) -> Path:
        return self.recall / "summary.json"

    def recall_cache(self, rank: int) -> Path:
        return self.recall / f"cache-{rank:05d}"

    # ---- score --------------------------------------------------------------------------------------
    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def score_rows(self) -> Path:
        return self.scores / "scores.jsonl"

    @property
    def scored_set(self) -> Path:
        return self.scores / "scored_set.jsonl"

    @property
    def scores_summary(self) -> Path:
        return self.scores / "summary.json"

    def score_part(self, rank: int) -> Path:
        return self.scores / f"part-{rank:05d}.jsonl"

    def score_parts(self) -> list[Path]:
        return sorted(self.scores.glob("part-*.jsonl"))

    # ---- correct ------------------------------------------------------------------------------------
    @property
    def correct(self) -> Path:
        return self.root / "correct"

    @property
    def checkpoints(self) -> Path:
        return self.correct / "checkpoints"

    @property
    def correct_log(self) -> Path:
        return self.correct / "log.jsonl"

    @property
    def correct_summary(self) -> Path:
        return self.correct / "summary.json"

    @property
    def selection(self) -> Path:
        return self.root / "selection.jsonl"

    @property
    def ref_logprobs(self) -> Path:
        return self.root / "ref_logprobs"

    @property
    def ref_logprobs_index(self) -> Path:
        return self.ref_logprobs / "index.json"

    @property
    def ref_logprobs_tensors(self) -> Path:
        return self.ref_logprobs / "logprobs.safetensors"

    # ---- export, evaluate, report ---------------------------------------------------------------------
    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def export_record(self) -> Path:
        return self.root / "export.json"

    @property
    def evaluate(self) -> Path:
        return self.root / "evaluate"

    @property
    def eval_results(self) -> Path:
        return self.evaluate / "eval.json"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def compare(self, method: str) -> "RunDir":
        """The run directory of a comparison method (e.g. EK-FAC scored on the same candidates)."""
        return RunDir(self.root / "compare" / method)
