"""`lancet-ds train`: supervised fine-tuning of a model directory on a corpus, end to end."""

from __future__ import annotations

from pathlib import Path

from lancet_ds import distributed as dist_utils
from lancet_ds.data.bad_records import stage_sink
from lancet_ds.data.corpus import load_encoded
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.fileio import write_json
from lancet_ds.modeling import check_model_dir, load_ds_config, load_model, load_tokenizer, local_and_full_numel, make_engine, releases_engines, save_model
from lancet_ds.training import TrainArgs, train


@releases_engines
def run_sft(model_dir: str, data_path: str, out_dir: str, ds_config_path: str, spec: SchemaSpec,
            epochs: float = 1.0, max_steps: int | None = None, seed: int = 0, save_every: int = 0,
            lr: float | None = None, micro_batch: int | None = None, grad_accum: int | None = None,
            on_bad_record: str = "fail", max_length: int = 512, split: str | None = None) -> dict:
    """Train, save `out_dir/model`, and write `out_dir/summary.json` (losses, partition sizes)."""
    check_model_dir(model_dir)
    dist_utils.init_distributed()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ds_config = load_ds_config(ds_config_path, train_micro_batch_size_per_gpu=micro_batch,
                               gradient_accumulation_steps=grad_accum)
    if lr is not None:
        ds_config.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"]["lr"] = lr
    tokenizer = load_tokenizer(model_dir)
    sink = stage_sink(on_bad_record, out)
    _, encoded = load_encoded(data_path, spec, tokenizer, max_length, sink, split)
    model = load_model(model_dir, ds_config)
    engine = make_engine(model, ds_config)
    local, full = local_and_full_numel(engine.module)
    args = TrainArgs(epochs=epochs, max_steps=max_steps, seed=seed, save_every=save_every,
                     checkpoint_dir=str(out / "checkpoints"), log_path=str(out / "train_log.jsonl"))
    history = train(engine, encoded, args, tokenizer.pad_token_id)
    save_model(engine, out / "model", tokenizer)
    summary = {"world_size": dist_utils.world_size(), "samples": len(encoded), "rejects": sink.summary(),
               "local_numel_per_rank": dist_utils.all_gather_object(local), "full_numel": full,
               "losses": [h["loss"] for h in history], "steps_run": len(history)}
    if dist_utils.is_main():
        write_json(out / "summary.json", summary)
    return summary
