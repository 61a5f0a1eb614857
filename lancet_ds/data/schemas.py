"""Schema adapters: turn one raw row into one or more `Sample`s (DESIGN.md section 5).

* `generic`: `{prompt, response}`; field names configurable; an `id` field, when present, is the id.
* `hh`: Anthropic HH transcripts (`chosen` / `rejected`) with `\\n\\nHuman:` / `\\n\\nAssistant:` turns; the
  last Assistant turn is the response, the transcript before it the prompt. `hh_side` picks the field.
* `beavertails`: `prompt`, `response`, `is_safe`, `category` (a dict of flags or a string).
* `pku`: PKU-SafeRLHF rows `prompt`, `response_0`, `response_1`, `is_response_0_safe`, ...; `pku_response`
  picks `0`, `1` or `both` (default: two samples, ids suffixed `/r0` and `/r1`).

Ids are stable: the row's id field when the schema has one, else `<file name>:<row>` (0-based).
Every problem is a `RecordProblem` with a reason the bad-record policy reports verbatim.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from lancet_ds.data.records import RawRow, Sample
from lancet_ds.errors import ConfigError, RecordProblem

HH_HUMAN = "\n\nHuman:"
HH_ASSISTANT = "\n\nAssistant:"


@dataclass(frozen=True)
class SchemaSpec:
    """How to read samples out of rows."""

    name: Literal["generic", "hh", "beavertails", "pku"] = "generic"
    """Record layout: generic {prompt, response}, hh (Anthropic HH), beavertails or pku (PKU-SafeRLHF)."""
    prompt_field: str = "prompt"
    """generic: the field holding the prompt."""
    response_field: str = "response"
    """generic: the field holding the response."""
    id_field: str = "id"
    """generic: the field holding a stable id; rows without it get `<file>:<row>`."""
    hh_side: Literal["chosen", "rejected"] = "chosen"
    """hh: which transcript is the sample, chosen or rejected."""
    pku_response: Literal["0", "1", "both"] = "both"
    """pku: which response is the sample, 0, 1 or both."""


def adapt(row: RawRow, spec: SchemaSpec) -> list[Sample]:
    """The samples in `row` under `spec`; raises `RecordProblem` when the row does not fit."""
    try:
        adapter = _ADAPTERS[spec.name]
    except KeyError:
        raise ConfigError(f"unknown schema {spec.name!r}; choose one of {sorted(_ADAPTERS)}.") from None
    return adapter(row, spec)


def default_id(row: RawRow) -> str:
    return f"{Path(row.source).name}:{row.row}"


def _missing(data: dict[str, Any], name: str) -> RecordProblem:
    if name in data:
        return RecordProblem(f"field '{name}' is null")
    return RecordProblem(f"missing field '{name}' (the record has {', '.join(repr(k) for k in sorted(data)) or 'no field'};"
                         " --prompt-field / --response-field, or the job's schema, name other fields)")


def _text(data: dict[str, Any], name: str, allow_empty: bool = False) -> str:
    if name not in data or data[name] is None:
        raise _missing(data, name)
    value = data[name]
    if not isinstance(value, str):
        raise RecordProblem(f"field '{name}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RecordProblem(f"field '{name}' is empty")
    return value


def _flag(data: dict[str, Any], name: str) -> bool:
    if name not in data or data[name] is None:
        raise _missing(data, name)
    if not isinstance(data[name], bool):
        raise RecordProblem(f"field '{name}' must be a boolean, got {type(data[name]).__name__}")
    return data[name]


def _generic(row: RawRow, spec: SchemaSpec) -> list[Sample]:
    prompt = _text(row.data, spec.prompt_field)
    response = _text(row.data, spec.response_field)
    sid = row.data.get(spec.id_field)
    if sid is None:
        sid = default_id(row)
    elif not isinstance(sid, (str, int)) or isinstance(sid, bool):
        raise RecordProblem(f"field '{spec.id_field}' must be a string or integer, got {type(sid).__name__}")
    used = {spec.prompt_field, spec.response_field, spec.id_field}
    meta = {k: v for k, v in row.data.items() if k not in used}
    return [Sample(id=str(sid), prompt=prompt, response=response, location=row.location, meta=meta)]


def split_hh_transcript(transcript: str) -> tuple[str, str]:
    """(prompt, response) of an HH transcript: the response is the text after the last Assistant turn."""
    cut = transcript.rfind(HH_ASSISTANT)
    if cut < 0 or HH_HUMAN not in transcript[:cut]:
        raise RecordProblem("transcript has no '\\n\\nHuman:' turn followed by an '\\n\\nAssistant:' turn")
    prompt = transcript[:cut].strip()
    response = transcript[cut + len(HH_ASSISTANT):].strip()
    if not response:
        raise RecordProblem("the last '\\n\\nAssistant:' turn is empty")
    return prompt, response


def _hh(row: RawRow, spec: SchemaSpec) -> list[Sample]:
    if spec.hh_side not in ("chosen", "rejected"):
        raise ConfigError(f"hh_side must be chosen or rejected, got {spec.hh_side!r}")
    prompt, response = split_hh_transcript(_text(row.data, spec.hh_side))
    return [Sample(id=default_id(row), prompt=prompt, response=response, location=row.location,
                   meta={"hh_side": spec.hh_side})]


def _beavertails(row: RawRow, spec: SchemaSpec) -> list[Sample]:
    prompt, response = _text(row.data, "prompt"), _text(row.data, "response")
    is_safe = _flag(row.data, "is_safe")
    category = row.data.get("category")
    if isinstance(category, dict):
        category = sorted(k for k, v in category.items() if v)
    elif category is not None and not isinstance(category, str):
        raise RecordProblem(f"field 'category' must be a dict of flags or a string, got {type(category).__name__}")
    return [Sample(id=default_id(row), prompt=prompt, response=response, location=row.location,
                   meta={"is_safe": is_safe, "category": category})]


def _pku(row: RawRow, spec: SchemaSpec) -> list[Sample]:
    choices = {"0": ["0"], "1": ["1"], "both": ["0", "1"]}
    if spec.pku_response not in choices:
        raise ConfigError(f"pku_response must be 0, 1 or both, got {spec.pku_response!r}")
    prompt = _text(row.data, "prompt")
    samples = []
    for k in choices[spec.pku_response]:
        response = _text(row.data, f"response_{k}")
        meta = {"is_safe": _flag(row.data, f"is_response_{k}_safe"), "response_index": int(k)}
        for extra in ("better_response_id", "safer_response_id"):
            if extra in row.data:
                meta[extra] = row.data[extra]
        samples.append(Sample(id=f"{default_id(row)}/r{k}", prompt=prompt, response=response,
                              location=row.location, meta=meta))
    return samples


_ADAPTERS: dict[str, Callable[[RawRow, SchemaSpec], list[Sample]]] = {
    "generic": _generic, "hh": _hh, "beavertails": _beavertails, "pku": _pku,
}
SCHEMAS = tuple(_ADAPTERS)
