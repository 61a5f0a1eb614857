"""The production job, for the DeepSpeed launcher:

    deepspeed [--num_gpus N] launch/correct.py --config ds_configs/zero3.json [--job JOB.yaml] [--run-dir DIR]

With no --job it runs the embedded default: it builds (or reuses, by seed) the demo world (DESIGN.md
section 6), then fit → queries → recall → score → correct → export → evaluate → report. With --job it
runs that job file (README: "Jobs on your own model and data"). It validates the job first, locks the run
directory, skips finished stages and resumes interrupted ones; see `lancet-ds job run --help` for every
option (--set KEY=VALUE, --force, --from-stage, --quiet). Exit codes: README "Exit codes".
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lancet_ds.cli import run  # noqa: E402


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--local_rank") and not a.startswith("--local-rank")]
    return run(["job", "run", *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
