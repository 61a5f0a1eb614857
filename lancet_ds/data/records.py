"""The record types that flow from the readers through the adapters to the encoder."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RawRow:
    """One row as a reader found it: its parsed fields and where it came from."""

    source: str  # the file or dataset directory, as given by the user
    row: int  # 0-based index of the row within `source`
    line: int | None  # 1-based line number for line-oriented files (JSONL), else None
    data: dict[str, Any]

    @property
    def location(self) -> str:
        """`file:line` for JSONL, `file:row N` otherwise: what an error message points at."""
        return f"{self.source}:{self.line}" if self.line is not None else f"{self.source}:row {self.row}"


@dataclass(frozen=True)
class Sample:
    """A prompt/response pair with a stable id that recall, scores and reports carry along."""

    id: str
    prompt: str
    response: str
    location: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EncodedSample:
    """Token ids of prompt + response; `loss_mask[t] = 1` where token t counts in L(z) (response)."""

    id: str
    input_ids: list[int]
    loss_mask: list[int]

    @property
    def num_response_tokens(self) -> int:
        return sum(self.loss_mask)


def is_label(value) -> bool:
    """A usable culprit label: true or false, or 1 / 0 (a float column's 1.0 / 0.0 too); a string "false" would
    count as true."""
    return isinstance(value, (bool, int, float)) and value in (0, 1)


def culprit_labels(metas: list[dict], label: str) -> list[bool] | None:
    """Each record's `label` as a bool, or None unless every record carries a usable one (`is_label`)."""
    if any(label not in m or not is_label(m[label]) for m in metas):
        return None
    return [bool(m[label]) for m in metas]
