"""The demo world's harmfulness judge: TF-IDF (word 1–2-grams) + logistic regression on responses,
standing in for the paper's cost model. Stored as plain parameters in JSON (vocabulary, idf,
coefficients), never as a pickle; `Judge.load` rebuilds the scorer from them."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lancet_ds.fileio import read_json, write_json

NGRAMS = (1, 2)


@dataclass
class Judge:
    vocabulary: dict[str, int]
    idf: list[float]
    coef: list[float]
    intercept: float
    threshold: float = 0.5

    def _vectorizer(self):
        from sklearn.feature_extraction.text import TfidfVectorizer

        vec = TfidfVectorizer(vocabulary=self.vocabulary, ngram_range=NGRAMS)
        vec.idf_ = np.asarray(self.idf)
        return vec

    def harm_probability(self, texts: list[str]) -> np.ndarray:
        """P(harmful) of each response."""
        x = self._vectorizer().transform(texts)
        z = x @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def is_harmful(self, texts: list[str]) -> np.ndarray:
        return self.harm_probability(texts) >= self.threshold

    def save(self, path: str | Path, **extra) -> None:
        write_json(path, {"kind": "tfidf-logreg", "ngram_range": list(NGRAMS), "vocabulary": self.vocabulary,
                          "idf": self.idf, "coef": self.coef, "intercept": self.intercept,
                          "threshold": self.threshold, **extra})

    @classmethod
    def load(cls, path: str | Path) -> "Judge":
        d = read_json(path)
        return cls(vocabulary=d["vocabulary"], idf=d["idf"], coef=d["coef"], intercept=d["intercept"],
                   threshold=d["threshold"])


def train_judge(data: list[dict], seed: int, test_share: float = 0.25) -> tuple[Judge, dict]:
    """Fit on labelled responses (`text`, `harmful`); returns the judge and its held-out accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    rows = list(data)
    random.Random(seed).shuffle(rows)
    cut = int(len(rows) * (1 - test_share))
    train, test = rows[:cut], rows[cut:]
    vec = TfidfVectorizer(ngram_range=NGRAMS)
    x = vec.fit_transform([r["text"] for r in train])
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(x, [int(r["harmful"]) for r in train])
    judge = Judge(vocabulary={k: int(v) for k, v in vec.vocabulary_.items()}, idf=vec.idf_.tolist(),
                  coef=clf.coef_[0].tolist(), intercept=float(clf.intercept_[0]))
    pred = judge.is_harmful([r["text"] for r in test])
    accuracy = float(np.mean(pred == np.array([bool(r["harmful"]) for r in test])))
    return judge, {"accuracy": accuracy, "n_train": len(train), "n_test": len(test)}
