"""Synthetic inputs for the speed figures: a random-initialised Llama saved with `save_pretrained`, fixed-
length random-token sequences (the first half prompt, the second half response), and 60-word documents
drawn from a Zipf vocabulary for TF-IDF. All seeded, nothing downloaded."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import torch

from lancet_ds.bench.sizes import BenchSize
from lancet_ds.data.records import EncodedSample

PAD_ID = 0
WORDS_PER_DOC = 60


def save_random_llama(out: Path, size: BenchSize, seed: int = 0) -> Path:
    """A Llama of the preset's shape with random weights, written once under `out`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    config = LlamaConfig(vocab_size=size.vocab, hidden_size=size.hidden, intermediate_size=size.intermediate,
                         num_hidden_layers=size.layers, num_attention_heads=size.heads,
                         num_key_value_heads=size.heads, max_position_embeddings=2 * size.seq_len,
                         tie_word_embeddings=False, pad_token_id=PAD_ID, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(out))
    return out


def sequences(n: int, size: BenchSize, prefix: str, seed: int) -> list[EncodedSample]:
    """n sequences of `seq_len` tokens; the loss covers the second half (the response)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, size.vocab, (n, size.seq_len), generator=g).tolist()
    half = size.seq_len // 2
    return [EncodedSample(f"{prefix}-{i:05d}", row, [0] * half + [1] * (size.seq_len - half)) for i, row in enumerate(ids)]


def _vocabulary(n_words: int = 20000) -> tuple[list[str], list[float]]:
    """The words and their cumulative Zipf weights (cumulative once: `random.choices` would re-add 20,000
    weights per document)."""
    rng = random.Random(1)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = sorted({"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(n_words)})
    cumulative = list(itertools.accumulate(1.0 / (r + 1) for r in range(len(words))))  # Zipf
    rng.shuffle(words)
    return words, cumulative


def write_documents(path: Path, n: int, seed: int) -> Path:
    """`n` generic JSONL records (`id`, `prompt` of 20 words, `response` of 40), streamed to disk."""
    words, cumulative = _vocabulary()
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            w = rng.choices(words, cum_weights=cumulative, k=WORDS_PER_DOC)
            fh.write(json.dumps({"id": f"doc-{i:07d}", "prompt": " ".join(w[:20]), "response": " ".join(w[20:])}) + "\n")
    return path
