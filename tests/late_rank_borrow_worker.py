"""Run by `test_ekfac_with_generated_responses_under_two_ranks` under the DeepSpeed launcher: a LinFAC fit
that borrows another fit's recorded fit set (`fit_set_from`) while rank 1 looks for a recorded set of its
own a few seconds after rank 0. Rank 0 copies the borrowed set into the run directory; a rank that looked
only after that copy would take the copy, skip the borrow's barrier and hang the fit (the job's EK-FAC
stage once waited out gloo's 600 s timeout this way)."""

from __future__ import annotations

import sys
import time

from lancet_ds import distributed as dist_utils
from lancet_ds.data.spec import DataSpec
from lancet_ds.influence import fit
from lancet_ds.packaged import DEFAULT_DS_CONFIG
from lancet_ds.run_dir import RunDir


def main(model_dir: str, corpus: str, source_run: str, run_dir: str) -> None:
    dist_utils.init_distributed()
    if dist_utils.rank() == 1:
        look = fit._reuse_fit_set

        def late_look(*args, **kwargs):
            time.sleep(3.0)
            return look(*args, **kwargs)

        fit._reuse_fit_set = late_look
    fit.fit_factors(RunDir.of(run_dir), DataSpec(corpus),
                    fit.FitArgs(fit_responses="generate", num_samples=10, micro_batch=3, max_new_tokens=12,
                                max_length=96, fit_set_from=source_run), model_dir, DEFAULT_DS_CONFIG)
    dist_utils.shutdown(True)


if __name__ == "__main__":
    main(*[a for a in sys.argv[1:] if not a.startswith("--local_rank")])
