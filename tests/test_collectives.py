"""The collectives' routing (`lancet_ds.distributed`): under NCCL, which reduces device tensors only, a host tensor
goes through the device and the result comes back into it; under gloo it is reduced where it is. No GPU here, so
the process group is a stand-in of two ranks that sums or takes the max the way two ranks would, and records what
it was handed: the routing is what is tested, not NCCL."""

from __future__ import annotations

import pytest
import torch

from lancet_ds import distributed as dist_utils


@pytest.fixture
def two_ranks(monkeypatch):
    """A process group of two ranks whose backend the test names; the other rank holds 10 times this one's values.
    `.to(device)` onto the stand-in device gives a copy marked as staged (there is no CUDA tensor to make)."""
    handed = []

    def fake_all_reduce(t, op):
        handed.append(("all_reduce", getattr(t, "staged", False)))
        t.copy_(t + 10 * t if op == torch.distributed.ReduceOp.SUM else torch.maximum(t, 10 * t))

    def fake_reduce(t, dst, op):
        handed.append(("reduce", getattr(t, "staged", False)))
        t.copy_(t + 10 * t)

    real_to = torch.Tensor.to

    def fake_to(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device) and args[0].type == "cuda":
            copy = self.clone()
            copy.staged = True
            return copy
        return real_to(self, *args, **kwargs)

    backend = {"name": "nccl"}
    monkeypatch.setattr(dist_utils.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist_utils.dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist_utils.dist, "get_rank", lambda *a: 0)
    monkeypatch.setattr(dist_utils.dist, "get_backend", lambda *a: backend["name"])
    monkeypatch.setattr(dist_utils.dist, "all_reduce", fake_all_reduce)
    monkeypatch.setattr(dist_utils.dist, "reduce", fake_reduce)
    monkeypatch.setattr(dist_utils, "device", lambda: torch.device("cuda", 0))
    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    return backend, handed


@pytest.mark.parametrize("backend, staged", [("nccl", True), ("gloo", False)])
def test_host_tensors_go_through_the_device_under_nccl_only(two_ranks, backend, staged):
    name, handed = two_ranks
    name["name"] = backend
    total = dist_utils.all_reduce_sum(torch.tensor([1.0, 2.0], dtype=torch.float64))
    top = dist_utils.all_reduce_max(torch.tensor([-1.0, 3.0]))
    into = dist_utils.reduce_sum(torch.tensor([4.0]), dst=0)
    assert total.tolist() == [11.0, 22.0] and top.tolist() == [-1.0, 30.0] and into.tolist() == [44.0]
    assert total.dtype == torch.float64  # the result comes back into the caller's tensor
    assert handed == [("all_reduce", staged), ("all_reduce", staged), ("reduce", staged)]
