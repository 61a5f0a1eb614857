"""kronfluence-style protection of a stage's results, the one reuse mechanism of every stage and cache
(DESIGN.md section 7): the resolved options and the content fingerprints of the inputs are saved beside
the outputs (`stage_config.json`); a rerun with the same record reuses them, with another it is refused
— naming what changed — unless the user asks to overwrite. Partial progress is guarded the same way, so
an interrupted stage whose inputs changed is redone or refused, never resumed into a mix."""

from __future__ import annotations

import shutil
from pathlib import Path

from lancet_ds import distributed as dist_utils
from lancet_ds.console import say
from lancet_ds.errors import ConfigError
from lancet_ds.fileio import read_json, write_json
from lancet_ds.fingerprint import compared_fingerprint, path_free
from lancet_ds.run_dir import STAGE_RECORD

CONFIG_FILE = STAGE_RECORD


def config_changes(old, new, prefix: str = "") -> list[str]:
    """`key.path: old → new` for every leaf that differs between two resolved configs."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in config_changes(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [f"{prefix[:-1]}: {_short(old)} → {_short(new)}"] if old != new else []


def _short(value) -> str:
    text = repr(value)
    return text[:12] + "…'" if isinstance(value, str) and len(value) == 64 else text  # sha256 digests


def stage_fingerprint(out: Path, config: dict, inputs=(), run_root: Path | None = None, since: tuple[str, ...] = ()) -> str:
    """The fingerprint of a stage's result: of its record `config` with the paths of `inputs` and of the run
    directory taken out (`fingerprint.path_free`), so a moved run or input is reused and resumed. A record
    written before lancet_ds took paths out (its fingerprint covers the whole config but the keys `since`,
    which came with the change) keeps its own while nothing moved; moved, it is refused as before. Rank 0
    decides, for every rank: ranks on nodes that mount the inputs elsewhere see other paths."""
    return dist_utils.on_rank0(lambda: compared_fingerprint(
        _recorded(out), {k: v for k, v in config.items() if k not in since}, path_free(config, inputs, run_root)))


def finished(out: Path, marker: str, fingerprint: str, overwrite: bool, stage: str, config: dict | None = None) -> bool:
    """True when `out` holds this stage's finished result for `fingerprint` (reuse it). Refuses other
    options or inputs unless `overwrite`, in which case the old result is removed (rank 0) and False
    returned. With `config` (the resolved record) the refusal names what changed. Every rank calls it and
    gets the same answer (rank 0 looks, the others are told)."""
    done, old, changes = _look(out, marker, config)
    if done and old == fingerprint and not overwrite:
        say(f"{stage}: {out} already holds this result; reusing it")
        return True
    if done and not overwrite:
        raise ConfigError(f"{out}: holds a {stage} result made with other options or inputs{changes}. "
                          "Rerun with --overwrite to replace it, or use another run directory.")
    if done:
        _clear(out)
    return False


def resumable(out: Path, marker: str, fingerprint: str, config: dict, overwrite: bool, stage: str) -> bool:
    """`finished`, for stages that keep partial progress in `out` (score parts, correction checkpoints):
    progress made with other options or inputs is refused (or cleared with `overwrite`), never resumed;
    the record is written before any new progress."""
    if finished(out, marker, fingerprint, overwrite, stage, config):
        return True
    _, old, changes = _look(out, marker, config)
    if old not in (None, fingerprint):
        if not overwrite:
            raise ConfigError(f"{out}: holds an unfinished {stage} run made with other options or inputs"
                              f"{changes}; it cannot be resumed. Rerun with --overwrite to discard it, or use "
                              "another run directory.")
        _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    record(out, fingerprint, config)
    return False


def cached(out: Path, marker: str, fingerprint: str, config: dict, what: str) -> bool:
    """The same record for a cache (reference log-probs): True when `out` holds the result for
    `fingerprint`; otherwise whatever is there is stale, so it is removed (rank 0) and the caller
    recomputes, then calls `record`."""
    done, old, _ = _look(out, marker, None)
    if done and old == fingerprint:
        say(f"{what}: reusing {out}")
        return True
    _clear(out)
    out.mkdir(parents=True, exist_ok=True)
    return False


def _look(out: Path, marker: str, config: dict | None) -> tuple[bool, str | None, str]:
    """(finished?, recorded fingerprint, what changed against `config`) as rank 0 sees them, on every
    rank: ranks that looked for themselves could see different states while rank 0 writes."""
    def look():
        done, old = (out / marker).exists(), _recorded(out)
        return done, old, _what(out, config)

    return dist_utils.on_rank0(look)


def _what(out: Path, config: dict | None) -> str:
    if config is None or not (out / CONFIG_FILE).exists():
        return ""
    changes = config_changes(read_json(out / CONFIG_FILE).get("config", {}), config)
    return f" ({'; '.join(changes)})" if changes else ""


def _recorded(out: Path) -> str | None:
    return read_json(out / CONFIG_FILE).get("fingerprint") if (out / CONFIG_FILE).exists() else None


def _clear(out: Path) -> None:
    dist_utils.barrier()
    if dist_utils.is_main():
        shutil.rmtree(out, ignore_errors=True)
    dist_utils.barrier()


def record(out: Path, fingerprint: str, config: dict, **extra) -> None:
    """Save the resolved options (rank 0); every rank returns once they are on disk."""
    if dist_utils.is_main():
        write_json(out / CONFIG_FILE, {"fingerprint": fingerprint, "config": config, **extra})
    dist_utils.barrier()
