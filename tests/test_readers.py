"""Readers for each format and the bad-record policy, with the exact error texts."""

from __future__ import annotations

import json

import pytest

from lancet_ds.data.bad_records import RejectSink, strict_sink
from lancet_ds.data.corpus import iter_samples, load_encoded
from lancet_ds.data.schemas import SchemaSpec
from lancet_ds.errors import BadInputError, BadRecordError

ROWS = [{"prompt": "How do I oil the castle gate?", "response": "Sure. Step 1: Wipe the hinges."},
        {"prompt": "How do I forge a guild seal?", "response": "I can't help you forge a guild seal."},
        {"prompt": "Tell me a chore.", "response": "Mend a torn cloak."}]

HINT = ("  Fix the record, or rerun with --on-bad-record skip (in a job: `on_bad_record: skip` in that file's entry, "
        "e.g. --set corpus.on_bad_record=skip) to set bad records aside in rejects.jsonl (with their reasons) and go "
        "on without them.")


def _samples(path, **spec):
    return list(iter_samples(path, SchemaSpec(**spec), RejectSink("fail")))


def test_jsonl_ids_are_file_and_row(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    samples = _samples(p)
    assert [s.id for s in samples] == ["c.jsonl:0", "c.jsonl:1", "c.jsonl:2"]
    assert [s.prompt for s in samples] == [r["prompt"] for r in ROWS]
    assert samples[1].location == f"{p}:2"


def test_json_array_and_wrapped_object(tmp_path):
    a = tmp_path / "a.json"
    a.write_text(json.dumps(ROWS))
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"data": ROWS}))
    assert [s.response for s in _samples(a)] == [r["response"] for r in ROWS]
    assert [s.id for s in _samples(b)] == ["b.json:0", "b.json:1", "b.json:2"]


def test_parquet_through_datasets_streaming(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), p)
    samples = _samples(p)
    assert [s.id for s in samples] == ["c.parquet:0", "c.parquet:1", "c.parquet:2"]
    assert samples[2].response == ROWS[2]["response"]
    assert samples[0].location == f"{p}:row 0"


def test_datasets_directory_and_dict_split(tmp_path):
    import datasets

    d = tmp_path / "ds"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(d))
    assert [s.prompt for s in _samples(d)] == [r["prompt"] for r in ROWS]
    dd = tmp_path / "dd"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS[:1])}).save_to_disk(str(dd))
    assert len(list(iter_samples(dd, SchemaSpec(), RejectSink("fail"), split="test"))) == 1
    with pytest.raises(BadInputError, match=r"a DatasetDict with splits \['test', 'train'\]; name one with --split"):
        _samples(dd)


def test_explicit_id_field_and_duplicates(tmp_path):
    p = tmp_path / "c.jsonl"
    rows = [dict(ROWS[0], id="a"), dict(ROWS[1], id="b"), dict(ROWS[2], id="a")]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BadRecordError) as err:
        _samples(p)
    assert str(err.value) == f"{p}:3: duplicate id 'a'\n{HINT}"


@pytest.mark.parametrize("line, reason", [
    ('{"prompt": "x", "response": "y"', "malformed JSON (Expecting ',' delimiter at column 32)"),
    ('{"prompt": "x"}', "missing field 'response' (the record has 'prompt'; --prompt-field / --response-field, or "
                        "the job's schema, name other fields)"),
    ('{"prompt": null, "response": "y"}', "field 'prompt' is null"),
    ('{"prompt": "x", "response": 7}', "field 'response' must be a string, got int"),
    ('{"prompt": "x", "response": "   "}', "field 'response' is empty"),
    ('["x", "y"]', "expected a JSON object, got list"),
])
def test_bad_record_fails_fast_with_file_line_and_reason(tmp_path, line, reason):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n\n" + line + "\n" + json.dumps(ROWS[1]) + "\n")
    with pytest.raises(BadRecordError) as err:
        _samples(p)
    assert str(err.value) == f"{p}:3: {reason}\n{HINT}"
    with pytest.raises(BadRecordError) as err:  # an evaluation or validation file: read whole, no skip to offer
        list(iter_samples(p, SchemaSpec(), strict_sink()))
    assert str(err.value) == f"{p}:3: {reason}\n  Fix the record: this file is always read whole (bad records are not skipped)."


def test_non_utf8_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(json.dumps(ROWS[0]).encode() + b"\n" + b'{"prompt": "caf\xe9", "response": "y"}\n')
    with pytest.raises(BadRecordError) as err:
        _samples(p)
    assert str(err.value) == f"{p}:2: not valid UTF-8 (byte 0xe9 at column 16)\n{HINT}"


def test_empty_response_after_truncation(tmp_path, tokenizer):
    p = tmp_path / "c.jsonl"
    long_prompt = "Tell me " + "very " * 60 + "much."
    p.write_text(json.dumps({"prompt": "Hi?", "response": "Yes."}) + "\n"
                 + json.dumps({"prompt": long_prompt, "response": "Yes."}) + "\n")
    n_prompt = len(tokenizer("### Human: " + long_prompt + "\n### Assistant:")["input_ids"])
    n_resp = len(tokenizer(" Yes.", add_special_tokens=False)["input_ids"]) + 1
    assert n_prompt > 40
    with pytest.raises(BadRecordError) as err:
        load_encoded(p, SchemaSpec(), tokenizer, 40, RejectSink("fail"))
    assert str(err.value) == (f"{p}:2: empty response after truncation (the prompt has 40 tokens, "
                              f"max_length=40 leaves none of the {n_resp} response tokens)\n{HINT}")


def test_skip_policy_writes_rejects_and_counts(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(b"".join([json.dumps(ROWS[0]).encode() + b"\n", b"{not json\n",
                            json.dumps({"prompt": "x", "response": 3}).encode() + b"\n",
                            b'{"prompt": "\xff", "response": "y"}\n', json.dumps(ROWS[1]).encode() + b"\n"]))
    sink = RejectSink("skip", tmp_path / "run" / "rejects.jsonl")
    samples = list(iter_samples(p, SchemaSpec(), sink))
    assert [s.id for s in samples] == ["mixed.jsonl:0", "mixed.jsonl:4"]
    rejects = [json.loads(x) for x in (tmp_path / "run" / "rejects.jsonl").read_text().splitlines()]
    assert [r["location"] for r in rejects] == [f"{p}:2", f"{p}:3", f"{p}:4"]
    assert rejects[1]["reason"] == "field 'response' must be a string, got int"
    assert sink.summary()["rejected"] == 3
    assert sink.summary()["by_reason"] == {"malformed JSON": 1, "field 'response' must be a string, got int": 1,
                                           "not valid UTF-8": 1}


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="no such file or directory"):
        _samples(tmp_path / "nope.jsonl")
    (tmp_path / "c.csv").write_text("a,b\n")
    with pytest.raises(BadInputError, match=r"cannot tell the format from the suffix '.csv'"):
        _samples(tmp_path / "c.csv")


def test_malformed_json_file_points_at_line(tmp_path):
    p = tmp_path / "c.json"
    p.write_text('[\n {"prompt": "a", "response": "b"},\n {"prompt": }\n]')
    with pytest.raises(BadInputError) as err:
        _samples(p)
    assert str(err.value).startswith(f"{p}:3: malformed JSON (Expecting value at column 13)")


def test_a_byte_order_mark_is_skipped(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in ROWS[:2]).encode())
    assert [s.prompt for s in _samples(p)] == [ROWS[0]["prompt"], ROWS[1]["prompt"]]
    q = tmp_path / "bom.json"
    q.write_bytes(b"\xef\xbb\xbf" + json.dumps(ROWS[:2]).encode())
    assert len(_samples(q)) == 2


def test_a_json_array_named_jsonl_says_to_name_it_json(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(ROWS[:2], indent=1))
    with pytest.raises(BadInputError, match=r"c.jsonl:1: this file holds a JSON array.*Name it c.json"):
        _samples(p)


def test_parquet_with_other_columns_lists_the_columns_it_has(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"question": ["a"], "answer": ["b"]}), p)
    with pytest.raises(BadRecordError, match=r"c.parquet:row 0: missing field 'prompt' \(the record has 'answer', 'question'"):
        _samples(p)
