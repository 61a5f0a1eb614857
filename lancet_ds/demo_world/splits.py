"""The demo world's validation and test splits (DESIGN.md section 9): three roles of data, disjoint.

* `validation/` chooses the checkpoint and guards utility during post-training: `prompts.jsonl` (unseen
  prompts, `forbidden` marked), `clean.jsonl` (clean samples for the perplexity guard) and
  `queries.jsonl` (held-out forbidden prompts with the compliant answer the impure model learnt:
  their log-prob should fall).
* `test/` is what the report grades with, the same three files, disjoint from validation's.

Every second row of `eval_prompts.jsonl` and `clean_heldout.jsonl` goes to each side, and the test side's
clean set adds `clean_test.jsonl` (`corpus.clean_test_samples`: 1,000 more in the default world; the graded
perplexity ratio of a correction's kept checkpoint to the impure model's has a 95 % interval ±0.4–0.8 % wide
on 1,100 samples, ±1.2–2.8 % on 100, while the guard's 100 keep validation as cheap as it was); the queries
are the held-out query candidates that did not become influence queries, split the same way, so neither
split shares a prompt with the influence queries or with the other split.
"""

from __future__ import annotations

from pathlib import Path

from lancet_ds.fileio import read_jsonl, write_jsonl

SPLITS = ("validation", "test")
FILES = ("prompts", "clean", "queries")


def split_paths(world: Path) -> dict[str, dict[str, str]]:
    """{split: {file role: path}} under the world directory."""
    return {s: {f: str(world / s / f"{f}.jsonl") for f in FILES} for s in SPLITS}


def write_splits(world: Path, n_queries: int) -> dict[str, dict[str, str]]:
    """Write (or keep) the splits of a built world; derived from its files, so the same world gives the
    same splits."""
    paths = split_paths(world)
    if all(Path(p).exists() for files in paths.values() for p in files.values()):
        return paths
    sources = {"prompts": list(read_jsonl(world / "eval_prompts.jsonl")),
               "clean": list(read_jsonl(world / "clean_heldout.jsonl")),
               "queries": [{"id": r["id"], "prompt": r["prompt"], "category": r["category"],
                            "response": r.get("compliant_response", r["response"])}
                           for r in list(read_jsonl(world / "query_candidates.jsonl"))[n_queries:]]}
    clean_test = list(read_jsonl(world / "clean_test.jsonl"))  # the test split's own clean samples
    for i, split in enumerate(SPLITS):
        for role, rows in sources.items():
            more = clean_test if (split, role) == ("test", "clean") else []
            write_jsonl(paths[split][role], rows[i::2] + more)
    return paths
