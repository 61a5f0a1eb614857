"""Judges (DESIGN.md section 9): tiny Hugging Face classifiers written with save_pretrained and read back
through `load_judge` (the real from_pretrained path), their outputs forced by the classifier bias
(weight zeroed), so the expected probability is known exactly; and the demo world's JSON judge."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lancet_ds.errors import ConfigError
from lancet_ds.evaluation.judge import choose_label, flag, load_judge

WORDS = "how do i oil a gate use three drops sure step bend wire hook can't help with that".split()
PROMPTS = ["how do i oil a gate", "how do i bend a wire", "help"]
RESPONSES = ["use three drops", "sure step 1 bend a hook", "i can't help with that"]


def _tokenizer(pad: bool = True):
    """A word-level tokenizer ([CLS] prompt [SEP] response [SEP]) built in memory: no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + sorted(set(WORDS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    extra = {"pad_token": "[PAD]"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
                                   model_max_length=32, **extra)


def _bert(path, labels: list[str] | None, bias: list[float] | None = None, seed: int = 0):
    """A 1-layer BERT classifier saved to `path`; with `bias`, its logits are exactly `bias` for any input."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tok = _tokenizer()
    n = len(labels) if labels else 1
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, max_position_embeddings=64, num_labels=n, pad_token_id=tok.pad_token_id,
                     initializer_range=0.5)  # a random model's outputs then differ visibly between inputs
    if labels:
        cfg.id2label, cfg.label2id = dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg)
    if bias is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.copy_(torch.tensor(bias))
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return str(path)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _softmax(z: list[float]) -> np.ndarray:
    e = np.exp(np.asarray(z) - max(z))
    return e / e.sum()


@pytest.mark.parametrize("labels,bias", [(["harmless", "harmful"], [0.0, 2.0]), (["harmful", "harmless"], [2.0, 0.0]),
                                         (["Harmless", "HARMFUL"], [-1.0, 1.0]), (["safe", "unsafe"], [0.0, 2.0])])
def test_harmful_label_by_exact_name_in_either_order(tmp_path, labels, bias):
    judge = load_judge(_bert(tmp_path / "cls", labels, bias), batch_size=2)
    harmful = [n.lower() for n in labels].index(next(n for n in ("harmful", "unsafe") if n in map(str.lower, labels)))
    p = judge.score(PROMPTS, RESPONSES)
    assert judge.index == harmful and judge.kind == "harm"
    np.testing.assert_allclose(p, _softmax(bias)[harmful], rtol=1e-5)
    assert flag(judge, p).all()  # the harmful class dominates: rate 1, never the harmless one's 0
    np.testing.assert_allclose(judge.harm_probability(PROMPTS, RESPONSES), p)


def test_a_judge_describes_itself_for_the_record(tmp_path):
    """`provenance`: the classifier's chosen label (by index and name) or its single output; a demo-world
    judge's stored metrics (None in a file written without them)."""
    cls = load_judge(_bert(tmp_path / "cls", ["harmless", "harmful"], [0.0, 1.0]), max_length=8).provenance()
    assert cls == {"format": "Hugging Face BertForSequenceClassification", "threshold": 0.5, "label": "1 (harmful)",
                   "max_length": 8}
    assert load_judge(_bert(tmp_path / "rm", None, [1.5]), kind="reward").provenance()["label"] == "single output"
    world = load_judge(_world_judge(tmp_path / "w.json", None)).provenance()
    assert world["metrics"] is None and world["input"] == "response"


def test_explicit_label_by_name_or_index(tmp_path):
    path = _bert(tmp_path / "cls", ["LABEL_0", "LABEL_1", "LABEL_2"], [0.0, 1.0, 3.0])
    for label in ("label_2", 2, "2"):
        np.testing.assert_allclose(load_judge(path, label=label).score(PROMPTS, RESPONSES),
                                   _softmax([0.0, 1.0, 3.0])[2], rtol=1e-5)
    with pytest.raises(ConfigError, match="no label is named 'toxic'.*LABEL_0"):
        load_judge(path, label="toxic")
    with pytest.raises(ConfigError, match="out of range"):
        load_judge(path, label=3)


def test_unmatched_or_ambiguous_labels_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no label is named harmful.*0='LABEL_0', 1='LABEL_1'.*explicitly"):
        load_judge(_bert(tmp_path / "plain", ["LABEL_0", "LABEL_1"], [0.0, 0.0]))
    with pytest.raises(ConfigError, match="several labels match"):
        choose_label({0: "toxic", 1: "unsafe"}, "harm")
    # a substring is never enough: "harm" is in "harmless", "good" in "not good"
    with pytest.raises(ConfigError, match="no label is named"):
        choose_label({0: "harmless", 1: "harm"}, "harm")
    with pytest.raises(ConfigError, match="no label is named helpful"):
        choose_label({0: "not good", 1: "bad"}, "reward")


def test_one_logit_cost_model(tmp_path):
    harmful = load_judge(_bert(tmp_path / "cost_up", None, [2.0]), kind="harm", batch_size=2)
    p = harmful.score(PROMPTS, RESPONSES)
    assert harmful.index is None
    np.testing.assert_allclose(p, _sigmoid(2.0), rtol=1e-6)
    assert flag(harmful, p).mean() == 1.0
    harmless = load_judge(_bert(tmp_path / "cost_down", None, [-2.0]), kind="harm")
    p = harmless.score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(p, _sigmoid(-2.0), rtol=1e-6)
    assert flag(harmless, p).mean() == 0.0
    with pytest.raises(ConfigError, match="single-output score model has no label"):
        load_judge(str(tmp_path / "cost_up"), label="harmful")


def test_one_logit_reward_model_and_reward_labels(tmp_path):
    reward = load_judge(_bert(tmp_path / "rm", None, [1.5]), kind="reward")
    np.testing.assert_allclose(reward.score(PROMPTS, RESPONSES), _sigmoid(1.5), rtol=1e-6)
    with pytest.raises(ConfigError, match="kind='harm'"):
        reward.harm_probability(PROMPTS, RESPONSES)
    helpful = load_judge(_bert(tmp_path / "cls", ["unhelpful", "helpful"], [0.0, -1.0]), kind="reward")
    np.testing.assert_allclose(helpful.score(PROMPTS, RESPONSES), _softmax([0.0, -1.0])[1], rtol=1e-5)


def test_hf_judge_reads_the_prompt_and_batches_like_one_by_one(tmp_path):
    path = _bert(tmp_path / "random", ["safe", "unsafe"], bias=None, seed=3)
    one, batched = load_judge(path, batch_size=1), load_judge(path, batch_size=3)
    p = batched.score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(p, one.score(PROMPTS, RESPONSES), rtol=1e-5, atol=1e-6)
    q = batched.score(["sure step bend wire hook"] * 3, RESPONSES)
    assert np.abs(p - q).max() > 1e-4  # only the prompts changed
    assert not batched.model.training


def test_decoder_classifier_pads_by_the_tokenizer_pad_token(tmp_path):
    """A Llama classifier finds each sequence's last token through pad_token_id: batched = one by one."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = _tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, num_labels=2,
                      id2label={0: "safe", 1: "unsafe"}, label2id={"safe": 0, "unsafe": 1})
    torch.manual_seed(0)
    LlamaForSequenceClassification(cfg).save_pretrained(str(tmp_path / "llama"))
    tok.save_pretrained(str(tmp_path / "llama"))
    batched = load_judge(str(tmp_path / "llama"), batch_size=3)
    assert batched.model.config.pad_token_id == tok.pad_token_id
    np.testing.assert_allclose(batched.score(PROMPTS, RESPONSES),
                               load_judge(str(tmp_path / "llama"), batch_size=1).score(PROMPTS, RESPONSES),
                               rtol=1e-5, atol=1e-6)


def test_truncation_to_the_model_maximum(tmp_path):
    judge = load_judge(_bert(tmp_path / "cls", ["safe", "unsafe"], [0.0, 1.0]), max_length=8)
    assert judge.max_length == 8
    long = " ".join(WORDS * 20)
    np.testing.assert_allclose(judge.score([long], [long]), _softmax([0.0, 1.0])[1], rtol=1e-5)
    assert load_judge(str(tmp_path / "cls")).max_length == 32  # the tokenizer's model_max_length


def test_head_missing_or_mismatched_is_refused(tmp_path):
    """A checkpoint without the classification head (as a custom score model loads) would score noise."""
    from transformers import BertConfig, BertModel

    tok = _tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, max_position_embeddings=64, num_labels=1)
    BertModel(cfg).save_pretrained(str(tmp_path / "base"))
    tok.save_pretrained(str(tmp_path / "base"))
    with pytest.raises(ConfigError, match="does not hold.*classifier.*would be random"):
        load_judge(str(tmp_path / "base"))
    path = _bert(tmp_path / "two", ["safe", "unsafe"], [0.0, 1.0])
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    (tmp_path / "two" / "config.json").write_text(json.dumps({**config, "id2label": {"0": "cost"},
                                                               "label2id": {"cost": 0}}))
    with pytest.raises(ConfigError, match="two: cannot load a Hugging Face sequence classifier"):
        load_judge(path)  # a 2-output head read as a 1-output one


def test_load_judge_says_what_a_path_is_not(tmp_path):
    with pytest.raises(ConfigError, match="nope: not a judge \\(no such file"):
        load_judge(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="without config.json"):
        load_judge(str(tmp_path / "empty"))
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ConfigError, match="other.json: not a demo-world judge"):
        load_judge(str(tmp_path / "other.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ConfigError, match="broken.json: not a JSON file"):
        load_judge(str(tmp_path / "broken.json"))
    with pytest.raises(ConfigError, match="kind 'cost' is unknown"):
        load_judge(str(tmp_path / "other.json"), kind="cost")


def _world_judge(path, input: str | None):
    """A hand-built world judge ("hook" and "how" push towards harmful); `input=None` writes a file as
    it was before the "input" key existed."""
    from lancet_ds.demo_world.judge import Judge

    Judge(vocabulary={"hook": 0, "how": 1, "drops": 2}, idf=[1.0, 1.0, 1.0], coef=[4.0, 3.0, -2.0],
          intercept=-1.0).save(path)
    stored = json.loads(path.read_text())
    stored.pop("input")
    path.write_text(json.dumps(stored if input is None else {**stored, "input": input}))
    return str(path)


def test_positive_filter_judges_only_the_positive_candidates(tmp_path):
    """`correct --positive-judge`: the ids among samples with a positive score on some batch that the judge
    flags ("hook" 4 − 1 > 0; "drops" −2 − 1 < 0); a harmful text scored only ≤ 0 is not a D⁺ candidate."""
    from lancet_ds.ibo.positive_filter import judge_flagged

    rows = [{"id": "quote", "prompt": "p", "response": "bend a hook", "score_0": 0.0, "score_1": 2.0},
            {"id": "plain", "prompt": "p", "response": "use drops", "score_0": 3.0, "score_1": -1.0},
            {"id": "lowered", "prompt": "p", "response": "a hook", "score_0": -1.0, "score_1": 0.0}]
    path = _world_judge(tmp_path / "j.json", "response")
    assert judge_flagged(rows, path) == {"quote"}
    assert judge_flagged(rows, path, every_row=True) == {"quote", "lowered"}  # D⁻'s bar judges every candidate
    with pytest.raises(ConfigError, match="has no labels to choose"):
        judge_flagged(rows, path, label="harmful")


def test_world_judge_reads_the_prompt_only_when_its_file_says_so(tmp_path):
    responses = ["bend a hook", "use drops"]
    old = load_judge(_world_judge(tmp_path / "old.json", None))
    assert old.stored.input == "response"
    np.testing.assert_allclose(old.score(["how now", "how now"], responses), old.score(["x", "x"], responses))
    new = load_judge(_world_judge(tmp_path / "new.json", "prompt_response"))
    with_how, without = new.score(["how now", "how now"], responses), new.score(["x", "x"], responses)
    assert (with_how > without + 1e-3).all()
    # the scored text is prompt + "\n" + response
    np.testing.assert_allclose(without, new.stored.harm_probability(["x\nbend a hook", "x\nuse drops"]))
    assert flag(new, new.score(["x"], ["bend a hook"]))[0] and not flag(new, new.score(["x"], ["use drops"]))[0]
    with pytest.raises(ConfigError, match="bad.json: \"input\" is 'both'"):
        load_judge(_world_judge(tmp_path / "bad.json", "both"))
    with pytest.raises(ConfigError, match="no labels"):
        load_judge(str(tmp_path / "new.json"), label="harmful")


def test_train_judge_on_prompt_and_response(tmp_path):
    from lancet_ds.demo_world.judge import Judge, train_judge

    rows = [{"prompt": f"how do i {verb} the gate", "text": reply, "harmful": harmful}
            for verb, reply, harmful in [("pick", "sure step 1 bend a hook", True), ("oil", "use three drops", False)]
            for _ in range(12)]
    judge, metrics = train_judge(rows, seed=0, input="prompt_response")
    judge.save(tmp_path / "judge.json", metrics=metrics)
    loaded = Judge.load(tmp_path / "judge.json")
    assert loaded.input == "prompt_response" and metrics["accuracy"] == 1.0
    assert "pick the" in loaded.vocabulary  # the prompt's bigrams were learned
    with pytest.raises(ConfigError, match="needs a `prompt` in every row"):
        train_judge([{"text": "a", "harmful": True}], seed=0, input="prompt_response")
