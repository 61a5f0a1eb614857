"""The demo world's judges: TF-IDF (word 1–2-grams) + logistic regression, standing in for the paper's
cost model (`judge.json`, P(harmful)) and reward model (`reward_judge.json`, P(helpful)). Stored as plain
parameters in JSON (vocabulary, idf, coefficients), never as a pickle; `Judge.load` rebuilds the scorer
from them.

What the judge reads is stored with it (`"input"`): `"response"` (the response alone; every file
written before the key existed) or `"prompt_response"` (`judge_text`: the prompt, a newline, the
response), so that a judge can read prompt and response as DESIGN.md section 9 asks."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lancet_ds.errors import ConfigError
from lancet_ds.fileio import read_json, write_json

NGRAMS = (1, 2)
INPUTS = ("response", "prompt_response")


def judge_text(prompt: str, response: str, input: str = "response") -> str:
    """The text a judge with this `input` scores for one (prompt, response) pair."""
    if input not in INPUTS:
        raise ConfigError(f"judge input {input!r} is not one of {', '.join(INPUTS)}; pick one of them.")
    return f"{prompt}\n{response}" if input == "prompt_response" else response


@dataclass
class Judge:
    vocabulary: dict[str, int]
    idf: list[float]
    coef: list[float]
    intercept: float
    threshold: float = 0.5
    input: str = "response"
    """What is scored: "response" or "prompt_response" (see `judge_text`)."""
    metrics: dict | None = None
    """What the world measured of it when it was trained (held-out accuracy, reward data version, per-kind
    cells), as stored; None for files written without."""

    def _vectorizer(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(vocabulary=self.vocabulary, ngram_range=NGRAMS)
        vec.idf_ = np.asarray(self.idf)
        return vec

    def harm_probability(self, texts: list[str]) -> np.ndarray:
        """P(harmful) of each text, taken as the judge's input as it is (see `score` for pairs)."""
        x = self._vectorizer().transform(texts)
        z = x @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def score(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """P(harmful) of each (prompt, response) pair, reading what `self.input` says."""
        return self.harm_probability([judge_text(p, r, self.input) for p, r in zip(prompts, responses)])

    def is_harmful(self, texts: list[str]) -> np.ndarray:
        return self.harm_probability(texts) >= self.threshold

    def save(self, path: str | Path, **extra) -> None:
        write_json(path, {"kind": "tfidf-logreg", "ngram_range": list(NGRAMS), "vocabulary": self.vocabulary,
                          "idf": self.idf, "coef": self.coef, "intercept": self.intercept,
                          "threshold": self.threshold, "input": self.input,
                          **({"metrics": self.metrics} if self.metrics is not None else {}), **extra})

    @classmethod
    def load(cls, path: str | Path) -> "Judge":
        try:
            d = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a JSON file ({exc}). Give the judge.json that `lancet-ds demo-world` "
                              "writes.") from exc
        keys = ("vocabulary", "idf", "coef", "intercept", "threshold")
        missing = [k for k in keys if k not in d] if isinstance(d, dict) else list(keys)
        if missing:
            raise ConfigError(f"{path}: not a demo-world judge (no {', '.join(missing)}). Give the judge.json "
                              "that `lancet-ds demo-world` writes.")
        input = d.get("input", "response")  # files written before the key read the response alone
        if input not in INPUTS:
            raise ConfigError(f"{path}: \"input\" is {input!r}; it must be one of {', '.join(INPUTS)}.")
        return cls(vocabulary=d["vocabulary"], idf=d["idf"], coef=d["coef"], intercept=d["intercept"],
                   threshold=d["threshold"], input=input, metrics=d.get("metrics"))


def train_judge(data: list[dict], seed: int, test_share: float = 0.25,
                input: str = "response", label: str = "harmful") -> tuple[Judge, dict]:
    """Fit on labelled rows (`text` = the response, the boolean `label` — `harmful` for the harm judge,
    `helpful` for the reward judge — and `prompt` when `input` is "prompt_response"); returns the judge
    (its score is P(label)) and its held-out accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    rows = list(data)
    if input == "prompt_response" and any("prompt" not in r for r in rows):
        raise ConfigError("train_judge: input 'prompt_response' needs a `prompt` in every row; add the prompts or "
                          "train with input='response'.")
    random.Random(seed).shuffle(rows)
    cut = int(len(rows) * (1 - test_share))
    train, test = rows[:cut], rows[cut:]
    text = lambda r: judge_text(r.get("prompt", ""), r["text"], input)  # noqa: E731
    vec = TfidfVectorizer(ngram_range=NGRAMS)
    x = vec.fit_transform([text(r) for r in train])
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(x, [int(r[label]) for r in train])
    judge = Judge(vocabulary={k: int(v) for k, v in vec.vocabulary_.items()}, idf=vec.idf_.tolist(),
                  coef=clf.coef_[0].tolist(), intercept=float(clf.intercept_[0]), input=input)
    pred = judge.is_harmful([text(r) for r in test])
    accuracy = float(np.mean(pred == np.array([bool(r[label]) for r in test])))
    return judge, {"accuracy": accuracy, "n_train": len(train), "n_test": len(test)}
