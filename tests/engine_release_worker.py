"""Run by `test_engine_release` under the DeepSpeed launcher: a stage (the fit) and a decorated function that
trains one ZeRO-3 step free their engines when they return; rank 0 writes how many ZeRO-3 parameters are left."""

from __future__ import annotations

import gc
import sys

import torch

from lancet_ds import distributed as dist_utils
from lancet_ds.data.spec import DataSpec
from lancet_ds.fileio import write_json
from lancet_ds.influence.fit import FitArgs, fit_factors
from lancet_ds.modeling import load_ds_config, load_model, make_engine, releases_engines
from lancet_ds.packaged import DEFAULT_DS_CONFIG
from lancet_ds.run_dir import RunDir


def zero3_parameters() -> int:
    """ZeRO-3 parameters still in this process's memory (DeepSpeed marks each with `ds_id`), garbage not yet
    collected included: automatic collection is off, so only what `releases_engines` collected is gone."""
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.nn.Parameter) and hasattr(o, "ds_id"))


@releases_engines
def one_training_step(model_dir: str) -> int:
    cfg = load_ds_config(DEFAULT_DS_CONFIG, train_micro_batch_size_per_gpu=2)
    engine = make_engine(load_model(model_dir, cfg), cfg)
    ids = torch.randint(0, 100, (2, 16), device=dist_utils.device())
    loss = engine(input_ids=ids, labels=ids).loss
    engine.backward(loss)
    engine.step()
    return engine.global_steps


def main(model_dir: str, corpus: str, run_dir: str, result: str) -> None:
    dist_utils.init_distributed()
    gc.disable()
    counts = {"before": zero3_parameters()}
    fit_factors(RunDir.of(run_dir), DataSpec(corpus),
                FitArgs(fit_responses="corpus", num_samples=16, micro_batch=4, max_length=96), model_dir,
                DEFAULT_DS_CONFIG)
    counts["after_fit"] = zero3_parameters()
    counts["steps"] = one_training_step(model_dir)
    counts["after_training_step"] = zero3_parameters()
    if dist_utils.is_main():
        write_json(result, counts)
    dist_utils.shutdown(True)


if __name__ == "__main__":
    main(*[a for a in sys.argv[1:] if not a.startswith("--local_rank")])
