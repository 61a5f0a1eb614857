"""D⁺'s harm filter (`correct --positive-judge`): the training samples a harm judge flags, the only ones
`ibo.selection.select` then lets into D⁺ (and, with `--judge-bars-negative`, the ones it keeps out of D⁻).

The paper picks its influence queries by the cost model's rise (Section 4.1) and then lowers whatever the
influence function ranks highest. Influence measures what raises the undesirable responses' likelihood, not
what is harmful: a refusal that quotes the forbidden act's steps can rank with the harmful answers, and IBO
then unlearns a good answer. The filter asks the same kind of judge the validation uses whether each
candidate (prompt, response) is harmful (`evaluation.judge.flag`: its score above the judge's threshold).
It reads no label of the corpus.
"""

from __future__ import annotations

from lancet_ds import distributed as dist_utils
from lancet_ds.evaluation.judge import flag, load_judge


def positive_candidates(rows: list[dict]) -> list[dict]:
    """The score rows that could enter D⁺: a positive score on some query batch (`score_<b>` > 0)."""
    return [r for r in rows if any(v > 0 for k, v in r.items() if k.startswith("score_"))]


def judge_flagged(rows: list[dict], judge_path: str, label: str | None = None, every_row: bool = False) -> set[str]:
    """Ids of the positive candidates among `rows` (with `every_row`: of all of them, for D⁻'s bar too) the harm
    judge at `judge_path` flags; judged on rank 0 and handed to every rank (an HF classifier is loaded once)."""
    def judged() -> list[str]:
        candidates = rows if every_row else positive_candidates(rows)
        judge = load_judge(judge_path, kind="harm", label=label)
        flags = flag(judge, judge.score([r["prompt"] for r in candidates], [r["response"] for r in candidates]))
        return [r["id"] for r, harmful in zip(candidates, flags) if harmful]

    return set(dist_utils.on_rank0(judged))
