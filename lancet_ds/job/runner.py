"""The production job: validate, lock the run directory, then each stage in order (DESIGN.md section 2),
skipping those whose fingerprint (resolved options + input file contents + upstream stages) matches
their finished record in `manifest.json`. Where the inputs and the run directory lie is not part of it
(`fingerprint.path_free`): a job rerun after they moved reuses and resumes what they hold.

A finished stage whose fingerprint changed is refused (exit 4) unless `force` (redo the stages that
changed and everything after them) or `from_stage` (clear that stage and every later one, then redo
them). A stage that was interrupted (any kill, kill -9 included) reruns through its own command's
resume logic (fit sums, score parts and post-training checkpoints are kept), so an interrupted job
rerun finishes with the same results as an uninterrupted one, and a finished job rerun does no work.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from lancet_ds import distributed as dist_utils
from lancet_ds.console import console, is_quiet, say
from lancet_ds.cpu_numerics import restart_pinned
from lancet_ds.errors import ConfigError
from lancet_ds.fileio import read_json
from lancet_ds.fingerprint import compared_fingerprint, fingerprint_path, path_free
from lancet_ds.job.events import JobEvents
from lancet_ds.run_lock import RunLock
from lancet_ds.job.manifest import Manifest
from lancet_ds.job.spec import JobSpec
from lancet_ds.job.stages import STAGE_NAMES, STAGES, Stage
from lancet_ds.job.validate import validate_job
from lancet_ds.run_dir import RunDir
from lancet_ds.stage_guard import config_changes

STAGE_ENV = "LANCET_STAGE"  # the running stage's name, for fault injection in tests (lancet_ds.faults)


def run_job(spec: JobSpec, force: bool = False, from_stage: str | None = None) -> dict:
    """Run (or finish, or reuse) the job; returns report.json's content."""
    if from_stage is not None and from_stage not in STAGE_NAMES:
        raise ConfigError(f"--from-stage {from_stage!r}: not a stage; choose one of {list(STAGE_NAMES)}")
    if spec.demo_world is not None:  # the demo job, world and stages alike, computes the same on every x86 CPU
        restart_pinned("demo job")
    dist_utils.init_distributed()
    run = RunDir.of(spec.output)
    t0 = time.perf_counter()
    dist_utils.on_rank0(lambda: validate_job(spec, dist_utils.world_size(), files=spec.demo_world is None, check_lock=False))
    capacity = dist_utils.on_rank0(lambda: _capacity_plan(spec)) if spec.demo_world is None else None
    lock = RunLock(run)
    dist_utils.on_rank0(lock.acquire)
    stages = [s for s in STAGES if s.enabled(spec)]
    manifest = Manifest(run)
    events = JobEvents(run, len(stages))
    state = {"current": None, "running": None}  # the stage in hand; the one whose work has started
    try:
        if from_stage is not None:
            _clear_from(run, manifest, from_stage)
        if spec.demo_world is not None:  # a finished world stage is skipped, with whatever world it holds
            from lancet_ds.demo_world.build import ready_finished_world

            dist_utils.on_rank0(lambda: ready_finished_world(run.world, spec.demo_world["size"], spec.demo_world["seed"]))
        from lancet_ds.modeling import load_ds_config

        manifest.start_job(spec.resolved(), load_ds_config(spec.ds_config))
        if capacity is not None:
            manifest.data["plan"] = capacity
            manifest.save()
        events.emit("job_start", world_size=dist_utils.world_size(), run_dir=str(run.root.resolve()))
        fingerprints: dict[str, str] = {}
        for index, stage in enumerate(stages, 1):
            state["current"] = stage.name
            if stage.name == "fit" and spec.demo_world is not None:  # the world's files exist now
                dist_utils.on_rank0(lambda: validate_job(spec, dist_utils.world_size(), check_lock=False))
                manifest.data["plan"] = dist_utils.on_rank0(lambda: _capacity_plan(spec))
                manifest.save()
            events.stage_start(index, len(stages), stage.name)
            plan = dist_utils.on_rank0(lambda: _plan(stage, spec, manifest, fingerprints, force))
            fingerprints[stage.name] = plan["fingerprint"]
            _run_stage(stage, plan, spec, run, manifest, events, state)
        state["current"] = None
        manifest.finish_job("done", time.perf_counter() - t0)
        events.emit("job_done", seconds=round(time.perf_counter() - t0, 3))
    except BaseException as exc:
        if state["running"] is not None:  # a refused stage keeps its finished record
            manifest.update_stage(state["running"], status="failed", error=f"{type(exc).__name__}: {exc}")
        if state["current"] is not None:
            events.stage_end("failed", error=f"{type(exc).__name__}: {exc}")
        manifest.finish_job("failed", time.perf_counter() - t0)
        raise
    finally:
        os.environ.pop(STAGE_ENV, None)
        events.close()
        if dist_utils.is_main():
            lock.release()
    report = read_json(run.report_json)
    if dist_utils.is_main():
        print_summary(run, report)
    dist_utils.barrier()
    return report


def _capacity_plan(spec: JobSpec) -> dict:
    """The job's memory plan (`lancet_ds.plan`); refused (exit 4) when a stage cannot fit the budget."""
    from lancet_ds.plan import enforce, job_plan, plan_lines

    plan = job_plan(spec, dist_utils.world_size())
    enforce(plan)
    if spec.memory_budget:
        for line in plan_lines(plan):
            say(f"plan: {line}")
    return plan


def _run_stage(stage: Stage, plan: dict, spec: JobSpec, run: RunDir, manifest: Manifest, events: JobEvents,
               state: dict) -> None:
    """Skip the stage, or record it running, do its work and record it done (`state["running"]` while it works)."""
    if plan["action"] == "skip":
        # where the inputs lie now (a moved run's next rerun then re-hashes nothing: `fingerprint_path`)
        manifest.update_stage(stage.name, inputs=plan["inputs"], config=plan["config"])
        say(f"{stage.name}: unchanged since its finished run; skipping")
        events.stage_end("skipped")
        return
    manifest.update_stage(stage.name, status="running", fingerprint=plan["fingerprint"], config=plan["config"],
                          inputs=plan["inputs"], after=plan["after"], world_size=dist_utils.world_size(),
                          started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    state["running"] = stage.name
    os.environ[STAGE_ENV] = stage.name
    started = time.perf_counter()
    stage.run(spec, run, plan["action"] == "redo")
    seconds = time.perf_counter() - started
    manifest.update_stage(stage.name, status="done", wall_seconds=round(seconds, 2),
                          finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    events.stage_end("done", seconds)
    state["running"] = None


def _plan(stage: Stage, spec: JobSpec, manifest: Manifest, fingerprints: dict[str, str], force: bool) -> dict:
    old = manifest.stage(stage.name)
    inputs = {k: fingerprint_path(v, old.get("inputs", {}).get(k)) for k, v in stage.inputs(spec).items() if v}
    config = stage.config(spec)
    after = {u: fingerprints[u] for u in stage.after if u in fingerprints}
    contents = {k: v["sha256"] for k, v in inputs.items()}
    fingerprint = compared_fingerprint(
        old.get("fingerprint"), {"config": config, "inputs": contents, "after": after},
        {"config": path_free(config, stage.inputs(spec).values(), spec.output), "inputs": contents, "after": after})
    plan = {"fingerprint": fingerprint, "config": config, "inputs": inputs, "after": after, "action": "run"}
    if old.get("status") == "done":
        if old.get("fingerprint") == fingerprint:
            # a result gone (e.g. a stage command's --overwrite cleared it, then failed) is not stood for by its record
            gone = [p for p in (Path(spec.output) / r for r in stage.results()) if not p.exists()]
            if gone:
                say(f"{stage.name}: finished before, but {', '.join(map(str, gone))} is gone; running it again")
            else:
                plan["action"] = "skip"
        elif force:
            plan["action"] = "redo"
        else:
            raise ConfigError(f"stage {stage.name} finished with other {', '.join(_changes(old, plan))}. Rerun "
                              f"with --force to redo what changed and what follows, --from-stage {stage.name} to "
                              "redo from here, or use another --run-dir.")
    elif force:
        plan["action"] = "redo"  # partial progress made with other options is discarded, not refused
    return plan


def _changes(old: dict, new: dict) -> list[str]:
    changed = [f"options ({', '.join(config_changes(old.get('config', {}), new['config']))})"] \
        if old.get("config") != new["config"] else []
    old_inputs = {k: v.get("sha256") for k, v in old.get("inputs", {}).items()}
    new_inputs = {k: v["sha256"] for k, v in new["inputs"].items()}
    changed += [f"input {k}" for k in sorted(set(old_inputs) | set(new_inputs)) if old_inputs.get(k) != new_inputs.get(k)]
    changed += [f"upstream stage {u}" for u in new["after"] if old.get("after", {}).get(u) != new["after"][u]]
    return changed or ["settings"]


def _clear_from(run: RunDir, manifest: Manifest, from_stage: str) -> None:
    """Remove the manifest records, then the outputs, of `from_stage` and every later stage (rank 0). The
    records go first: a kill in between leaves stages that will be redone, never ones marked done whose
    outputs are gone."""
    names = STAGE_NAMES[STAGE_NAMES.index(from_stage):]
    if dist_utils.is_main():
        for name in names:
            manifest.data["stages"].pop(name, None)
        manifest.save()
        for stage in STAGES:
            if stage.name in names:
                for rel in stage.outputs:
                    target = run.root / rel
                    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    dist_utils.barrier()
    say(f"--from-stage {from_stage}: cleared {', '.join(names)}")


def print_summary(run: RunDir, report: dict) -> None:
    from lancet_ds.evaluation.evaluate import eval_table
    from lancet_ds.report.quality import RANKINGS

    if not is_quiet():
        console().print(eval_table(report["evaluation"]))
        pr = report.get("recall_pr_auc")
        if pr:
            parts = ", ".join(f"{k} {pr[k]:.3f}" for k in RANKINGS if k in pr)
            console().print(f"recall PR-AUC among {pr['candidates']} candidates: {parts}")
        protocol = report.get("protocol") or {}
        if protocol:
            console().print(f"checkpoint chosen by {protocol['checkpoint_chosen_by']}; graded on evaluation files only")
    console().print(f"run directory: {run.root.resolve()} (report.md, report.json, manifest.json, model/)")
