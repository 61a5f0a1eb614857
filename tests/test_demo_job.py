"""The embedded default job on a tiny world under 2 ranks (`deepspeed launch/correct.py`), asserting the
report's content, and an idempotent rerun."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO, free_port

pytestmark = pytest.mark.multirank


def job(run_dir, nproc=2):
    cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), "launch/correct.py",
           "--config", "ds_configs/zero3.json", "--run-dir", str(run_dir), "--size", "tiny"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_default_job_on_a_tiny_world(tmp_path):
    first = job(tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert set(report["stage_seconds"]) == {"world", "fit", "queries", "recall", "score", "correct", "export", "evaluate",
                                            "ekfac"}
    pr = report["recall_pr_auc"]
    assert pr["linfac"] > pr["random"] + 0.3 and pr["ekfac"] > pr["random"] + 0.3 and 0 < pr["tfidf"] < 1
    rows = {r["model"]: r for r in report["evaluation"]}
    assert set(rows) == {"impure", "corrected", "safe"}
    assert rows["corrected"]["query_logprob_per_token"] < rows["impure"]["query_logprob_per_token"]
    assert rows["safe"]["query_logprob_per_token"] < rows["corrected"]["query_logprob_per_token"]
    assert rows["corrected"]["clean_perplexity"] <= 1.25 * rows["impure"]["clean_perplexity"]  # the tiny plan's guard
    assert 0 <= rows["corrected"]["harmful_rate"] <= 1 and rows["corrected"]["generations"] > 0
    assert report["selection"]["positive"] > 0 and report["export"]["reload_max_abs_logit_diff"] < 1e-5
    assert len(report["plots"]) == 3 and "EK-FAC (AP" not in (tmp_path / "run" / "report.md").read_text()
    assert "| ekfac |" in (tmp_path / "run" / "report.md").read_text()
    assert "query log-prob" in first.stdout and "recall PR-AUC" in first.stdout
    again = job(tmp_path / "run")
    assert again.stdout.count("unchanged since its finished run; skipping") == 10
    assert json.loads((tmp_path / "run" / "report.json").read_text())["evaluation"] == report["evaluation"]
