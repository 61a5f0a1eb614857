"""Progress of long stages (`lancet_ds.progress`): throttled `progress` events with a final one, fields that
make sense, nothing on other ranks, rows in the job's log.jsonl, one shared rich display, and run_passes
reporting its passes."""

from __future__ import annotations

import io
import json
import time

import pytest
import torch
from rich.console import Console

from lancet_ds import console as console_mod
from lancet_ds import distributed as dist_utils
from lancet_ds import progress
from lancet_ds.console import add_sink, remove_sink
from lancet_ds.progress import track

FIELDS = {"task", "done", "total", "unit", "rate", "eta_seconds"}


@pytest.fixture
def events():
    """The (event, fields) pairs handed to the event sinks during a test."""
    got: list[tuple[str, dict]] = []

    def sink(event, **fields):
        got.append((event, fields))

    add_sink(sink)
    yield got
    remove_sink(sink)


def test_an_event_per_advance_at_interval_zero_and_a_sensible_final_one(events, monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    with track("work", total=4, unit="steps") as bar:
        for _ in range(4):
            time.sleep(0.002)
            bar.advance(1, tokens=10)
    assert [e for e, _ in events] == ["progress"] * 4  # the last advance's event is the final one
    assert [f["done"] for _, f in events] == [1, 2, 3, 4]
    last = events[-1][1]
    assert FIELDS | {"tokens_per_second"} <= set(last)
    assert (last["task"], last["done"], last["total"], last["unit"]) == ("work", 4, 4, "steps")
    assert last["rate"] > 0 and last["tokens_per_second"] > last["rate"] and last["eta_seconds"] == 0
    assert events[0][1]["eta_seconds"] > 0


def test_events_are_throttled_but_the_final_one_always_comes(events):
    with track("slow", total=50, unit="passes", interval=3600) as bar:
        for _ in range(50):
            bar.advance()
    assert len(events) == 1
    final = events[0][1]
    assert final["done"] == final["total"] == 50 and final["rate"] > 0
    assert "tokens_per_second" not in final


def test_a_resumed_task_counts_its_rate_from_the_resume_point(events):
    with track("resumed", total=10, done=7, interval=0) as bar:
        time.sleep(0.002)
        bar.advance(3)
    final = events[-1][1]
    assert final["done"] == 10 and 0 < final["rate"] < 3 / 0.002 + 1


def test_an_empty_task_still_reports_its_end(events):
    with track("nothing", total=0):
        pass
    assert [(f["done"], f["total"], f["eta_seconds"]) for _, f in events] == [(0, 0, None)]


def test_other_ranks_report_nothing(events, monkeypatch):
    monkeypatch.setattr(dist_utils, "is_main", lambda: False)
    with track("work", total=3, interval=0) as bar:
        for _ in range(3):
            bar.advance(1, tokens=5)
    assert events == []


def test_progress_rows_reach_the_job_log(tmp_path, monkeypatch):
    from lancet_ds.job.events import JobEvents
    from lancet_ds.run_dir import RunDir

    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    log = JobEvents(RunDir(tmp_path), total=1)
    try:
        log.stage_start(1, 1, "fit")
        with track("fit: covariance pass", total=2, unit="passes") as bar:
            bar.advance(1, tokens=8)
            bar.advance(1, tokens=8)
        log.stage_end("done")
    finally:
        log.close()
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["event"] == "progress"]
    assert [r["done"] for r in rows] == [1, 2]
    assert all(r["stage"] == "fit" and r["task"] == "fit: covariance pass" and "time" in r for r in rows)
    assert rows[-1]["total"] == 2 and rows[-1]["tokens_per_second"] > 0


def test_tracks_share_one_live_display_on_a_terminal(monkeypatch):
    """Nested tracks (and tracks inside a job's stage bar) add tasks to the live display; no second one."""
    monkeypatch.setattr(console_mod, "_console", Console(file=io.StringIO(), force_terminal=True, width=120))
    with track("outer", total=2) as outer:
        live = progress._live
        assert live is not None and live.live.is_started
        with track("inner", total=3, unit="prompts") as inner:
            assert progress._live is live and len(live.tasks) == 2
            inner.advance(3, tokens=30)
            assert "tok/s" in live.tasks[1].fields["detail"]
        assert len(live.tasks) == 1
        outer.advance(2)
    assert progress._live is None and not live.live.is_started


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def test_run_passes_reports_its_passes(events, monkeypatch):
    from lancet_ds.data.records import EncodedSample
    from lancet_ds.influence.covariance import BatchContext
    from lancet_ds.influence.fit import tap_points
    from lancet_ds.influence.passes import run_passes
    from lancet_ds.influence.sublayers import discover

    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    model = _tiny_llama()
    samples = [EncodedSample(f"s{i}", list(range(3, 9 + i)), [0, 0] + [1] * (4 + i)) for i in range(5)]
    run_passes(model, samples, tap_points(discover(model), "linfac"), lambda name, a, g: None, BatchContext(),
               torch.float64, 2, 2, "empirical", 0, label="test: passes")
    final = events[-1][1]
    assert events[-1][0] == "progress" and final["task"] == "test: passes" and final["unit"] == "passes"
    assert final["done"] == final["total"] == dist_utils.num_passes(5, 2, 1) == 3
    assert final["tokens_per_second"] > 0 and final["rate"] > 0
