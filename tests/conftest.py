"""Shared fixtures: a tiny tokenizer and Llama model saved with save_pretrained (loaded back through
the real from_pretrained path), small corpora, and a runner for the real `deepspeed` launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


USED_PORTS: set[int] = set()
PORTS_PER_WORKER = 1500
"""Master ports come from 20000 up, below Linux's ephemeral range (32768 on), which gloo's own connections
draw from; each pytest-xdist worker (`-n 2` in the README's test command) has its own block of them."""


def free_port() -> int:
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    first = 20000 + (worker % 8) * PORTS_PER_WORKER
    for port in range(first, first + PORTS_PER_WORKER):
        if port in USED_PORTS:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use (another run, or a test session beside this one)
                continue
        USED_PORTS.add(port)
        return port
    raise RuntimeError(f"no free port in {first}..{first + PORTS_PER_WORKER - 1}")


@pytest.fixture(scope="session", autouse=True)
def _release_deepspeed_shm():
    """Runs release their DeepSpeed shm buffers; a killed or failed one may not: remove what is left."""
    yield
    for port in USED_PORTS:
        for f in Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_{os.getuid()}_127.0.0.1_{port}_*"):
            f.unlink(missing_ok=True)


LONGEST_FIRST = ("test_pipeline_multirank.py", "test_bench.py", "test_job.py", "test_demo_job.py",
                 "test_factors_multirank.py", "test_demo_world.py", "test_training_multirank.py", "test_plan.py",
                 "test_cli.py")
"""The test files that take minutes, longest first (`--durations` on two workers, 2026-12-06, AMD: 15.8, 14.0,
9.4, 7.6, 4.3, 3.8, 3.3, 2.5 and 2.1 minutes; the others take seconds). pytest-xdist hands its workers whole files
in collection order (pyproject's addopts), so starting with the longest lets the two workers end together."""


def pytest_collection_modifyitems(items):
    order = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: a file's own order is kept


def launch(args: list[str], nproc: int, timeout: int = 600, env: dict | None = None, check: bool = True,
           module: str = "lancet_ds", launcher: bool | None = None):
    """`deepspeed --num_gpus N --module MODULE ARGS` (N CPU ranks on gloo); returns the process. One rank runs
    as a plain `python -m MODULE ARGS` (a 1-rank world of its own, as users run stage commands without the
    launcher; a launcher process fewer to start) unless `launcher`; tests/test_job.py keeps one 1-rank
    launch under the launcher."""
    port = free_port()
    if launcher if launcher is not None else nproc > 1:
        cmd = ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(port), "--module", module, *args]
    else:
        cmd = [sys.executable, "-m", module, *args]
        env = {"MASTER_PORT": str(port), **(env or {})}
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    proc.master_port = port
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def run_script(script: Path, text: str, args: list[str], nproc: int, timeout: int = 600) -> None:
    """Write `text` to `script` and run it with ARGS: `python SCRIPT` on one rank, `deepspeed --num_gpus N SCRIPT` on
    more (the launcher adds --local_rank=N to its argv), the repository on PYTHONPATH; fails unless it exits 0."""
    script.write_text(text)
    cmd = [sys.executable, str(script)] if nproc == 1 else \
        ["deepspeed", "--num_gpus", str(nproc), "--master_port", str(free_port()), str(script)]
    proc = subprocess.run([*cmd, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def cli(args: list[str], check: bool = True, timeout: int = 600):
    """`python -m lancet_ds ARGS` as a plain single process."""
    proc = subprocess.run([sys.executable, "-m", "lancet_ds", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lancet-ds {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def world_texts():
    from lancet_ds.demo_world.corpus import generate_texts

    return generate_texts(seed=1, n_train=400, contamination=0.1, n_judge=200)


@pytest.fixture(scope="session")
def tokenizer(world_texts):
    from lancet_ds.demo_world.tokenizer import train_tokenizer

    return train_tokenizer((t for r in world_texts.train for t in (r["prompt"], r["response"])), vocab_size=320)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 2-layer Llama (hidden 32) with the tokenizer, written with save_pretrained."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny_llama")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, world_texts) -> Path:
    """The first 96 training rows of a generated world, as generic JSONL."""
    out = tmp_path_factory.mktemp("corpus") / "train.jsonl"
    return write_jsonl(out, world_texts.train[:96])


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    """The tiny demo world, built once under 2 ZeRO-3 ranks through the real launcher; under pytest-xdist, once
    for all workers (the first to ask builds it, in the session's shared temp directory, under a file lock)."""
    from filelock import FileLock

    from lancet_ds.demo_world.build import WORLD_FILE

    shared = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        shared = shared.parent
    out = shared / "tiny_world" / "world"
    with FileLock(str(shared / "tiny_world.lock")):
        if not (out / WORLD_FILE).exists():  # written last: a finished build
            launch(["demo-world", str(out), "--size", "tiny", "--seed", "0"], nproc=2)
    return out
