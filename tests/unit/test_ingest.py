import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.data.ingest import (
    FORMATS,
    IngestError,
    Issue,
    Pair,
    detect_format,
    iter_records,
    raw_records,
    read_pairs,
)

from tests.conftest import FORMATS as FORMAT_FIXTURES
from tests.conftest import HH as HH_FILE
from tests.conftest import SHARED_HH, SHARED_UF
from tests.conftest import UF as ULTRAFEEDBACK_FILE

STANDARD = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}
HH_PROMPT = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke"
# Two spaces after "Assistant:" as in some real HH transcripts.
HH = {
    "chosen": HH_PROMPT + "\n\nAssistant:  Why did the chicken cross the road?",
    "rejected": HH_PROMPT + "\n\nAssistant: No.",
}
CONVERSATIONAL = {
    "chosen": [
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": "Blue"},
    ],
    "rejected": [
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": "Seven"},
    ],
}
SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Capital of France?"},
    ],
    "chosen": {"from": "gpt", "value": "Paris"},
    "rejected": {"from": "gpt", "value": "Lyon"},
}


def write_jsonl(path: Path, records: list) -> Path:
    """Write records (dicts, or raw str lines written as they are) one per line."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- formats and file types ---------------------------------------------------------


def test_standard_jsonl(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl", [STANDARD, {**STANDARD, "chosen": "four", "metadata": {"x": 1}}]
    )
    result = read_pairs(path)
    assert result.format == "standard"
    assert result.n_records == 2 and result.issues == []
    assert result.pairs[0] == Pair(0, 1, ({"role": "user", "content": "What is 2+2?"},), "4", "5")
    assert result.pairs[1].chosen == "four" and result.pairs[1].line == 2
    assert result.pairs[0].prompt_text == "What is 2+2?"


def test_hh_rlhf_jsonl_gz(tmp_path):
    path = tmp_path / "d.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(HH) + "\n")
    result = read_pairs(path)
    assert result.format == "hh-rlhf"
    (pair,) = result.pairs
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user"]
    # The extra space after "Assistant:" in the real data is not part of the reply.
    assert pair.chosen == "Why did the chicken cross the road?"
    assert pair.rejected == "No."
    assert pair.prompt_text == "User: Hi\n\nAssistant: Hello!\n\nUser: Tell me a joke"


def test_hh_reply_keeps_inline_human_text(tmp_path):
    # HH replies sometimes contain "Human:" mid-line, written by the sampling model;
    # only a blank line before the speaker starts a turn.
    record = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Sure.  Human: thanks",
        "rejected": "\n\nHuman: Hi\n\nAssistant: No.",
    }
    (pair,) = read_pairs(write_jsonl(tmp_path / "d.jsonl", [record])).pairs
    assert pair.prompt == ({"role": "user", "content": "Hi"},)
    assert pair.chosen == "Sure.  Human: thanks"


def test_conversational_json_array(tmp_path):
    explicit = {
        "prompt": [{"role": "system", "content": "Be kind"}, {"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello"}],
        "rejected": [{"role": "assistant", "content": "Go away"}],
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps([CONVERSATIONAL, explicit]), encoding="utf-8")
    result = read_pairs(path)
    assert result.format == "conversational"
    implicit_pair, explicit_pair = result.pairs
    assert implicit_pair.prompt == ({"role": "user", "content": "Name a colour"},)
    assert (implicit_pair.chosen, implicit_pair.rejected) == ("Blue", "Seven")
    assert explicit_pair.line == 2 and explicit_pair.source_index == 1
    assert explicit_pair.prompt_text == "System: Be kind\n\nUser: Hi"
    assert raw_records(path) == [CONVERSATIONAL, explicit]


def test_conversational_string_prompt_with_reply_only(tmp_path):
    record = {
        "prompt": "Hi",
        "chosen": [{"role": "assistant", "content": "Hello"}],
        "rejected": [{"role": "assistant", "content": "Bye"}],
    }
    (pair,) = read_pairs(write_jsonl(tmp_path / "d.jsonl", [record])).pairs
    assert pair.prompt == ({"role": "user", "content": "Hi"},)


def test_jsonl_saved_as_json(tmp_path):
    path = write_jsonl(tmp_path / "d.json", [STANDARD, STANDARD])
    result = read_pairs(path)
    assert len(result.pairs) == 2 and result.pairs[1].line == 2
    assert [json.loads(raw) for raw in raw_records(path)] == [STANDARD, STANDARD]


def test_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([CONVERSATIONAL, CONVERSATIONAL]), path)
    result = read_pairs(path)
    assert result.format == "conversational"
    assert [(p.source_index, p.line) for p in result.pairs] == [(0, 1), (1, 2)]
    assert result.pairs[0].chosen == "Blue"
    slices = raw_records(path)
    assert len(slices) == 2 and slices[1].to_pylist() == [CONVERSATIONAL]


def test_sharegpt(tmp_path):
    with_strings = {**SHAREGPT, "chosen": "Paris", "rejected": "Marseille"}
    result = read_pairs(write_jsonl(tmp_path / "d.jsonl", [SHAREGPT, with_strings]))
    assert result.format == "sharegpt"
    first, second = result.pairs
    assert first.prompt == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
    )
    assert (first.chosen, first.rejected) == ("Paris", "Lyon")
    assert second.rejected == "Marseille"


@pytest.mark.parametrize(
    "record, expected",
    [
        (STANDARD, "standard"),
        (HH, "hh-rlhf"),
        (CONVERSATIONAL, "conversational"),
        (SHAREGPT, "sharegpt"),
    ],
)
def test_detect_format(record, expected):
    assert detect_format(record) == expected
    assert expected in FORMATS


def test_detect_format_unknown_shape():
    with pytest.raises(ValueError, match="unrecognised record shape"):
        detect_format({"question": "q", "answer": "a"})


# --- bad input -----------------------------------------------------------------------


def test_invalid_json_names_the_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [STANDARD, STANDARD, '{"prompt": "x",'])
    with pytest.raises(IngestError) as raised:
        read_pairs(path)
    assert raised.value.issue.line == 3
    assert str(raised.value).startswith(f"{path}:3: invalid JSON: ")


def test_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [STANDARD, {"prompt": "p", "chosen": "c"}])
    with pytest.raises(IngestError) as raised:
        read_pairs(path)
    assert raised.value.issue == Issue(str(path), 2, "rejected", "missing field", "error")
    assert str(raised.value) == f"{path}:2: field 'rejected': missing field"


def test_wrong_type_names_nested_field(tmp_path):
    bad = {
        "chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}],
        "rejected": CONVERSATIONAL["rejected"],
    }
    result = read_pairs(write_jsonl(tmp_path / "d.jsonl", [CONVERSATIONAL, bad]), skip_invalid=True)
    (issue,) = result.issues
    assert (issue.line, issue.field, issue.message) == (
        2,
        "chosen[1].content",
        "expected string, got number",
    )


def test_empty_reply(tmp_path):
    hh_empty = {**HH, "chosen": HH_PROMPT + "\n\nAssistant: "}
    path = write_jsonl(tmp_path / "d.jsonl", [hh_empty])
    with pytest.raises(IngestError, match=r"d\.jsonl:1: field 'chosen': empty reply"):
        read_pairs(path)
    path = write_jsonl(tmp_path / "s.jsonl", [{**STANDARD, "rejected": "  "}])
    with pytest.raises(IngestError, match="field 'rejected': empty reply"):
        read_pairs(path)


def test_identical_replies_are_skipped_with_a_counted_warning_even_in_strict_mode(tmp_path):
    # UltraFeedback has ties: a pair with chosen == rejected carries no preference, never an error.
    path = write_jsonl(tmp_path / "d.jsonl", [STANDARD, {**STANDARD, "rejected": "4"}, STANDARD])
    result = read_pairs(path)
    assert [p.line for p in result.pairs] == [1, 3] and result.identical == 1 and result.skipped == 0
    (issue,) = result.issues
    assert issue.severity == "warning" and issue.line == 2 and "identical" in issue.message
    assert len(result.pairs) + result.skipped + result.identical == result.n_records
    # every other invalid record still stops a strict run
    bad = write_jsonl(tmp_path / "e.jsonl", [{**STANDARD, "rejected": "4"}, {**STANDARD, "chosen": ""}])
    with pytest.raises(IngestError, match="e.jsonl:2: field 'chosen': empty reply"):
        read_pairs(bad)


def test_conversation_prefix_mismatch_names_field(tmp_path):
    other_prompt = [
        {"role": "user", "content": "Name a number"},
        {"role": "assistant", "content": "Seven"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", [{**CONVERSATIONAL, "rejected": other_prompt}])
    with pytest.raises(IngestError) as raised:
        read_pairs(path)
    assert raised.value.issue.field == "rejected"
    assert "differs from chosen" in raised.value.issue.message


def test_hh_transcript_must_end_with_assistant(tmp_path):
    record = {**HH, "rejected": HH_PROMPT}
    with pytest.raises(
        IngestError, match="field 'rejected': transcript does not end with an Assistant reply"
    ):
        read_pairs(write_jsonl(tmp_path / "d.jsonl", [record]))


def test_non_utf8_byte_names_line_and_later_lines_still_read(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps(STANDARD).encode()
    path.write_bytes(
        good + b"\n" + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n' + good + b"\n"
    )
    with pytest.raises(IngestError) as raised:
        read_pairs(path)
    assert raised.value.issue.line == 2 and "not valid UTF-8" in raised.value.issue.message

    result = read_pairs(path, skip_invalid=True)
    assert [p.line for p in result.pairs] == [1, 3]
    assert [i.line for i in result.issues] == [2]
    # The bad line is still a record: raw_records keeps it so indices stay aligned.
    assert raw_records(path)[2] == good


def test_skip_invalid_counts_add_up_and_blank_lines_are_not_records(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            STANDARD,
            "",
            "not json",
            {"prompt": "p"},
            "   ",
            {**STANDARD, "chosen": ""},
            {**STANDARD, "chosen": "x"},
        ],
    )
    result = read_pairs(path, skip_invalid=True)
    assert result.n_records == 5
    assert result.skipped == 3 == len(result.issues)
    assert len(result.pairs) + result.skipped == result.n_records
    assert [i.line for i in result.issues] == [3, 4, 6]
    assert [(p.source_index, p.line) for p in result.pairs] == [(0, 1), (4, 7)]
    raw = raw_records(path)
    assert len(raw) == result.n_records
    for pair in result.pairs:
        assert json.loads(raw[pair.source_index])["chosen"] == pair.chosen


def test_unknown_first_record_then_detection_from_next(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [["a", "list"], {"question": "q"}, HH])
    result = read_pairs(path, skip_invalid=True)
    assert result.format == "hh-rlhf"
    assert [i.line for i in result.issues] == [1, 2]
    assert "not a JSON object" in result.issues[0].message
    assert len(result.pairs) == 1


def test_explicit_format_mismatch_is_an_error_per_record(tmp_path):
    result = read_pairs(
        write_jsonl(tmp_path / "d.jsonl", [HH, STANDARD]), format="standard", skip_invalid=True
    )
    assert result.format == "standard"
    assert [(i.line, i.field, i.message) for i in result.issues] == [(1, "prompt", "missing field")]
    assert len(result.pairs) == 1


def test_limit_stops_after_that_many_pairs(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [STANDARD, "bad", STANDARD, STANDARD])
    result = read_pairs(path, skip_invalid=True, limit=2)
    assert len(result.pairs) == 2 and result.n_records == 3


def test_file_level_errors(tmp_path):
    with pytest.raises(IngestError, match="file not found"):
        read_pairs(tmp_path / "missing.jsonl")
    (tmp_path / "d.csv").write_text("prompt,chosen,rejected\n")
    with pytest.raises(IngestError, match="unsupported file type"):
        read_pairs(tmp_path / "d.csv")
    with pytest.raises(IngestError, match="unknown format 'dpo'"):
        read_pairs(write_jsonl(tmp_path / "d.jsonl", [STANDARD]), format="dpo")
    (tmp_path / "broken.json").write_text('[{"prompt": "a"},\n {"chosen": ]')
    with pytest.raises(IngestError) as raised:
        list(iter_records(tmp_path / "broken.json"))
    assert raised.value.issue.line == 2 and "invalid JSON" in raised.value.issue.message
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(IngestError, match="cannot read file"):
        read_pairs(tmp_path / "broken.jsonl.gz")


def test_a_file_without_valid_pairs_is_an_error_naming_it(tmp_path):
    # an empty file, blank lines only, an empty array: "0 pairs" used to index with exit 0
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    (tmp_path / "none.json").write_text("[]")
    for name in ("empty.jsonl", "blank.jsonl", "none.json"):
        with pytest.raises(IngestError) as raised:
            read_pairs(tmp_path / name, skip_invalid=True)
        assert raised.value.issue.path.endswith(name) and raised.value.issue.line == 0
    # every record invalid or a tie: skipping them leaves nothing to index, which is no success
    path = write_jsonl(tmp_path / "d.jsonl", [{**STANDARD, "chosen": ""}, {**STANDARD, "rejected": "4"}])
    with pytest.raises(IngestError, match="no valid pairs in 2 records: 1 invalid .*1 with identical"):
        read_pairs(path, skip_invalid=True)


def test_iter_records_yields_parse_errors_in_place(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [STANDARD, "", "{oops"])
    (first, second) = list(iter_records(path))
    assert first == (1, STANDARD)
    assert second[0] == 3 and isinstance(second[1], json.JSONDecodeError)


# --- export support ------------------------------------------------------------------


def test_raw_records_are_the_exact_source_bytes(tmp_path):
    # Spacing, key order, escapes and CRLF endings must survive a write-back unchanged.
    lines = [
        b'{"prompt":"a",  "chosen": "caf\\u00e9", "rejected":"b"}\r',
        b'{"rejected": "y", "chosen": "x", "prompt": "p"}',
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + lines[0] + b"\n\n" + lines[1]
    )  # BOM, blank line, no final newline
    result = read_pairs(path)
    assert [p.line for p in result.pairs] == [1, 3]
    raw = raw_records(path)
    assert raw == [b"\xef\xbb\xbf" + lines[0], lines[1]]
    gz_path = tmp_path / "d.jsonl.gz"
    gz_path.write_bytes(gzip.compress(path.read_bytes()))
    assert raw_records(gz_path) == raw


# --- real data -----------------------------------------------------------------------
# The fixtures (tests/data, drawn from the shared sets by make_fixtures.py) in every format, and
# the whole shared files: their few bad records are only in the whole files.


def assert_round_trip(path: Path, pairs: list[Pair]) -> None:
    raw = raw_records(path)
    records = dict(iter_records(path))
    for pair in pairs:
        assert json.loads(raw[pair.source_index]) == records[pair.line]


def assert_real_pairs(pairs: list[Pair]) -> None:
    for pair in pairs:
        assert pair.prompt and pair.prompt[-1]["role"] == "user"
        assert pair.prompt_text.strip()
        assert pair.chosen.strip() and pair.rejected.strip() and pair.chosen != pair.rejected


def test_real_hh_rlhf():
    result = read_pairs(HH_FILE)
    assert result.format == "hh-rlhf" and len(result.pairs) == result.n_records == 236
    assert_real_pairs(result.pairs)
    assert any(len(p.prompt) > 1 for p in result.pairs)  # multi-turn transcripts are split into turns
    assert_round_trip(HH_FILE, result.pairs)


def test_real_ultrafeedback():
    result = read_pairs(ULTRAFEEDBACK_FILE)
    assert result.format == "standard" and len(result.pairs) == result.n_records == 42
    # Our source_index is the position in the file, not the record's own "source_index".
    assert [p.source_index for p in result.pairs[:3]] == [0, 1, 2]
    assert [json.loads(r)["source_index"] for r in raw_records(ULTRAFEEDBACK_FILE)[:3]] != [0, 1, 2]
    assert_real_pairs(result.pairs)
    assert_round_trip(ULTRAFEEDBACK_FILE, result.pairs)


# Each format fixture holds the first 40 pairs of one source fixture, in another shape or container.
FORMAT_CASES = [
    ("hh-rlhf.jsonl.gz", "hh-rlhf", HH_FILE),
    ("standard.json", "standard", ULTRAFEEDBACK_FILE),
    ("conversational.parquet", "conversational", HH_FILE),
    ("sharegpt.jsonl", "sharegpt", ULTRAFEEDBACK_FILE),
    ("hf-saved", "conversational", HH_FILE),
    ("hf-shards", "standard", ULTRAFEEDBACK_FILE),
]


@pytest.mark.parametrize("name, shape, source", FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
def test_every_format_fixture_reads_the_same_real_pairs(name, shape, source):
    from core.data.hfdata import open_source

    path = FORMAT_FIXTURES / name
    got = read_pairs(open_source(path) or path)
    assert got.format == shape and len(got.pairs) == got.n_records == 40 and not got.issues
    want = read_pairs(source, limit=40).pairs
    assert [p.source_index for p in got.pairs] == list(range(40))
    assert [(p.prompt, p.chosen, p.rejected) for p in got.pairs] == [(p.prompt, p.chosen, p.rejected) for p in want]


@pytest.mark.shared_data  # every record of the whole sets: their bad records are left out of the fixtures
def test_whole_shared_hh_rlhf():
    result = read_pairs(SHARED_HH, skip_invalid=True)
    assert result.format == "hh-rlhf" and result.n_records == 2312
    assert len(result.pairs) + result.skipped == result.n_records and result.skipped > 0
    # The bad records: an empty chosen reply, or rejected's conversation differs before its reply.
    assert {(i.field, i.message) for i in result.issues} == {
        ("chosen", "empty reply"), ("rejected", "conversation before the reply differs from chosen's")}
    assert_real_pairs(result.pairs)
    assert_round_trip(SHARED_HH, result.pairs)


@pytest.mark.shared_data
def test_whole_shared_ultrafeedback():
    result = read_pairs(SHARED_UF, skip_invalid=True)
    assert result.format == "standard" and result.n_records == 1000
    assert len(result.pairs) + result.skipped + result.identical == result.n_records
    assert result.skipped and result.identical  # empty replies; pairs with no preference
    assert all(p.prompt_text.strip() and p.chosen != p.rejected for p in result.pairs)
    assert_round_trip(SHARED_UF, result.pairs)


# --- hostile input: each of these raised a traceback or read wrongly before -------------


def test_deeply_nested_json_is_an_invalid_line_not_a_recursion_error(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    path = write_jsonl(tmp_path / "d.jsonl", [STANDARD, deep, f'{{"prompt": {deep}}}', STANDARD])
    with pytest.raises(IngestError, match=r"d.jsonl:2: invalid JSON: nested too deeply"):
        read_pairs(path)
    result = read_pairs(path, skip_invalid=True)
    assert [i.line for i in result.issues] == [2, 3] and len(result.pairs) == 2
    (tmp_path / "d.json").write_text("[" + deep + "]")
    with pytest.raises(IngestError, match="nested too deeply"):
        read_pairs(tmp_path / "d.json")


def test_huge_integer_literal_is_an_invalid_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [STANDARD, '{"prompt": ' + "9" * 5000 + "}"])
    with pytest.raises(IngestError, match=r"d.jsonl:2: invalid JSON"):
        read_pairs(path)


def test_corrupt_gzip_body_is_one_file_error(tmp_path):
    body = bytearray(gzip.compress(b"".join(json.dumps({**STANDARD, "chosen": "x" * i}).encode() + b"\n"
                                            for i in range(1, 200))))
    body[10] ^= 0xFF  # breaks the deflate stream: zlib.error, not OSError
    (tmp_path / "d.jsonl.gz").write_bytes(bytes(body))
    with pytest.raises(IngestError, match="cannot read file: corrupt gzip data") as raised:
        read_pairs(tmp_path / "d.jsonl.gz", skip_invalid=True)
    assert raised.value.issue.line == 0
    whole = gzip.compress(b"".join(json.dumps(STANDARD).encode() + b"\n" for _ in range(2000)))
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) - 20])
    with pytest.raises(IngestError, match="truncated gzip file"):
        read_pairs(tmp_path / "cut.jsonl.gz", skip_invalid=True)


def test_lone_surrogate_is_rejected_at_ingestion_naming_the_field(tmp_path):
    # it used to pass ingestion and crash the tokenizer; --skip-invalid could not skip it
    conv = json.loads(json.dumps(CONVERSATIONAL))
    conv["rejected"][1]["content"] = "Sev\ud800en"
    path = write_jsonl(tmp_path / "d.jsonl", [CONVERSATIONAL, conv, CONVERSATIONAL])
    assert "\\ud800" in path.read_text()
    with pytest.raises(IngestError, match=r"d.jsonl:2: field 'rejected\[1\].content': lone surrogate U\+D800"):
        read_pairs(path)
    result = read_pairs(path, skip_invalid=True)
    assert [p.line for p in result.pairs] == [1, 3] and [i.line for i in result.issues] == [2]
    hh = write_jsonl(tmp_path / "h.jsonl", [{**HH, "chosen": HH["chosen"] + "\udfff"}])
    with pytest.raises(IngestError, match=r"h.jsonl:1: field 'chosen': lone surrogate U\+DFFF"):
        read_pairs(hh)


def test_format_comes_from_the_first_valid_record(tmp_path):
    # an invalid first record used to fix the format, and every valid record after it was skipped
    path = write_jsonl(tmp_path / "d.jsonl", [{**STANDARD, "chosen": ""}, SHAREGPT, SHAREGPT])
    result = read_pairs(path, skip_invalid=True)
    assert result.format == "sharegpt" and [p.line for p in result.pairs] == [2, 3]
    assert [(i.line, i.field, i.message) for i in result.issues] == [(1, "chosen", "empty reply")]
    # a valid record of another format after the first valid one is named as such
    mixed = write_jsonl(tmp_path / "m.jsonl", [STANDARD, SHAREGPT])
    with pytest.raises(IngestError, match=r"m.jsonl:2: a valid sharegpt pair, but this file is standard \(from its first valid record, line 1\)"):
        read_pairs(mixed)


def test_json_array_after_much_leading_whitespace_is_still_an_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(" \n" * 3000 + json.dumps([STANDARD, {**STANDARD, "chosen": "x"}]))
    result = read_pairs(path)
    assert result.format == "standard" and [p.line for p in result.pairs] == [1, 2]
    assert len(raw_records(path)) == 2


def test_inputs_that_are_not_readable_files(tmp_path):
    (tmp_path / "dir.jsonl").mkdir()
    (tmp_path / "loop.jsonl").symlink_to(tmp_path / "loop.jsonl")
    (tmp_path / "dangling.jsonl").symlink_to(tmp_path / "gone.jsonl")
    (tmp_path / "utf16.jsonl").write_bytes(json.dumps(STANDARD).encode("utf-16"))
    cases = {
        "dir.jsonl": "is a directory", "loop.jsonl": "cannot open: Too many levels of symbolic links",
        "dangling.jsonl": "broken symbolic link", "utf16.jsonl": "UTF-16 text",
    }
    for name, message in cases.items():
        with pytest.raises(IngestError, match=message) as raised:
            read_pairs(tmp_path / name, skip_invalid=True)
        assert raised.value.issue.line == 0


def test_limit_below_one_is_a_usage_error(tmp_path):
    from core.errors import UsageError

    with pytest.raises(UsageError, match="limit 0"):
        read_pairs(write_jsonl(tmp_path / "d.jsonl", [STANDARD]), limit=0)
