"""Tokenisation of samples into input_ids + loss_mask (prompt positions masked), and batching.

Format. With a chat template, the prompt is the user turn rendered with the generation prompt, the
response is what the template adds for the assistant turn. Without one, the prompt is
`PROMPT_FORMAT.format(prompt=...)` (with the tokenizer's special tokens, e.g. BOS) and the response is
`" " + response` followed by EOS. Prompt and response are tokenised separately, so no token straddles
the boundary and `loss_mask` is exact.

Truncation policy (`max_length` tokens in all): the sequence prompt + response is cut from the right,
as most trainers cut it, so the prompt is never shortened to make room and the response loses its end.
A sample whose response then keeps no token is a bad record ("empty response after truncation"),
never trained on or scored with an empty loss; raise `--max-length` to keep such samples.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lancet_ds.data.records import EncodedSample, Sample
from lancet_ds.errors import RecordProblem

PROMPT_FORMAT = "### Human: {prompt}\n### Assistant:"
IGNORE_INDEX = -100


def prompt_and_response_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of the prompt part and of the response part (which ends with EOS)."""
    if getattr(tokenizer, "chat_template", None):
        user = [{"role": "user", "content": prompt}]
        p_ids = list(tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False))
        full = list(tokenizer.apply_chat_template(user + [{"role": "assistant", "content": response}],
                                                  tokenize=True, return_dict=False))
        if full[: len(p_ids)] != p_ids:
            raise RecordProblem("the chat template does not render the prompt as a prefix of the conversation")
        return p_ids, full[len(p_ids):]
    p_ids = tokenizer(PROMPT_FORMAT.format(prompt=prompt), add_special_tokens=True)["input_ids"]
    r_ids = tokenizer(" " + response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is None:
        raise RecordProblem("the tokenizer has no EOS token to end the response with")
    return list(p_ids), list(r_ids) + [tokenizer.eos_token_id]


def truncate(p_ids: list[int], r_ids: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Apply the truncation policy of this module's docstring."""
    p_ids = p_ids[:max_length]
    return p_ids, r_ids[:max_length - len(p_ids)]


def encode_sample(tokenizer, sample: Sample, max_length: int) -> EncodedSample:
    """`EncodedSample` of `sample`; raises `RecordProblem` when no response token survives truncation."""
    p_ids, r_ids = prompt_and_response_ids(tokenizer, sample.prompt, sample.response)
    n_resp = len(r_ids)
    p_ids, r_ids = truncate(p_ids, r_ids, max_length)
    if not r_ids:
        raise RecordProblem(f"empty response after truncation (the prompt has {len(p_ids)} tokens, "
                            f"max_length={max_length} leaves none of the {n_resp} response tokens)")
    return EncodedSample(id=sample.id, input_ids=p_ids + r_ids, loss_mask=[0] * len(p_ids) + [1] * len(r_ids))


def padding_sample(pad_id: int) -> EncodedSample:
    """A one-token sample that counts for nothing: fills a short batch so every rank runs a pass."""
    return EncodedSample(id="<padding>", input_ids=[pad_id], loss_mask=[0])


def collate(samples: Sequence[EncodedSample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask`, `labels` (IGNORE_INDEX off the response), `loss_mask`."""
    width = max(len(s.input_ids) for s in samples)
    n = len(samples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width), dtype=torch.long)
    for i, s in enumerate(samples):
        t = len(s.input_ids)
        input_ids[i, :t] = torch.tensor(s.input_ids)
        attention[i, :t] = 1
        loss_mask[i, :t] = torch.tensor(s.loss_mask)
    labels = torch.where(loss_mask.bool(), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "loss_mask": loss_mask}
