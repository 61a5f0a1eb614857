"""kronfluence's EK-FAC (factors, eigendecompositions, eigenvalue correction, pairwise scores) on the same
model, fitting set, queries and candidates as ours, on the plain (unpartitioned) model, with our damping
rule (kronfluence's heuristic 0.1 × mean eigenvalue; its default is an absolute 1e-8). kronfluence is an
optional peer (`pip install --no-deps kronfluence einops einconv opt-einsum`: its metadata asks for
torchvision, which it does not need here); without it the figure is None with the reason."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from lancet_ds.data.encoding import collate
from lancet_ds.influence.fisher import fisher_loss
from lancet_ds.influence.sublayers import discover
from lancet_ds.losses import response_nll_sum
from lancet_ds.modeling import load_plain

from lancet_ds.bench.synthetic import PAD_ID


def available() -> str | None:
    """None when kronfluence imports, else why not."""
    try:
        import kronfluence  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means the same here
        return f"kronfluence not importable ({exc.__class__.__name__}: {exc}); install it with `pip install --no-deps kronfluence einops einconv opt-einsum`"
    return None


def _task(modules: list[str]):
    from kronfluence.task import Task

    class LMTask(Task):
        """Summed response NLL; Fisher labels sampled from the model as in our `fisher=sampled`."""

        def compute_train_loss(self, batch, model, sample=False):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            if sample:
                return fisher_loss(logits, batch["labels"], "sampled", batch["key"].tolist(), 0)
            return response_nll_sum(logits, batch["labels"])

        def compute_measurement(self, batch, model):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            return response_nll_sum(logits, batch["labels"])

        def get_influence_tracked_modules(self):
            return modules

        def get_attention_mask(self, batch):
            return batch["attention_mask"]

    return LMTask()


class _Rows(torch.utils.data.Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return i, self.samples[i]


def _collate(items):
    batch = collate([s for _, s in items], PAD_ID)
    batch.pop("loss_mask")
    batch["key"] = torch.tensor([i for i, _ in items])
    return batch


def ekfac(model_dir: str, sets: dict[str, list], micro: int, work: Path) -> dict:
    """Seconds of the factor fit and of the pairwise scores, and the (candidates × queries) scores."""
    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    model = load_plain(model_dir)
    model.eval()
    modules = [lin for s in discover(model) for lin in s.linears]
    task = _task(modules)
    model = prepare_model(model, task)
    analyzer = Analyzer("bench", model, task, cpu=True, disable_tqdm=True, output_dir=str(work / "kronfluence"))
    analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=_collate))
    t0 = time.perf_counter()
    analyzer.fit_all_factors("ekfac", dataset=_Rows(sets["fit"]), per_device_batch_size=micro,
                             factor_args=FactorArguments(strategy="ekfac"), overwrite_output_dir=True)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    analyzer.compute_pairwise_scores("scores", "ekfac", query_dataset=_Rows(sets["queries"]),
                                     train_dataset=_Rows(sets["candidates"]),
                                     per_device_query_batch_size=len(sets["queries"]),
                                     per_device_train_batch_size=micro, overwrite_output_dir=True,
                                     score_args=ScoreArguments(damping_factor=None))  # our rule: 0.1 × mean Λ
    score_seconds = time.perf_counter() - t0
    scores = analyzer.load_pairwise_scores("scores")["all_modules"]  # (queries, candidates)
    return {"fit_seconds": fit_seconds, "score_seconds": score_seconds, "total_seconds": fit_seconds + score_seconds,
            "tracked_modules": len(modules), "scores": scores.T.double()}
