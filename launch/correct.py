"""The production job, for the DeepSpeed launcher:

    deepspeed [--num_gpus N] launch/correct.py --config ds_configs/zero3.json [--run-dir DIR]

With nothing else it runs the embedded default, the demo world (DESIGN.md section 6). Today the job
builds (or reuses, by seed) that world under DeepSpeed; the correction stages that follow it
(fit → queries → recall → score → correct → export → evaluate → report) are not built yet, and the
job says so when it ends.
"""

from __future__ import annotations

import argparse
import os
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
    code = run(["demo-world", str(Path(args.run_dir) / "world"), "--seed", str(args.seed), "--size", args.size,
                "--ds-config", args.config])
    if code == 0 and os.environ.get("RANK", "0") == "0":
        print(f"demo world: {Path(args.run_dir) / 'world' / 'world.json'}\n"
              "The correction stages after it (fit, queries, recall, score, correct, export, evaluate, report) "
              "are not built yet: the job stops here.")
    sys.exit(code)
