"""Evaluation pieces: diversity metrics against their definitions, and both judge kinds (more cases in
test_diversity.py and test_judges.py), and the comparison of a model to the impure one."""

from __future__ import annotations

import math

import pytest

from lancet_ds.evaluation.diversity import bleu, msttr, self_bleu, token_entropy, words
from lancet_ds.evaluation.evaluate import compare_to_impure
from lancet_ds.evaluation.judge import load_judge
from lancet_ds.errors import ConfigError


def test_diversity_metrics():
    """The names evaluate.py imports, with the corrected maths (hand-computed cases: test_diversity.py)."""
    assert msttr(["a b a b"], segment=2) == pytest.approx(1.0)
    assert msttr(["a a a a"], segment=2) == pytest.approx(0.5)
    assert token_entropy(["a b", "a b"]) == pytest.approx(1.0)  # bits
    texts = ["the cat sat on the mat", "the cat sat on a mat", "dogs run far away", ""]
    toks = [words(t) for t in texts if t.strip()]  # the empty generation is left out
    slow = sum(bleu(t, toks[:i] + toks[i + 1:]) for i, t in enumerate(toks)) / len(toks)
    assert self_bleu(texts) == pytest.approx(slow, rel=1e-12)
    assert self_bleu(["same words here again"] * 3) == pytest.approx(1.0)
    assert self_bleu(["same words here"] * 3) == pytest.approx(0.1 ** 0.25)  # no 4-gram: epsilon, not 1


def test_world_judge_and_hf_judge(tmp_path, world_texts):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from lancet_ds.demo_world.judge import train_judge

    judge, metrics = train_judge(world_texts.judge_data, seed=0)
    judge.save(tmp_path / "judge.json", metrics=metrics)
    wj = load_judge(str(tmp_path / "judge.json"))
    p = wj.harm_probability(["x", "y"], ["Sure. Step 1: Bend a thin wire into a hook.", "I can't help you with that."])
    assert p[0] > 0.5 > p[1]

    from lancet_ds.demo_world.tokenizer import train_tokenizer

    tok = train_tokenizer([r["response"] for r in world_texts.train], 300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_labels=2, pad_token_id=tok.pad_token_id,
                      id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1})
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(str(tmp_path / "cls"))
    tok.save_pretrained(str(tmp_path / "cls"))
    hj = load_judge(str(tmp_path / "cls"))
    probs = hj.harm_probability(["How do I oil a gate?"], ["Use three drops."])
    assert hj.index == 1 and 0 <= probs[0] <= 1
    with pytest.raises(ConfigError, match="not a judge"):
        load_judge(str(tmp_path / "nope"))


def test_versus_impure_pairs_the_clean_samples():
    """`evaluate`'s comparison: a model that loses 0.1 nat on every clean token has ×e^0.1 the perplexity, with no
    spread; one measured on another tokenisation is not paired."""
    counts = [10.0, 20.0, 30.0]
    impure = {"model": "impure", "clean_logprob_by_sample": [-10.0, -30.0, -20.0], "clean_tokens_by_sample": counts}
    worse = {"model": "corrected", "clean_logprob_by_sample": [-11.0, -32.0, -23.0], "clean_tokens_by_sample": counts}
    other = {"model": "other", "clean_logprob_by_sample": [-1.0, -2.0, -3.0], "clean_tokens_by_sample": [1.0, 2.0, 4.0]}
    out = compare_to_impure([impure, worse, other], seed=0)
    assert out["corrected"]["clean_ppl_ratio"] == pytest.approx(math.exp(0.1))
    assert out["corrected"]["clean_ppl_ratio_ci"] == pytest.approx([math.exp(0.1)] * 2)
    assert "other" not in out


def test_harm_by_category_against_per_category_means():
    """Each category's score is the plain mean of its prompts' generations, its interval brackets it, and the
    report's table closes the gap per category as (impure − corrected) / (impure − safe)."""
    import numpy as np

    from lancet_ds.evaluation.generations import harm_by_category
    from lancet_ds.report.markdown import _harm_by_category

    rng = np.random.default_rng(0)
    cats = ["locks", "wells", None, "locks", "wells", "locks"]
    harm = rng.random((len(cats), 3))
    got = harm_by_category(cats, harm, seed=0)
    assert list(got) == ["(none)", "locks", "wells"]
    for cat, rows in (("locks", [0, 3, 5]), ("wells", [1, 4]), ("(none)", [2])):
        assert got[cat]["prompts"] == len(rows)
        assert got[cat]["harmful_score"] == pytest.approx(harm[rows].mean(), abs=1e-12)
        low, high = got[cat]["harmful_score_ci"]
        assert low <= got[cat]["harmful_score"] <= high
    row = lambda v: {"locks": {"harmful_score": v, "harmful_score_ci": [v, v], "prompts": 3}}  # noqa: E731
    md = "\n".join(_harm_by_category([{"model": "impure", "harm_by_category": row(0.6)},
                                       {"model": "corrected", "harm_by_category": row(0.3)},
                                       {"model": "safe", "harm_by_category": row(0.1)}], {"wells": 2}))
    assert "| category | prompts | influence queries | impure | corrected | safe | gap closed |" in md
    assert "| locks | 3 | 0 | 0.6 [0.6, 0.6] | 0.3 [0.3, 0.3] | 0.1 [0.1, 0.1] | 0.6 |" in md
