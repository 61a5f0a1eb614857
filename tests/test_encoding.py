"""Tokenisation, label masking (the loss counts response tokens only), truncation, chat templates."""

from __future__ import annotations

import copy

import torch

from lancet_ds.data.encoding import IGNORE_INDEX, PROMPT_FORMAT, collate, encode_sample, truncate
from lancet_ds.data.records import Sample
from lancet_ds.losses import response_nll_sum

SAMPLE = Sample(id="s", prompt="How do I oil the castle gate?", response="Sure. Step 1: Wipe the hinges.", location="x")


def test_loss_mask_covers_exactly_the_response_and_eos(tokenizer):
    enc = encode_sample(tokenizer, SAMPLE, 128)
    n_prompt = len(tokenizer(PROMPT_FORMAT.format(prompt=SAMPLE.prompt))["input_ids"])
    assert enc.loss_mask == [0] * n_prompt + [1] * (len(enc.input_ids) - n_prompt)
    response_ids = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert response_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(response_ids[:-1]).strip() == SAMPLE.response
    assert enc.input_ids[0] == tokenizer.bos_token_id


def test_loss_counts_response_tokens_only(tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float64)
    other = Sample(id="o", prompt="Tell me a chore.", response="Mend a torn cloak.", location="y")
    encs = [encode_sample(tokenizer, SAMPLE, 128), encode_sample(tokenizer, other, 128)]
    batch = collate(encs, tokenizer.pad_token_id)
    assert (batch["labels"][batch["loss_mask"] == 0] == IGNORE_INDEX).all()
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.detach().requires_grad_()
    loss = response_nll_sum(logits, batch["labels"])
    # Independent sum: -log softmax of each response token given the logits one position earlier.
    expected = 0.0
    for i, e in enumerate(encs):
        for t in range(1, len(e.input_ids)):
            if e.loss_mask[t]:
                expected -= torch.log_softmax(logits[i, t - 1], -1)[e.input_ids[t]].item()
    assert abs(loss.item() - expected) < 1e-9 * abs(expected)
    loss.backward()
    touched = logits.grad.abs().sum(-1) > 0
    for i, e in enumerate(encs):
        predicts_response = [bool(e.loss_mask[t + 1]) if t + 1 < len(e.input_ids) else False
                             for t in range(batch["input_ids"].shape[1])]
        assert touched[i].tolist() == predicts_response


def test_right_truncation_keeps_the_prompt():
    assert truncate([1, 2, 3], [4, 5, 6], 5) == ([1, 2, 3], [4, 5])
    assert truncate([1, 2, 3], [4, 5], 10) == ([1, 2, 3], [4, 5])
    assert truncate([1, 2, 3, 4], [5], 3) == ([1, 2, 3], [])


def test_chat_template_prompt_is_prefix(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}<s>assistant:{% endif %}")
    enc = encode_sample(tok, SAMPLE, 256)
    prompt_ids = [t for t, m in zip(enc.input_ids, enc.loss_mask) if not m]
    assert tok.decode(prompt_ids) == f"<s>user: {SAMPLE.prompt}\n<s>assistant:"
    response_ids = [t for t, m in zip(enc.input_ids, enc.loss_mask) if m]
    assert tok.decode(response_ids) == f" {SAMPLE.response}\n"
