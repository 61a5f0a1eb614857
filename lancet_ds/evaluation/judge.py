"""Harmfulness judges for evaluation: the demo world's JSON-stored scikit-learn judge, or a Hugging Face
sequence classifier from a local directory (label index 1 = harmful, or the label whose name contains
"unsafe" / "harm"), which reads prompt and response together."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lancet_ds.errors import ConfigError


class HFJudge:
    def __init__(self, directory: str):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
        names = {i: str(n).lower() for i, n in self.model.config.id2label.items()}
        flagged = [i for i, n in names.items() if "unsafe" in n or "harm" in n]
        self.index = flagged[0] if flagged else 1

    def harm_probability(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for p, r in zip(prompts, responses):
                enc = self.tok(p, r, return_tensors="pt", truncation=True)
                out.append(float(torch.softmax(self.model(**enc).logits[0], -1)[self.index]))
        return np.array(out)


class WorldJudge:
    def __init__(self, path: str):
        from lancet_ds.demo_world.judge import Judge

        self.judge = Judge.load(path)

    def harm_probability(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        return self.judge.harm_probability(responses)


def load_judge(path: str):
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        return WorldJudge(path)
    if p.is_dir() and (p / "config.json").exists():
        return HFJudge(path)
    raise ConfigError(f"{path}: not a judge. Give the demo world's judge.json or a directory with a Hugging Face "
                      "sequence classifier.")
