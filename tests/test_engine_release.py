"""A job runs its stages in one process: each stage must free its ZeRO-3 engine when it returns. DeepSpeed
0.19 keeps every engine's module on a global stack; on an H200 the scale suite saw one more weights shard
left allocated per stage (2.2 GB at width 2048) before `modeling.releases_engines`."""

from __future__ import annotations

import json

import pytest

from conftest import launch


@pytest.mark.multirank
def test_stages_free_their_engines_when_they_return(tmp_path, tiny_model_dir, small_corpus):
    result = tmp_path / "counts.json"
    launch([str(tiny_model_dir), str(small_corpus), str(tmp_path / "run"), str(result)], nproc=2,
           module="tests.engine_release_worker")
    counts = json.loads(result.read_text())
    assert counts["steps"] == 1
    assert counts == {"before": 0, "after_fit": 0, "steps": 1, "after_training_step": 0}
