"""Which parts of a causal LM the influence computations treat as sublayers (DESIGN.md section 3).

A sublayer f has an input module (its input a_t is the tensor passed into that module) and an output
module (its output s_t is what that module returns). For most families they are one module, the
block's MLP; OPT has no MLP wrapper, so its sublayer runs from `fc1`'s input to `fc2`'s output.
Attention blocks are optional. EK-FAC works per nn.Linear / Conv1D inside the sublayers.

A user names sublayers for other architectures with patterns: `REGEX` (each matching module is a
sublayer) or `IN_REGEX -> OUT_REGEX` (both with one capture group, e.g. the layer index; modules with
the same captured value pair up).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn

from lancet_ds.errors import ConfigError

MLP_PATTERNS = {
    "llama": [r"model\.layers\.\d+\.mlp"],
    "mistral": [r"model\.layers\.\d+\.mlp"],
    "qwen2": [r"model\.layers\.\d+\.mlp"],
    "gpt2": [r"transformer\.h\.\d+\.mlp"],
    "gpt_neox": [r"gpt_neox\.layers\.\d+\.mlp"],
    "opt": [r"model\.decoder\.layers\.(\d+)\.fc1 -> model\.decoder\.layers\.(\d+)\.fc2"],
}
ATTENTION_PATTERNS = {
    "llama": [r"model\.layers\.\d+\.self_attn"],
    "mistral": [r"model\.layers\.\d+\.self_attn"],
    "qwen2": [r"model\.layers\.\d+\.self_attn"],
    "gpt2": [r"transformer\.h\.\d+\.attn"],
    "gpt_neox": [r"gpt_neox\.layers\.\d+\.attention"],
    "opt": [r"model\.decoder\.layers\.\d+\.self_attn"],
}


@dataclass(frozen=True)
class Sublayer:
    name: str
    input_module: str
    output_module: str
    linears: tuple[str, ...]  # nn.Linear / Conv1D modules inside, for EK-FAC


def is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _pair_name(a: str, b: str) -> str:
    parent = a.rsplit(".", 1)[0]
    return f"{parent}.{_leaf(a)}+{_leaf(b)}"


def linears_in(modules: dict[str, nn.Module], name: str) -> tuple[str, ...]:
    """The Linear / Conv1D modules of module `name`: itself when it is one, else those inside it, in order."""
    if is_linear(modules[name]):
        return (name,)
    return tuple(n for n, m in modules.items() if n.startswith(name + ".") and is_linear(m))


def _linears_between(modules: dict[str, nn.Module], root: str | None, pair: tuple[str, str] | None) -> tuple[str, ...]:
    if pair is not None:
        return tuple(n for n in pair if is_linear(modules[n]))
    return linears_in(modules, root)


def resolve(model: nn.Module, patterns: list[str]) -> list[Sublayer]:
    """Sublayers of `model` matching `patterns` (see the module docstring), in module order."""
    modules = dict(model.named_modules())
    names = list(modules)
    found: list[Sublayer] = []
    for pattern in patterns:
        if "->" in pattern:
            left, right = (p.strip() for p in pattern.split("->", 1))
            ins = {m.group(1): n for n in names if (m := re.fullmatch(left, n))}
            outs = {m.group(1): n for n in names if (m := re.fullmatch(right, n))}
            if not ins or set(ins) != set(outs):
                raise ConfigError(f"sublayer pattern {pattern!r}: input and output modules do not pair up "
                                  f"(inputs for {sorted(ins)}, outputs for {sorted(outs)}).")
            for key in ins:
                a, b = ins[key], outs[key]
                found.append(Sublayer(_pair_name(a, b), a, b, _linears_between(modules, None, (a, b))))
        else:
            matched = [n for n in names if re.fullmatch(pattern, n)]
            if not matched:
                raise ConfigError(f"sublayer pattern {pattern!r} matches no module of the model.")
            found.extend(Sublayer(n, n, n, _linears_between(modules, n, None)) for n in matched)
    order = {n: i for i, n in enumerate(names)}
    found.sort(key=lambda s: order[s.input_module])
    if len({s.name for s in found}) != len(found):
        raise ConfigError("sublayer patterns select the same module twice; make them disjoint.")
    return found


def discover(model: nn.Module, patterns: list[str] | None = None, attention: bool = False) -> list[Sublayer]:
    """The default sublayers of a supported family (each block's MLP, plus attention if asked), or
    those named by `patterns`."""
    if patterns:
        return resolve(model, patterns)
    kind = getattr(model.config, "model_type", None)
    if kind not in MLP_PATTERNS:
        listing = "\n  ".join(n for n, _ in model.named_modules() if n)
        raise ConfigError(f"no default sublayers for model type {kind!r} (supported: {sorted(MLP_PATTERNS)}). "
                          "Name them with --sublayer REGEX or --sublayer 'IN_REGEX -> OUT_REGEX'. "
                          f"The model's modules are:\n  {listing}")
    return resolve(model, MLP_PATTERNS[kind] + (ATTENTION_PATTERNS[kind] if attention else []))
