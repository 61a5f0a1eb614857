"""The production job from a job file (`launch/correct.py --job`), on the tiny demo world under 2 ranks:
the report's content, killed at two points (an injected fault in scoring, a real SIGKILL of the whole
launcher during post-training) and rerun to the same report, a second concurrent run refused, an
idempotent rerun, changed options refused, and the exit codes of a bad job file and a bad corpus."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, free_port
from lancet_ds.run_lock import RunLock

pytestmark = pytest.mark.multirank


def write_job(path: Path, world: Path, out: Path, **extra) -> Path:
    corpus = extra.pop("corpus", str(world / "train.jsonl"))
    path.write_text(f"""# lancet_ds job: deepspeed launch/correct.py --job {path.name}
model: {world / 'impure'}
corpus:
  path: {corpus}
  label_field: contaminated
queries: {world / 'queries.jsonl'}
output: {out}
max_length: 96
stages:
  fit: {{fit_responses: corpus, num_samples: 120}}
  queries: {{batches: 3}}
  recall: {{top_k: 40, chunk_size: 100}}
  correct: {{steps: 24, lr: 5.0e-4, top_k: 8, replay: 16, validate_every: 4, save_every: 4, max_ppl_increase: 0.25,
            validation_queries: {world / 'validation' / 'queries.jsonl'},
            validation_clean: {world / 'validation' / 'clean.jsonl'}}}
  evaluate: {{clean: {world / 'test' / 'clean.jsonl'}, queries: {world / 'test' / 'queries.jsonl'}}}
""" + "".join(f"{k}: {v}\n" for k, v in extra.items()))
    return path


def job_cmd(job: Path, *extra: str, nproc: int = 2) -> list[str]:
    return ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), "launch/correct.py",
            "--job", str(job), *extra]


def run(cmd: list[str], env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def plain(*args: str) -> subprocess.CompletedProcess:
    """`python -m lancet_ds ARGS`: one process, no launcher."""
    return run([sys.executable, "-m", "lancet_ds", *args], timeout=300)


def numbers(report: dict) -> dict:
    """What must not depend on interruptions: everything but timings and paths."""
    keep = ("counts", "rejects", "recall_pr_auc", "selection", "query_logprob_per_query", "top_samples")
    rows = [{k: v for k, v in r.items() if k != "path"} for r in report["evaluation"]]
    best = {k: v for k, v in report["correction"]["best"].items()}
    return {**{k: report[k] for k in keep}, "evaluation": rows, "best": best}


def assert_same_numbers(got: dict, ref: dict, path: str = "") -> None:
    if isinstance(ref, dict):
        assert set(got) == set(ref), path
        for k in ref:
            assert_same_numbers(got[k], ref[k], f"{path}.{k}")
    elif isinstance(ref, list):
        assert len(got) == len(ref), path
        for i, (a, b) in enumerate(zip(got, ref)):
            assert_same_numbers(a, b, f"{path}[{i}]")
    elif isinstance(ref, float):
        assert got == pytest.approx(ref, rel=1e-4, abs=1e-6), path
    else:
        assert got == ref, path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_world):
    root = tmp_path_factory.mktemp("job")
    job = write_job(root / "job.yaml", tiny_world, root / "run")
    proc = run(job_cmd(job))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return job, root / "run", proc


def test_job_file_runs_every_stage_and_reports(finished):
    job, out, proc = finished
    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["world_size"] == 2 and manifest["versions"]["deepspeed"]
    order = ["fit", "queries", "recall", "score", "correct", "export", "evaluate", "report"]
    assert set(manifest["stages"]) == set(order)
    assert all(s["status"] == "done" and s["inputs"] is not None and s["config"] is not None for s in manifest["stages"].values())
    assert manifest["stages"]["fit"]["inputs"]["corpus"]["sha256"]
    # options whose default depends on another are recorded as used: IBO's β (left unset) is the paper's 1
    assert manifest["stages"]["correct"]["config"]["correct"]["beta"] == 1.0 == manifest["job"]["stages"]["correct"]["beta"]
    assert report["counts"]["fit_sequences"] == 120 and report["counts"]["queries"] == 8
    # better than chance on the tiny world's hard design (format 3: LinFAC 0.285, TF-IDF 0.283, random 0.18 on this
    # job's 8 queries); recall quality is measured by the quality bench on the default world, not asserted here
    assert report["recall_pr_auc"]["linfac"] > report["recall_pr_auc"]["random"]
    rows = {r["model"]: r for r in report["evaluation"]}
    assert rows["corrected"]["query_logprob_per_token"] < rows["impure"]["query_logprob_per_token"]
    assert set(report["query_logprob_per_query"]["impure"]) == set(report["query_logprob_per_query"]["corrected"])
    top = report["top_samples"]
    assert top["positive"][0]["rise"] > 0 > top["negative"][0]["fall"]
    assert [r["rise"] for r in top["positive"]] == sorted((r["rise"] for r in top["positive"]), reverse=True)
    assert sorted(report["plots"]) == ["plots/pr_curve.png", "plots/query_logprob.png", "plots/score_distribution.png",
                                       "plots/validation.png"]
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in report["plots"])
    md = (out / "report.md").read_text()
    assert "## Recall of known culprits" in md and "![PR curves](plots/pr_curve.png)" in md and "| corrected |" in md
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [e["stage"] for e in events if e["event"] == "stage_done"] == order
    assert events[-1]["event"] == "job_done"
    assert "recall PR-AUC" in proc.stdout and f"run directory: {out}" in proc.stdout


def test_idempotent_rerun_does_no_work(finished):
    job, out, _ = finished
    before = (out / "report.json").read_bytes()
    again = run(job_cmd(job, "--quiet"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "report.json").read_bytes() == before
    events = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    last_run = events[max(i for i, e in enumerate(events) if e["event"] == "job_start"):]
    assert [e["event"] for e in last_run if e["event"].startswith("stage_") and e["event"] != "stage_start"] == ["stage_skipped"] * 8
    assert "stage 1/8" not in again.stdout and f"run directory: {out}" in again.stdout  # --quiet


def test_changed_options_are_refused_unless_asked(finished):
    job, out, _ = finished
    refused = run(job_cmd(job, "--set", "stages.correct.lam_prox=0.01", nproc=1))
    assert refused.returncode == 4
    assert "stage correct finished with other options (correct.lam_prox: 0.001 → 0.01)" in refused.stderr
    assert "--force" in refused.stderr and "--from-stage correct" in refused.stderr
    assert json.loads((out / "manifest.json").read_text())["stages"]["correct"]["status"] == "done"  # still reusable
    redo = run(job_cmd(job, "--from-stage", "report", nproc=1))
    assert redo.returncode == 0 and "cleared report" in redo.stdout


def test_killed_twice_then_resumed_on_one_rank_continues_the_same_correction(tmp_path, tiny_world, finished):
    """Between the two kills the run directory and its world move elsewhere (a scheduled job rerun on a node with
    another scratch path): where they lie is not part of a stage's fingerprint, their contents are."""
    first = tmp_path / "first"
    shutil.copytree(tiny_world, first / "world")
    job = write_job(first / "job.yaml", first / "world", first / "run")
    # 1: an injected fault after the first scoring pass
    killed = run(job_cmd(job), env={"LANCET_FAULT_STAGE": "score", "LANCET_FAULT_AFTER_STEP": "1"})
    assert killed.returncode != 0
    manifest = json.loads((first / "run" / "manifest.json").read_text())
    assert manifest["stages"]["score"]["status"] == "running" and manifest["stages"]["recall"]["status"] == "done"
    shutil.move(first, tmp_path / "moved")
    out = tmp_path / "moved" / "run"
    job = write_job(tmp_path / "moved" / "job.yaml", tmp_path / "moved" / "world", out)
    before = len(_events(out))
    # 2: kill -9 of the whole launcher process group in post-training, after a checkpoint (the running
    # job holds the run directory's lock until then)
    proc = subprocess.Popen(job_cmd(job), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        log = out / "correct" / "log.jsonl"
        while not (log.exists() and len(log.read_text().splitlines()) >= 6):
            assert proc.poll() is None and time.time() < deadline, "the job ended before post-training got going"
            time.sleep(0.1)
        assert RunLock(out).held_by_other()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 30  # the ranks die with the launcher's process group; then the lock is free
    while RunLock(out).held_by_other():
        assert time.time() < deadline, "a killed job left its lock behind"
        time.sleep(0.2)
    assert json.loads((out / "manifest.json").read_text())["stages"]["correct"]["status"] == "running"
    moved = _events(out)[before:]  # the run after the move kept the finished stages and resumed the scores
    assert [e["stage"] for e in moved if e["event"] == "stage_skipped"] == ["fit", "queries", "recall"]
    assert any(e["event"] == "message" and e["message"].startswith("score: resuming") for e in moved)
    # 3: the rerun on 1 rank (a job killed on 2 ranks resumes on 1): the correction goes on from its
    # checkpoint through DeepSpeed's universal format, along the uninterrupted 2-rank run's trajectory
    resumed = run(job_cmd(job, nproc=1))
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    assert "correct: resuming after step" in resumed.stdout and "score: unchanged" in resumed.stdout
    assert "converting it to DeepSpeed's universal format to resume on 1" in resumed.stdout
    got, ref = (json.loads((d / "report.json").read_text()) for d in (out, finished[1]))
    assert got["counts"] == ref["counts"] and got["selection"] == ref["selection"]
    assert got["recall_pr_auc"] == pytest.approx(ref["recall_pr_auc"], abs=1e-6)
    steps = [{r["step"]: r for r in map(json.loads, (d / "correct" / "log.jsonl").read_text().splitlines())
              if "L_COR" in r} for d in (out, finished[1])]
    assert set(steps[0]) == set(steps[1])
    for step, a in steps[0].items():  # the sampled validations differ with the world size; the losses do not
        for key in ("L_COR", "L_BD", "proximity"):
            assert a[key] == pytest.approx(steps[1][step][key], rel=2e-3, abs=1e-7), (step, key)


@pytest.mark.parametrize("config", ["zero2.json", "zero3_offload.json"])
def test_every_stage_under_the_other_shipped_configs(tmp_path, tiny_world, finished, config):
    """ZeRO-2 (θ_ref a full CPU copy) and ZeRO-3 with parameter and optimizer offload run the whole job
    and reproduce ZeRO-3's scores, selection and per-step post-training losses."""
    out = tmp_path / "run"
    proc = run(job_cmd(write_job(tmp_path / "job.yaml", tiny_world, out), "--config", f"ds_configs/{config}"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    got, ref = (json.loads((d / "report.json").read_text()) for d in (out, finished[1]))
    assert got["counts"] == ref["counts"] and got["selection"]["positive"] == ref["selection"]["positive"]
    assert got["recall_pr_auc"]["linfac"] == pytest.approx(ref["recall_pr_auc"]["linfac"], abs=1e-3)
    steps = [[r for r in map(json.loads, (d / "correct" / "log.jsonl").read_text().splitlines()) if "L_COR" in r][:6]
             for d in (out, finished[1])]  # optimizer steps (the step-0 validation row has no loss terms)
    assert steps[0][0]["proximity"] == 0.0 and steps[0][-1]["proximity"] > 0
    for a, b in zip(*steps):
        for key in ("L_COR", "L_BD", "NLL_pos", "proximity"):
            assert a[key] == pytest.approx(b[key], rel=2e-3, abs=1e-7), (config, a["step"], key)
    assert got["export"]["reload_max_abs_logit_diff"] < 1e-5


def test_second_concurrent_run_is_refused_with_exit_5(tmp_path, tiny_world):
    out = tmp_path / "run"
    job = write_job(tmp_path / "job.yaml", tiny_world, out)
    holder = RunLock(out)
    holder.acquire()  # as a running job holds it
    try:
        second = plain("job", "run", "--job", str(job))
    finally:
        holder.release()
    assert second.returncode == 5 and "another run holds this run directory" in second.stderr
    assert f'"pid": {os.getpid()}' in second.stderr
    assert not (out / "manifest.json").exists()


def test_bad_job_file_exits_4_listing_every_problem(tmp_path, tiny_world):
    job = write_job(tmp_path / "job.yaml", tiny_world, tmp_path / "run", colour="blue")
    job.write_text(job.read_text().replace("batches: 3", "batches: 3, dampin: 0.1").replace("num_samples: 120", "num_samples: many"))
    bad = plain("job", "validate", str(job))
    assert bad.returncode == 4
    for problem in ("unknown key 'colour'", "stages.queries.dampin: unknown option",
                    "stages.fit.num_samples: expected an integer, got 'many'"):
        assert problem in bad.stderr
    nowhere = write_job(tmp_path / "nowhere.yaml", tiny_world, tmp_path / "run")
    nowhere.write_text(nowhere.read_text().replace(f"model: {tiny_world / 'impure'}", "model: no_such_model"))
    bad = plain("job", "validate", str(nowhere))
    assert bad.returncode == 4 and "Point model in the job file at a directory written by save_pretrained" in bad.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: a\ncorpus: [unclosed\n")
    bad = plain("job", "validate", str(broken))
    assert bad.returncode == 4 and "broken.yaml:" in bad.stderr and "not valid YAML" in bad.stderr
    missing = write_job(tmp_path / "missing.yaml", tiny_world, tmp_path / "run", ds_config="nowhere.json")
    bad = plain("job", "validate", str(missing))
    assert bad.returncode == 4 and "nowhere.json: DeepSpeed config not found" in bad.stderr


def test_a_job_file_s_relative_paths_are_relative_to_it(tmp_path):
    """Every path a job file names, the fit's borrowed run directory included, is read relative to the file."""
    from lancet_ds.job.spec import load_job_file

    (tmp_path / "jobs").mkdir()
    job = tmp_path / "jobs" / "job.yaml"
    job.write_text("model: m\ncorpus: c.jsonl\nqueries: q.jsonl\noutput: out\n"
                   "stages: {fit: {fit_set_from: ../runs/first}, correct: {validation_clean: v.jsonl}}\n")
    raw = load_job_file(job)
    base = job.resolve().parent
    assert raw["model"] == str(base / "m") and raw["corpus"]["path"] == str(base / "c.jsonl")
    assert raw["stages"]["fit"]["fit_set_from"] == str(base / "../runs/first")
    assert raw["stages"]["correct"]["validation_clean"] == str(base / "v.jsonl")


def test_bad_corpus_exits_3_before_any_stage(tmp_path, tiny_world):
    lines = (tiny_world / "train.jsonl").read_text().splitlines()
    lines[5] = lines[5][:-8]  # truncated JSON on line 6
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    job = write_job(tmp_path / "job.yaml", tiny_world, tmp_path / "run", corpus=str(corpus))
    bad = plain("job", "validate", str(job))
    assert bad.returncode == 3 and f"{corpus}:6" in bad.stderr and "on_bad_record: skip" in bad.stderr
    refused = run(job_cmd(job))
    assert refused.returncode == 3 and f"{corpus}:6" in refused.stderr
    assert not (tmp_path / "run" / "manifest.json").exists()
    clean = tmp_path / "clean.jsonl"  # an evaluation file is always read under `fail`: no skip to offer
    clean.write_text((tiny_world / "test" / "clean.jsonl").read_text() + '{"prompt": "a"}\n')
    evaluation = write_job(tmp_path / "eval.yaml", tiny_world, tmp_path / "run")
    evaluation.write_text(evaluation.read_text().replace(str(tiny_world / "test" / "clean.jsonl"), str(clean)))
    bad = plain("job", "validate", str(evaluation))
    assert bad.returncode == 3 and "evaluate.clean: 1 bad record(s)" in bad.stderr
    assert "always read under on_bad_record: fail" in bad.stderr and "evaluate.on_bad_record" not in bad.stderr
    worded = tmp_path / "worded.jsonl"  # "false" as a string is true to Python: every sample a culprit in the report
    worded.write_text("".join(json.dumps({**r, "contaminated": str(r["contaminated"]).lower()}) + "\n"
                              for r in map(json.loads, (tiny_world / "train.jsonl").read_text().splitlines())))
    bad = plain("job", "validate", str(write_job(tmp_path / "worded.yaml", tiny_world, tmp_path / "run", corpus=str(worded))))
    said = " ".join(bad.stderr.split())
    assert bad.returncode == 4 and "corpus.label_field: 'contaminated' must be true or false (or 1 / 0)" in said, said
    ok = write_job(tmp_path / "ok.yaml", tiny_world, tmp_path / "run")
    good = plain("job", "validate", str(ok), "--world-size", "2")
    assert good.returncode == 0 and "is valid for 2 rank(s)" in good.stdout


# ---- the fault matrix: SIGKILL of the launcher's process group at seeded moments, then reruns ------------

STAGE_DIRS = {"fit": "factors", "queries": "queries", "recall": "recall", "score": "scores", "correct": "correct",
              "evaluate": "evaluate"}


def _ends(out: Path) -> dict[str, str]:
    """Each stage's end in the job's last run: done, skipped or failed."""
    events = _events(out)
    last = max(i for i, e in enumerate(events) if e["event"] == "job_start")
    return {e["stage"]: e["event"][len("stage_"):] for e in events[last:] if e["event"] in ("stage_done", "stage_skipped")}


def test_a_copy_of_a_finished_run_and_its_inputs_elsewhere_reruns_without_work(tmp_path, tiny_world, finished):
    """A finished run copied elsewhere with its world, the original gone: the job skips every stage, each stage's own
    guard reuses its result, the export inside the run follows it, and the evaluation, redone, grades the copy's own
    exported model to the same numbers."""
    copy, world = tmp_path / "copy", tmp_path / "world"
    ref = numbers(json.loads((finished[1] / "report.json").read_text()))
    shutil.copytree(finished[1], copy)
    shutil.copytree(tiny_world, world)
    job = write_job(tmp_path / "job.yaml", world, copy)
    again = run(job_cmd(job, "--quiet", nproc=1))
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert set(_ends(copy).values()) == {"skipped"} and len(_ends(copy)) == 8
    manifest = json.loads((copy / "manifest.json").read_text())  # the skips record where the inputs lie now
    assert manifest["stages"]["fit"]["inputs"]["corpus"]["path"] == str((world / "train.jsonl").resolve())
    # each stage's own guard, called as a stage command would be, reuses its result in the copy (its records were
    # written where the original lay): nothing is recomputed and no model is loaded
    script = ("from lancet_ds.job.spec import build_spec, load_job_file\n"
              "from lancet_ds.job.stages import STAGES\n"
              "from lancet_ds.run_dir import RunDir\n"
              f"spec = build_spec(load_job_file({str(job)!r}))\n"
              "for stage in STAGES[1:8]:\n"
              "    stage.run(spec, RunDir.of(spec.output), False)\n")
    reused = run([sys.executable, "-c", script], timeout=300)
    assert reused.returncode == 0, reused.stdout[-4000:] + reused.stderr[-4000:]
    said = " ".join(reused.stdout.split())
    for stage in ("fit", "queries", "recall", "score", "correct", "evaluate"):
        assert f"{stage}: {copy / STAGE_DIRS[stage]} already holds this result; reusing it" in said, (stage, said)
    assert f"export: {copy / 'model'} already holds checkpoint" in said
    wrong = plain("export", "--run", str(copy), "--out", str(tmp_path / "shipped"), "--model", str(world / "safe"))
    assert wrong.returncode == 4 and "not the model the correction" in " ".join(wrong.stderr.split())
    graded = run(job_cmd(job, "--from-stage", "evaluate", "--quiet"))
    assert graded.returncode == 0, graded.stdout[-4000:] + graded.stderr[-4000:]
    report = json.loads((copy / "report.json").read_text())
    assert report["export"]["path"] == str((copy / "model").resolve())
    assert_same_numbers(numbers(report), ref)


def test_a_stage_s_lost_result_is_redone_by_the_job_and_a_bad_path_keeps_it(tmp_path, tiny_world, finished):
    """`evaluate --overwrite` with a path that does not exist is refused before it clears the finished result (it
    cleared it, then failed); a finished stage whose result is gone all the same is run again by the job, not skipped
    on its record (the rerun reported the old grades, and `--from-stage report` crashed on the missing file), the
    exported model too; and `evaluate` on a run without queries says which stage to run (it was a traceback)."""
    copy = tmp_path / "copy"
    ref = numbers(json.loads((finished[1] / "report.json").read_text()))
    shutil.copytree(finished[1], copy)
    job = write_job(tmp_path / "job.yaml", tiny_world, copy)
    bad = plain("evaluate", "--run", str(copy), "--clean", str(tmp_path / "nope.jsonl"), "--overwrite")
    said = " ".join(bad.stderr.split())
    assert bad.returncode == 4 and f"no such file or directory: clean {tmp_path / 'nope.jsonl'}" in said, said
    assert (copy / "evaluate" / "eval.json").exists()
    shutil.rmtree(copy / "evaluate")
    again = run(job_cmd(job))
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert f"evaluate: finished before, but {copy / 'evaluate'} is gone; running it again" in " ".join(again.stdout.split())
    assert _ends(copy) == {**{s: "skipped" for s in ("fit", "queries", "recall", "score", "correct", "export", "report")},
                           "evaluate": "done"}  # the same inputs grade the same: the report built on them stands
    graded = json.loads((copy / "evaluate" / "eval.json").read_text())["models"]
    assert_same_numbers([{k: v for k, v in r.items() if k not in ("path", "query_logprob_per_query")} for r in graded],
                        ref["evaluation"])
    weights = (copy / "model" / "model.safetensors").read_bytes()
    shutil.rmtree(copy / "model")  # the exported model moved away: its record in export.json alone must not stand
    again = run(job_cmd(job, "--quiet"))
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert _ends(copy)["export"] == "done" and (copy / "model" / "model.safetensors").read_bytes() == weights
    empty = plain("evaluate", "--run", str(tmp_path / "empty"), "--model", str(tiny_world / "impure"))
    assert empty.returncode == 4 and "query_set.jsonl: missing. Run `lancet-ds queries --run" in " ".join(empty.stderr.split())


def test_a_run_recorded_with_its_paths_is_reused_where_it_lies_and_refused_moved(tmp_path, tiny_world, finished):
    """Manifests written before paths were left out fingerprinted each stage's whole config, paths included, and
    each upstream stage's fingerprint of that kind: such a run is still skipped while its inputs stay put."""
    from lancet_ds.fingerprint import json_fingerprint

    out = tmp_path / "run"
    shutil.copytree(finished[1], out)
    manifest = json.loads((out / "manifest.json").read_text())
    whole: dict[str, str] = {}
    for name in ("fit", "queries", "recall", "score", "correct", "export", "evaluate", "report"):  # upstream first
        stage = manifest["stages"][name]
        stage["after"] = {u: whole[u] for u in stage["after"]}
        whole[name] = stage["fingerprint"] = json_fingerprint(
            {"config": stage["config"], "inputs": {k: v["sha256"] for k, v in stage["inputs"].items()},
             "after": stage["after"]})
    (out / "manifest.json").write_text(json.dumps(manifest))
    job = write_job(tmp_path / "job.yaml", tiny_world, out)
    again = run(job_cmd(job, "--quiet", nproc=1))
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    assert set(_ends(out).values()) == {"skipped"} and len(_ends(out)) == 8

    shutil.copytree(tiny_world, tmp_path / "world")
    moved = run(job_cmd(write_job(tmp_path / "moved.yaml", tmp_path / "world", out), nproc=1))
    assert moved.returncode == 4
    assert f"stage fit finished with other options (corpus.path: '{tiny_world / 'train.jsonl'}' → " in moved.stderr


def _statuses(out: Path) -> dict:
    try:
        return {k: v.get("status") for k, v in json.loads((out / "manifest.json").read_text())["stages"].items()}
    except (OSError, ValueError, KeyError):
        return {}


def _events(out: Path) -> list[dict]:
    """The job log's events (a line torn by a kill is skipped)."""
    try:
        lines = (out / "log.jsonl").read_text().splitlines()
    except OSError:
        return []
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _where(events: list[dict]) -> str:
    """Where a job whose log since its launch is `events` was: "in <stage>" or "between stages"."""
    starts = [i for i, e in enumerate(events) if e.get("event") == "stage_start"]
    if not starts:
        return "between stages"
    stage = events[starts[-1]]["stage"]
    ended = any(e.get("event") in ("stage_done", "stage_skipped") and e.get("stage") == stage
                for e in events[starts[-1] + 1:])
    return "between stages" if ended else f"in {stage}"


def kill_during(job: Path, out: Path, stage: str, delay: float) -> str:
    """Run the job (from `stage` when an earlier kill let `stage` finish, so that every stage is killed while
    it runs) and SIGKILL its whole process group `delay` seconds after this run starts `stage` (per its log).
    Returns where the kill landed: "in <stage>", "between stages", or "after the job" (it had finished)."""
    extra = ("--from-stage", stage) if _statuses(out).get(stage) == "done" else ()
    before = len(_events(out))
    proc = subprocess.Popen(job_cmd(job, *extra), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 900
        while proc.poll() is None and time.time() < deadline:
            if any(e.get("event") == "stage_start" and e.get("stage") == stage for e in _events(out)[before:]):
                time.sleep(delay)
                break
            time.sleep(0.02)
        where = "after the job" if proc.poll() is not None else _where(_events(out)[before:])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 30
    while RunLock(out).held_by_other():
        assert time.time() < deadline, "a killed job left its lock behind"
        time.sleep(0.2)
    return where


STAGES_TO_KILL = ("fit", "queries", "recall", "score", "correct", "export", "evaluate", "report")


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Each stage's duration in an uninterrupted run (its log.jsonl)."""
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["stage"]: r["seconds"] for r in rows if r["event"] == "stage_done"}


def kill_points(seed: int, per_stage: int, seconds: dict[str, float]) -> list[tuple[str, float]]:
    """(stage, delay): a moment drawn uniformly over 1.1 × the stage's uninterrupted duration, so that most
    kills land inside the stage and some just after it (between stages)."""
    import random

    rng = random.Random(seed)
    return [(stage, round(rng.uniform(0.0, 1.1) * seconds[stage], 3)) for stage in STAGES_TO_KILL
            for _ in range(per_stage)]


def run_with_kills(tmp_path: Path, tiny_world: Path, points: list[tuple[str, float]]) -> tuple[Path, list[str]]:
    out = tmp_path / "run"
    job = write_job(tmp_path / "job.yaml", tiny_world, out)
    landed = [f"{stage}+{delay}s: {kill_during(job, out, stage, delay)}" for stage, delay in points]
    final = run(job_cmd(job))
    assert final.returncode == 0, final.stdout[-4000:] + final.stderr[-4000:]
    return out, landed


def test_killed_at_seeded_moments_then_rerun_gives_the_same_report(tmp_path, tiny_world, finished):
    """CI's share of the fault matrix: two kills at seeded moments (inside fit and inside evaluate), each
    followed by a rerun that is itself killed or finishes; the final report equals an uninterrupted run's."""
    points = [p for p in kill_points(7, 1, stage_seconds(finished[1])) if p[0] in ("fit", "evaluate")]
    out, landed = run_with_kills(tmp_path, tiny_world, points)
    assert any(": in " in x for x in landed), landed
    ref = json.loads((finished[1] / "report.json").read_text())
    assert_same_numbers(numbers(json.loads((out / "report.json").read_text())), numbers(ref))


@pytest.mark.skipif(not os.environ.get("LANCET_FAULT_MATRIX"), reason="the full fault matrix: LANCET_FAULT_MATRIX=1")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_full_fault_matrix(tmp_path, tiny_world, finished, seed):
    """Every stage killed at a seeded moment (and between stages: a kill that lands after the stage ended),
    one run directory per seed; the final report equals an uninterrupted run's."""
    out, landed = run_with_kills(tmp_path, tiny_world, kill_points(seed, 1, stage_seconds(finished[1])))
    inside = [x for x in landed if ": in " in x]
    print(f"seed {seed}: {len(inside)} of {len(landed)} kills landed inside a running stage: {landed}")
    assert len(inside) >= len(STAGES_TO_KILL) - 2, landed
    ref = json.loads((finished[1] / "report.json").read_text())
    assert_same_numbers(numbers(json.loads((out / "report.json").read_text())), numbers(ref))


def test_validate_writes_nothing(tmp_path, tiny_world):
    out = tmp_path / "not" / "yet"
    job = write_job(tmp_path / "job.yaml", tiny_world, out)
    ok = plain("job", "validate", str(job))
    assert ok.returncode == 0, ok.stderr
    assert not (tmp_path / "not").exists()


def test_bad_values_are_refused_before_any_work(tmp_path, tiny_world):
    job = write_job(tmp_path / "job.yaml", tiny_world, tmp_path / "run")
    bad = plain("job", "validate", str(job), "--set", "max_length=abc", "--set", 'compare_ekfac="no"',
                "--set", "stages.correct.save_every=0", "--set", "stages.score.micro_batch=0",
                "--set", "stages.evaluate.compare=oops", "--set", "stages.fit.max_length=-5")
    assert bad.returncode == 4
    for problem in ("max_length: expected an integer, got 'abc'", "compare_ekfac: expected true or false, got 'no'",
                    "correct.save_every: must be ≥ 1, got 0", "score.micro_batch: must be > 0, got 0",
                    "evaluate.compare: expected a mapping, got 'oops'", "fit.max_length: must be ≥ 2, got -5"):
        assert problem in bad.stderr, problem
    assert "Fix the job file or the --set values (max_length=abc, compare_ekfac=\"no\"," in bad.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, extra, refused", [
    ("AdamW", {}, None), ("adam", {}, None), ("Lion", {}, None), ("Adagrad", {}, None),
    ("SGD", {}, "not one DeepSpeed has tested with ZeRO"), ("Lamb", {}, "not one DeepSpeed has tested with ZeRO"),
    ("SGD", {"zero_allow_untested_optimizer": True}, None),
    ("Adamm", {}, "is neither a DeepSpeed optimizer nor one of torch.optim's"), (3, {}, "is neither")])
def test_an_optimizer_deepspeed_would_refuse_is_refused_when_the_job_is_validated(tmp_path, name, extra, refused):
    """It passed validation and every stage before `correct`, where DeepSpeed refused it without naming the file."""
    from lancet_ds.job.validate import _check_ds_config

    cfg = tmp_path / "ds.json"
    cfg.write_text(json.dumps({**json.loads((REPO / "ds_configs" / "zero3.json").read_text()),
                               "optimizer": {"type": name, "params": {"lr": 1e-4}}, **extra}))
    problems: list[str] = []
    _check_ds_config(str(cfg), 1, problems)
    assert (problems == []) if refused is None else (len(problems) == 1 and refused in problems[0]), problems


def test_from_stage_forgets_the_stages_before_deleting_their_files(tmp_path, monkeypatch):
    """A kill between the two steps must leave stages to redo, never stages marked done without outputs."""
    from lancet_ds.job import runner
    from lancet_ds.job.manifest import Manifest
    from lancet_ds.run_dir import RunDir

    run = RunDir(tmp_path)
    manifest = Manifest(run)
    for name in ("fit", "queries", "recall", "score"):
        manifest.update_stage(name, status="done")
        (tmp_path / {"fit": "factors", "score": "scores"}.get(name, name)).mkdir()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while deleting")

    monkeypatch.setattr(runner.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        runner._clear_from(run, manifest, "recall")
    on_disk = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert set(on_disk) == {"fit", "queries"}


def test_a_job_that_validates_on_its_evaluation_data_is_refused(tmp_path, tiny_world):
    job = write_job(tmp_path / "job.yaml", tiny_world, tmp_path / "run")
    same = plain("job", "validate", str(job), "--set", f"stages.correct.validation_clean={tiny_world / 'test' / 'clean.jsonl'}")
    assert same.returncode == 4
    assert "correct.validation_clean" in same.stderr and "evaluate.clean" in same.stderr and "are the same file" in same.stderr
    copied = tmp_path / "copy.jsonl"
    copied.write_text((tiny_world / "test" / "queries.jsonl").read_text())
    shared = plain("job", "validate", str(job), "--set", f"stages.correct.validation_queries={copied}")
    assert shared.returncode == 4 and "share" in shared.stderr and "prompts" in shared.stderr
    seen = plain("job", "validate", str(job), "--set", f"stages.correct.validation_queries={tiny_world / 'queries.jsonl'}")
    assert seen.returncode == 4 and "queries (" in seen.stderr
