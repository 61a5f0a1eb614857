"""The production job, for the DeepSpeed launcher:

    deepspeed [--num_gpus N] launch/correct.py --config ds_configs/zero3.json [--run-dir DIR]

With nothing else it runs the embedded default: it builds (or reuses, by seed) the demo world
(DESIGN.md section 6), then fit → queries → recall → score → correct → export → evaluate, writes
RUN_DIR/report.json and prints a summary table. Each stage reuses its finished result, so a rerun
continues where an interrupted one stopped. (Jobs on your own model and data: the `lancet-ds`
stage commands, see the README.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lancet_ds.cli import run  # noqa: E402


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="ds_configs/zero3.json", help="DeepSpeed JSON config.")
    p.add_argument("--run-dir", default="runs/demo", help="Run directory (the demo world goes to RUN_DIR/world).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the demo world.")
    p.add_argument("--size", default="default", choices=["tiny", "default", "large"], help="Demo world size.")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    sys.exit(run(["demo-job", "--run-dir", args.run_dir, "--seed", str(args.seed), "--size", args.size,
                  "--ds-config", args.config]))
