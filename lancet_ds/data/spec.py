"""Where a data set is and how to read it: the one declaration of the corpus / queries options that the
stage commands (`--schema`, `--prompt-field`, ..., `--split`, `--on-bad-record`) and the job file
(`corpus:` and `queries:` mappings) share (DESIGN.md section 5)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Literal

from lancet_ds.data.bad_records import RejectSink
from lancet_ds.data.corpus import iter_samples
from lancet_ds.data.records import Sample
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.fingerprint import content_sha256


@dataclass
class DataSpec:
    """A data set on disk and how to read it."""

    path: str = ""
    """JSONL, JSON, parquet, or a `datasets` directory (load_from_disk)."""
    schema: SchemaSpec = field(default_factory=SchemaSpec)
    """The record layout and its field names."""
    split: str | None = None
    """Split of a DatasetDict directory."""
    on_bad_record: Literal["fail", "skip"] = "fail"
    """fail: stop at the first bad record with file:line; skip: set it aside in the stage's rejects.jsonl."""

    def validate(self) -> list[str]:
        return [] if self.path else ["path: missing (the file or directory to read)"]

    def samples(self, sink: RejectSink) -> Iterator[Sample]:
        """Every valid sample, in file order; bad records go to `sink`."""
        return iter_samples(self.path, self.schema, sink, self.split)

    def fingerprint(self) -> dict:
        """What a stage guard records of this input: how it is read and the sha256 of its contents (so an
        edited file is never mixed with results computed from the old one)."""
        return {**asdict(self.resolved()), "sha256": content_sha256(self.path)}

    def resolved(self) -> "DataSpec":
        """How the data is read, with an absolute path: what a stage records (a subclass's extra fields,
        such as the corpus's `label_field`, do not change what the stages compute)."""
        return DataSpec(str(Path(self.path).resolve()), self.schema, self.split, self.on_bad_record)


@dataclass
class CorpusSpec(DataSpec):
    """The training corpus: a data set plus, optionally, known culprits."""

    label_field: str | None = None
    """A boolean field marking known culprits (e.g. `contaminated`): the report then measures recall (PR-AUC)."""
