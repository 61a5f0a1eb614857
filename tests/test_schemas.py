"""Schema adapters: generic (renamed fields), Anthropic HH, BeaverTails, PKU-SafeRLHF."""

from __future__ import annotations

import json

import pytest

from lancet_ds.data.bad_records import RejectSink
from lancet_ds.data.corpus import iter_samples
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.errors import BadRecordError


def _read(tmp_path, rows, **spec):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p, list(iter_samples(p, SchemaSpec(**spec), RejectSink("fail")))


def test_generic_with_renamed_fields_keeps_extras(tmp_path):
    _, s = _read(tmp_path, [{"q": "Hi?", "a": "Hello.", "uid": 17, "category": "x"}],
                 prompt_field="q", response_field="a", id_field="uid")
    assert (s[0].id, s[0].prompt, s[0].response, s[0].meta) == ("17", "Hi?", "Hello.", {"category": "x"})


def test_hh_transcript_splits_on_last_assistant_turn(tmp_path):
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I oil a gate?\n\nAssistant: Use three drops."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: How do I oil a gate?\n\nAssistant: Go away."
    _, s = _read(tmp_path, [{"chosen": chosen, "rejected": rejected}], name="hh")
    assert s[0].prompt == "Human: Hi\n\nAssistant: Hello!\n\nHuman: How do I oil a gate?"
    assert s[0].response == "Use three drops."
    _, r = _read(tmp_path, [{"chosen": chosen, "rejected": rejected}], name="hh", hh_side="rejected")
    assert r[0].response == "Go away." and r[0].id == "c.jsonl:0"


def test_hh_without_turns_is_a_bad_record(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps({"chosen": "no turns here"}) + "\n")
    with pytest.raises(BadRecordError) as err:
        list(iter_samples(p, SchemaSpec(name="hh"), RejectSink("fail")))
    assert str(err.value).splitlines()[0] == (
        f"{p}:1: transcript has no '\\n\\nHuman:' turn followed by an '\\n\\nAssistant:' turn")


def test_beavertails(tmp_path):
    row = {"prompt": "p", "response": "r", "is_safe": False, "category": {"theft": True, "fraud": False}}
    _, s = _read(tmp_path, [row], name="beavertails")
    assert s[0].meta == {"is_safe": False, "category": ["theft"]}
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(dict(row, is_safe="no")) + "\n")
    with pytest.raises(BadRecordError, match="field 'is_safe' must be a boolean, got str"):
        list(iter_samples(p, SchemaSpec(name="beavertails"), RejectSink("fail")))


def test_pku_both_responses_get_their_own_ids(tmp_path):
    row = {"prompt": "p", "response_0": "a", "response_1": "b", "is_response_0_safe": True,
           "is_response_1_safe": False, "safer_response_id": 0}
    _, s = _read(tmp_path, [row], name="pku")
    assert [(x.id, x.response, x.meta["is_safe"]) for x in s] == [("c.jsonl:0/r0", "a", True), ("c.jsonl:0/r1", "b", False)]
    _, one = _read(tmp_path, [row], name="pku", pku_response="1")
    assert [x.id for x in one] == ["c.jsonl:0/r1"]
