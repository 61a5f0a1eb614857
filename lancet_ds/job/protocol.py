"""The evaluation protocol of a job (DESIGN.md section 9): three roles of data, kept disjoint.

* influence queries (`queries`): what the user wants corrected; they drive recall, scores and selection;
* validation (`stages.correct.validation_*`): the only data that chooses the checkpoint and guards
  utility during post-training;
* evaluation (`stages.evaluate.{prompts, clean, queries}`): the only data the report grades with.

`overlap_problems` refuses a job whose validation and evaluation files are the same file or share more
than a few prompts, or that validates or evaluates on the influence queries' prompts; `roles` names
each role's files and fingerprints for the report, and the judges that read the generations.
"""

from __future__ import annotations

from pathlib import Path

from lancet_ds.data.bad_records import RejectSink
from lancet_ds.data.corpus import iter_samples
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.fingerprint import content_sha256

MAX_SHARED_PROMPTS = 2
"""Prompts two roles may share by coincidence (short generic prompts) before the job is refused."""


def role_files(spec) -> dict[str, dict[str, str]]:
    """{"validation": {kind: path}, "evaluation": {kind: path}} of the files the job names."""
    c, e = spec.stages["correct"], spec.stages["evaluate"]
    validation = {"queries": c.validation_queries, "prompts": c.validation_prompts, "clean": c.validation_clean}
    evaluation = {"queries": e.queries, "prompts": e.prompts, "clean": e.clean}
    return {"validation": {k: v for k, v in validation.items() if v},
            "evaluation": {k: v for k, v in evaluation.items() if v}}


def overlap_problems(spec) -> list[str]:
    """What makes the roles overlap, each naming the files and what to do: a validation and an evaluation
    file of the same kind that are one file or share more than a few items (prompts; prompt + response
    for clean sets), and validation or evaluation prompts that are influence queries."""
    files = role_files(spec)
    val, ev = files["validation"], files["evaluation"]
    pairs = [(f"correct.validation_{k}", val[k], f"evaluate.{k}", ev[k], k) for k in val if k in ev]
    influence = spec.queries.path
    pairs += [("queries", influence, f"correct.validation_{k}", val[k], "queries") for k in ("queries", "prompts") if k in val]
    pairs += [("queries", influence, f"evaluate.{k}", ev[k], "queries") for k in ("queries", "prompts") if k in ev]
    problems = []
    for name_a, a, name_b, b, kind in pairs:
        same = Path(a).resolve() == Path(b).resolve()
        shared = set() if same else _items(a, kind) & _items(b, kind)
        if same or len(shared) > MAX_SHARED_PROMPTS:
            what = "are the same file" if same else f"share {len(shared)} {'samples' if kind == 'clean' else 'prompts'}"
            problems.append(f"{name_a} ({a}) and {name_b} ({b}) {what}: the data that chooses the checkpoint "
                            "(validation) must not grade it (evaluation), and neither may be the influence "
                            "queries; give each role its own files")
    return problems


def roles(spec, criterion: str) -> dict:
    """The report's `protocol`: each role's files with their sha256, and what chose the checkpoint."""
    def named(path: str) -> dict:
        return {"path": str(Path(path).resolve()), "sha256": content_sha256(path)}

    files = role_files(spec)
    c = spec.stages["correct"]
    level = f" (its {100 * c.ppl_guard_level:.4g} % upper bound)" if c.ppl_guard_level else ""
    bound = (f", within a {100 * c.max_ppl_increase:.4g} % perplexity bound on {c.validation_clean}{level}"
             if c.validation_clean else "")
    chose = (f"{criterion} on {files['validation'].get('prompts' if criterion == 'harm' else 'queries', '(none)')}"
             + bound if c.validate_every else "no validation: the last step was exported")
    e = spec.stages["evaluate"]
    judges = {"validation_harm": c.validation_judge, "positive_filter": c.positive_judge, "evaluation_harm": e.judge,
              "evaluation_reward": e.reward_judge}
    return {"influence_queries": named(spec.queries.path),
            **{role: {k: named(v) for k, v in kinds.items()} for role, kinds in files.items()},
            "judges": {k: named(v) for k, v in judges.items() if v},
            "checkpoint_chosen_by": chose}


def _items(path: str, kind: str) -> set[str]:
    """The prompts of a file (prompt + response for a clean set), read leniently: unreadable records are
    reported by the record checks, not here."""
    spec = SchemaSpec(response_field="prompt") if kind != "clean" else SchemaSpec()
    try:
        return {s.prompt.strip() + ("\n" + s.response.strip() if kind == "clean" else "")
                for s in iter_samples(path, spec, RejectSink("skip"))}
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the record checks
        return set()
