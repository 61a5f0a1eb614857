"""Per-rank memory of the influence stages (DESIGN.md section 4): the size of each tap point's tensors
from the model's module tree alone, the partitions that keep a stage's resident tensors under a
per-rank budget, and the resident bytes a stage actually held.

The same functions size a real (ZeRO-3-sharded) model in a stage and a model built on the `meta`
device from a `config.json` in `lancet-ds plan`, so the plan and the stages cannot disagree on shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn as nn

from lancet_ds.errors import ConfigError
from lancet_ds.influence.sublayers import linears_in

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
DTYPE_BYTES = {"float32": 4, "float64": 8, "bfloat16": 2, "float16": 2}


def parse_bytes(text: str | int | None, where: str = "memory_budget") -> int | None:
    """'70GB', '512MiB', '1.5e9' or a plain number of bytes; None stays None."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m[2].upper() not in UNITS:
        raise ConfigError(f"{where}: {text!r} is not a size; write e.g. 70GB, 512MiB or a number of bytes.")
    return int(float(m[1]) * UNITS[m[2].upper()])


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in a nest of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class Peak:
    """The most bytes a stage's own tensors (factor sums, bases, IHVPs) held at once on this rank,
    observed at the points where they are largest (after each pass, after each reduction)."""

    def __init__(self) -> None:
        self.bytes = 0

    def observe(self, *holders, extra: int = 0) -> int:
        """Note the bytes of `holders`' tensors (+ `extra`, bytes held at some moment in between)."""
        now = sum(tensor_bytes(h) for h in holders) + extra
        self.bytes = max(self.bytes, now)
        return now


def _linear_dims(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear or GPT-2 Conv1D; ZeRO-3 keeps the full shape in `ds_shape`."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = module.weight
    shape = tuple(getattr(weight, "ds_shape", weight.shape))
    return shape[0], shape[1]  # Conv1D's weight is (in, out)


def point_dims(model: nn.Module, point) -> tuple[int, int]:
    """(P, M) of a tap point: the width of its output (the last Linear under the output module) and of
    its input (the first Linear under the input module), as its gradients G = Σ_t g_t a_tᵀ are P × M."""
    modules = dict(model.named_modules())
    ins, outs = linears_in(modules, point.input_module), linears_in(modules, point.output_module)
    if not ins or not outs:
        raise ConfigError(f"tap point {point.name}: no Linear under {point.input_module} / {point.output_module}; "
                          "cannot size its factors.")
    return _linear_dims(modules[outs[-1]])[1], _linear_dims(modules[ins[0]])[0]


@dataclass(frozen=True)
class Item:
    """One unit of partitioned work and the bytes it keeps resident while its partition runs."""

    key: object
    bytes: int


def partition(items: list[Item], capacity: int | None, what: str, advice: str) -> list[list[Item]]:
    """Consecutive groups of `items` whose bytes fit `capacity` each (one group when capacity is None).
    Refuses, saying what to change, when a single item does not fit."""
    if capacity is None:
        return [items] if items else []
    groups: list[list[Item]] = []
    size = 0
    for item in items:
        if item.bytes > capacity:
            raise ConfigError(f"{what}: {item.key} alone needs {format_bytes(item.bytes)} but only "
                              f"{format_bytes(max(capacity, 0))} of the memory budget is left for it. {advice}")
        if not groups or size + item.bytes > capacity:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += item.bytes
    return groups


def budget_problems(value: str | None, name: str = "memory_budget") -> list[str]:
    """The options' `validate()` phrasing of an unreadable budget."""
    try:
        parse_bytes(value, name)
    except ConfigError as exc:
        return [str(exc)]
    return []
