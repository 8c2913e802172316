"""Hostile input through the real CLI: hundreds of generated malformed files, each must give exit 2
and exactly one line `datadebug: error: FILE:LINE: field 'F': why` (LINE 0 only for a problem of
the whole file, no field for a problem of the whole record), never a traceback, and never load a
model. Most cases run in-process through the Typer app; a handful through a real process.

The kinds follow the reliability run: wrong types and missing values at every field of every
format, lone surrogates, invalid and truncated JSON, non-UTF-8 bytes, deep nesting, huge numbers,
BOMs, CRLF, NUL and control bytes, huge lines, JSON arrays and Parquet with wrong shapes, corrupt
and truncated gzip and Parquet, empty files, directories, symlink loops, FIFOs and other non-files.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest
import pyarrow.parquet as pq
import typer
from click.testing import CliRunner

from core.cli import app
from core.data.textsafe import visible

STANDARD = {"prompt": "What is 2+2?", "chosen": "It is 4.", "rejected": "Five."}
CONVERSATIONAL = {
    "chosen": [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue"}],
    "rejected": [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Seven"}],
}
CONV_PROMPT = {
    "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    "chosen": [{"role": "assistant", "content": "Hello."}],
    "rejected": [{"role": "assistant", "content": "Go away."}],
}
HH = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello, how can I help?",
      "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
SHAREGPT = {
    "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Capital of France?"}],
    "chosen": {"from": "gpt", "value": "Paris"},
    "rejected": {"from": "gpt", "value": "Lyon"},
}
BASES = {"standard": STANDARD, "conversational": CONVERSATIONAL, "conv-prompt": CONV_PROMPT,
         "hh": HH, "sharegpt": SHAREGPT}
ANY = -1  # a line the test cannot know in advance (where a corrupt stream stops); must still be >= 0


@dataclass
class Case:
    name: str  # the file name (its suffix picks the reader)
    content: bytes | None  # None: `make` builds the path itself
    line: int  # expected line (0: the whole file; ANY: some line >= 0)
    field: str  # expected field ("": the whole record or file)
    message: str = ""  # a substring the message must hold
    args: tuple[str, ...] = ()
    make: object = None  # callable(path) for files that are not plain bytes


def jsonl(records: list, crlf: bool = False, blank_every: int = 0) -> bytes:
    lines = []
    for i, r in enumerate(records):
        if blank_every and i and i % blank_every == 0:
            lines.append("")
        lines.append(r if isinstance(r, str) else json.dumps(r))
    end = "\r\n" if crlf else "\n"
    return (end.join(lines) + end).encode("utf-8", "surrogatepass")


def leaves(record, path=""):
    """(field path as ingestion names it, value) for every leaf and container of a record."""
    if isinstance(record, dict):
        for k, v in record.items():
            p = f"{path}.{k}" if path else k
            yield p, v
            yield from leaves(v, p)
    elif isinstance(record, list):
        for i, v in enumerate(record):
            p = f"{path}[{i}]"
            yield p, v
            yield from leaves(v, p)


def set_at(record, path: str, value):
    """A deep copy of `record` with the field at `path` ("chosen[1].content") set (or deleted when
    value is DELETE)."""
    out = copy.deepcopy(record)
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    node = out
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node[part]
    last = parts[-1]
    key = int(last[1:-1]) if last.startswith("[") else last
    if value is DELETE:
        del node[key]
    else:
        node[key] = value
    return out


DELETE = object()
WRONG = [0, 1.5, None, True, [], {}, ["x"], {"a": 1}]


def type_of(v) -> str:
    return {str: "string", list: "list", dict: "object", bool: "boolean", type(None): "null"}.get(type(v), "number")


def field_cases() -> list[Case]:
    """Wrong types, missing fields and lone surrogates at every field of every format, each in a file
    whose earlier valid records fix its format, written as JSONL, CRLF JSONL, gzip and JSON array."""
    cases = []
    expected_type = {  # what ingestion accepts at each path, by format
        "standard": {"prompt": "string", "chosen": "string", "rejected": "string"},
        "conversational": {"chosen": "list", "rejected": "list", "chosen[0]": "object", "chosen[1]": "object",
                           "rejected[0]": "object", "rejected[1]": "object",
                           "chosen[0].role": "string", "chosen[0].content": "string",
                           "chosen[1].role": "string", "chosen[1].content": "string",
                           "rejected[0].role": "string", "rejected[0].content": "string",
                           "rejected[1].role": "string", "rejected[1].content": "string"},
        "conv-prompt": {"prompt[0]": "object", "prompt[1]": "object", "prompt[0].role": "string",
                        "prompt[1].content": "string", "chosen[0]": "object", "chosen[0].content": "string",
                        "rejected[0].role": "string", "rejected[0].content": "string"},
        "hh": {"chosen": "string", "rejected": "string"},
        "sharegpt": {"conversations": "list", "conversations[0]": "object", "conversations[1]": "object",
                     "conversations[0].from": "string", "conversations[1].value": "string",
                     "chosen.value": "string", "rejected.from": "string", "rejected.value": "string"},
    }
    n = 0
    for fmt, paths in expected_type.items():
        base = BASES[fmt]
        for path, wanted in paths.items():
            for bad in WRONG:
                if type_of(bad) == wanted or (wanted == "string" and bad is None and path.endswith("]")):
                    continue
                rec = set_at(base, path, bad)
                n += 1
                before = n % 3 + 1  # valid records ahead of the bad one
                records = [base] * before + [rec, base]
                kind = n % 4
                if kind == 3:  # JSON array: the record number is the line
                    cases.append(Case(f"type-{n}.json", json.dumps(records, indent=None).encode(),
                                      before + 1, path, "expected"))
                else:
                    data = jsonl(records, crlf=kind == 1)
                    if kind == 2:
                        cases.append(Case(f"type-{n}.jsonl.gz", gzip.compress(data), before + 1, path, "expected"))
                    else:
                        cases.append(Case(f"type-{n}.jsonl", data, before + 1, path, "expected"))
            # missing field (a top-level or message key)
            if "[" not in path or path.count(".") == 1 and not path.endswith("]"):
                rec = set_at(base, path, DELETE)
                if fmt == "conversational" and path.startswith(("chosen[", "rejected[")):
                    continue  # deleting a key of a message leaves a message without it: covered below
                cases.append(Case(f"missing-{fmt}-{path}.jsonl", jsonl([base, rec]), 2, path, "missing field"))
        # lone surrogates in every string leaf
        for i, (path, value) in enumerate(leaves(base)):
            if isinstance(value, str):
                for s in ("\ud800", "\udfff", "\udbff\udbff"):
                    rec = set_at(base, path, value[:3] + s + value[3:])
                    cases.append(Case(f"surrogate-{fmt}-{i}-{ord(s[0]):x}.jsonl", jsonl([base, base, rec]), 3,
                                      path, "lone surrogate"))
    return cases


def value_cases() -> list[Case]:
    """Values of the right type that still make no pair."""
    c = []
    # blanks: whitespace, and characters that show nothing (zero-width space, joiners, word joiner, BOM)
    for i, blank in enumerate(("", " ", "\n\t ", "\u00a0", "\u200b", "\u200b\u200c\u200d", " \u2060\ufeff ")):
        c.append(Case(f"empty-chosen-{i}.jsonl", jsonl([STANDARD, {**STANDARD, "chosen": blank}]), 2, "chosen", "empty reply"))
        c.append(Case(f"empty-rejected-{i}.jsonl", jsonl([STANDARD, {**STANDARD, "rejected": blank}]), 2, "rejected", "empty reply"))
        c.append(Case(f"empty-prompt-{i}.jsonl", jsonl([STANDARD, {**STANDARD, "prompt": blank}]), 2, "prompt", "empty prompt"))
    conv = CONVERSATIONAL
    c += [
        Case("conv-role.jsonl", jsonl([conv, set_at(conv, "chosen[0].role", "wizard")]), 2, "chosen[0].role", "unknown role"),
        Case("conv-reply-role.jsonl", jsonl([conv, set_at(conv, "chosen[1].role", "user")]), 2, "chosen[1]", "not from the assistant"),
        Case("conv-empty.jsonl", jsonl([conv, set_at(conv, "chosen", [])]), 2, "chosen", "empty reply"),
        Case("conv-prefix.jsonl", jsonl([conv, set_at(conv, "rejected[0].content", "Other")]), 2, "rejected", "differs"),
        Case("conv-context-differs.jsonl", jsonl([conv, set_at(conv, "chosen[0].role", "system")]), 2, "rejected", "differs"),
        Case("conv-prompt-type.jsonl", jsonl([conv, {**conv, "prompt": 7}]), 2, "prompt", "expected list or string"),
        Case("conv-prompt-str.jsonl", jsonl([conv, {**conv, "prompt": "unrelated"}]), 2, "prompt", "differs"),
        Case("conv-no-content.jsonl", jsonl([conv, set_at(conv, "chosen[1].content", DELETE)]), 2, "chosen[1].content", "missing field"),
        Case("conv-no-role.jsonl", jsonl([conv, set_at(conv, "rejected[1].role", DELETE)]), 2, "rejected[1].role", "missing field"),
        Case("convp-system-only.jsonl", jsonl([CONV_PROMPT, set_at(CONV_PROMPT, "prompt", [{"role": "system", "content": "x"}])]), 2, "prompt", "no user message"),
        Case("hh-before.jsonl", jsonl([HH, {**HH, "chosen": "Intro\n\nHuman: Hi\n\nAssistant: x"}]), 2, "chosen", "text before"),
        Case("hh-no-reply.jsonl", jsonl([HH, {**HH, "rejected": "\n\nHuman: Hi"}]), 2, "rejected", "does not end"),
        Case("hh-other-prompt.jsonl", jsonl([HH, {**HH, "rejected": "\n\nHuman: Bye\n\nAssistant: x"}]), 2, "rejected", "differs"),
        Case("hh-no-human.jsonl", jsonl([HH, {"chosen": "\n\nAssistant: a", "rejected": "\n\nAssistant: b"}]), 2, "chosen", "no user message"),
        Case("sg-empty.jsonl", jsonl([SHAREGPT, {**SHAREGPT, "conversations": []}]), 2, "conversations", "no user message"),
        Case("sg-reply-human.jsonl", jsonl([SHAREGPT, set_at(SHAREGPT, "chosen.from", "human")]), 2, "chosen", "not from the assistant"),
        Case("sg-speaker.jsonl", jsonl([SHAREGPT, set_at(SHAREGPT, "conversations[1].from", "alien" * 50)]), 2, "conversations[1].from", "unknown role"),
        Case("sg-chosen-list.jsonl", jsonl([SHAREGPT, {**SHAREGPT, "chosen": ["Paris"]}]), 2, "chosen", "expected object or string"),
        Case("sg-chosen-nokey.jsonl", jsonl([SHAREGPT, {**SHAREGPT, "chosen": {"from": "gpt"}}]), 2, "chosen.value", "missing field"),
        Case("first-invalid.jsonl", jsonl([{**STANDARD, "chosen": ""}, SHAREGPT]), 1, "chosen", "empty reply"),
        Case("mixed-formats.jsonl", jsonl([STANDARD, SHAREGPT]), 2, "", "valid sharegpt pair, but this file is standard"),
        Case("format-given.jsonl", jsonl([HH]), 1, "prompt", "missing field", args=("--format", "standard")),
    ]
    return c


def line_cases() -> list[Case]:
    """Lines that are not JSON, not UTF-8, not objects, or too deep / too big for Python."""
    good = json.dumps(STANDARD)
    c = []
    for cut in range(1, len(good) - 1, 4):  # truncated lines
        c.append(Case(f"cut-{cut}.jsonl", jsonl([STANDARD, good[:cut], STANDARD]), 2, "", "invalid JSON"))
    broken = {
        "trailing": good + " x", "two": good + good, "single-quotes": good.replace('"', "'"),
        "comment": good + " // c", "trailing-comma": good[:-1] + ",}", "unquoted": "{prompt: 1}",
        "nul-outside": good[:-1] + "\x00}", "nul-inside": good.replace("2+2", "2\x00+2"),
        "esc-inside": good.replace("2+2", "2\x1b[2J+2"), "bel-inside": good.replace("2+2", "\x07"),
        "deep": "[" * 5000 + "]" * 5000, "deep-field": '{"prompt": ' + "[" * 5000 + "]" * 5000 + "}",
        "deep-object": '{"a":' * 3000 + "1" + "}" * 3000, "huge-int": '{"prompt": ' + "7" * 5000 + "}",
        "lone-brace": "{", "lone-bracket": "]", "ellipsis": "...", "bom-mid": "\ufeff" + good,
    }
    for name, text in broken.items():
        c.append(Case(f"broken-{name}.jsonl", jsonl([STANDARD, STANDARD, text]), 3, "", "invalid JSON"))
    for name, text in {"array": "[1, 2]", "number": "42", "string": '"text"', "null": "null", "true": "true",
                       "float": "1e999"}.items():
        c.append(Case(f"not-object-{name}.jsonl", jsonl([STANDARD, text]), 2, "", "not a JSON object"))
    c.append(Case("unknown-shape.jsonl", jsonl([{"question": "q", "\x1b]0;title\x07": "a"}]), 1, "", "unrecognised record shape"))
    c.append(Case("unknown-shape-many-keys.jsonl", jsonl([{f"k{i}" * 20: i for i in range(40)}]), 1, "", "40 keys"))
    raw = good.encode()
    for i, bad in enumerate((b"\xff", b"\xfe", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe9", b"\x80", b"\xf8\x88\x80\x80\x80")):
        at = raw.index(b"2+2")
        line = raw[:at] + bad + raw[at:]
        data = jsonl([STANDARD]) + line + b"\n" + jsonl([STANDARD])
        c.append(Case(f"non-utf8-{i}.jsonl", data, 2, "", "not valid UTF-8"))
    # BOM on line 1 is fine, then a bad record; CRLF keeps line numbers
    c.append(Case("bom-then-bad.jsonl", b"\xef\xbb\xbf" + jsonl([STANDARD, {**STANDARD, "chosen": 1}]), 2, "chosen", "expected string"))
    c.append(Case("bom-only-bad.jsonl", b"\xef\xbb\xbf" + jsonl([{**STANDARD, "rejected": 5}]), 1, "rejected", "expected string"))
    crlf = jsonl([STANDARD] * 5 + [{**STANDARD, "prompt": None}], crlf=True, blank_every=2)
    c.append(Case("crlf-blank.jsonl", crlf, crlf.split(b"\r\n").index(json.dumps({**STANDARD, "prompt": None}).encode()) + 1,
                  "prompt", "expected string"))
    c.append(Case("cr-only.jsonl", (good + "\r" + good + "\r").encode(), 1, "", "invalid JSON"))
    # huge lines: a 3 MB unterminated string, a 3 MB value of the wrong type
    c.append(Case("huge-broken.jsonl", jsonl([STANDARD]) + b'{"prompt": "' + b"a" * 3_000_000 + b"\n", 2, "", "invalid JSON"))
    c.append(Case("huge-wrong.jsonl", jsonl([STANDARD, {**STANDARD, "chosen": ["a" * 3_000_000]}]), 2, "chosen", "expected string"))
    return c


def write_parquet(columns: dict) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    return buf.getvalue()


def container_cases() -> list[Case]:
    """JSON arrays and Parquet with wrong shapes; broken containers."""
    c = []
    arr = json.dumps([STANDARD, STANDARD, {**STANDARD, "rejected": 3}], indent=1).encode()
    c.append(Case("array-type.json", arr, 3, "rejected", "expected string"))
    c.append(Case("array-spaces.json", b" " * 6000 + arr, 3, "rejected", "expected string"))
    c.append(Case("array-bom-newlines.json", b"\xef\xbb\xbf" + b"\n" * 5000 + arr, 3, "rejected", "expected string"))
    c.append(Case("array-not-objects.json", b"[1, 2]", 1, "", "not a JSON object"))
    c.append(Case("array-nested.json", b"[[" + json.dumps(STANDARD).encode() + b"]]", 1, "", "not a JSON object"))
    for cut in (1, 20, len(arr) // 2, len(arr) - 3):
        c.append(Case(f"array-cut-{cut}.json", arr[:cut], ANY, "", "invalid JSON"))
    c.append(Case("array-deep.json", b"[" * 5000 + b"]" * 5000, 0, "", "nested too deeply"))
    c.append(Case("array-huge-int.json", b"[" + b"1" * 5000 + b"]", 0, "", "invalid JSON"))
    c.append(Case("array-non-utf8.json", b'[\n{"prompt": "caf\xe9"}]', 2, "", "not valid UTF-8"))
    c.append(Case("object.json", json.dumps(STANDARD, indent=2).encode(), 1, "", "invalid JSON"))
    c.append(Case("object-one-line.json", json.dumps({"data": [STANDARD]}).encode(), 1, "", "unrecognised record shape"))
    n = 3
    pq_cases = {
        "int-chosen": ({"prompt": ["p"] * n, "chosen": [1] * n, "rejected": ["r"] * n}, "chosen", "expected string"),
        "null-rejected": ({"prompt": ["p"] * n, "chosen": ["c"] * n, "rejected": pa.array([None] * n, pa.string())}, "rejected", "expected string"),
        "bytes-prompt": ({"prompt": [b"p"] * n, "chosen": ["c"] * n, "rejected": ["r"] * n}, "prompt", "got bytes"),
        "list-int-chosen": ({"chosen": [[1, 2]] * n, "rejected": [[3]] * n}, "chosen[0]", "expected object"),
        "struct-no-role": ({"chosen": [[{"content": "x"}]] * n, "rejected": [[{"content": "y"}]] * n}, "chosen[0].role", "missing field"),
        "role-int": ({"chosen": [[{"role": 1, "content": "x"}]] * n, "rejected": [[{"role": 1, "content": "y"}]] * n}, "chosen[0].role", "expected string"),
        "no-columns-we-know": ({"question": ["q"] * n, "answer": ["a"] * n}, "", "unrecognised record shape"),
        "empty-chosen": ({"prompt": ["p"] * n, "chosen": [""] * n, "rejected": ["r"] * n}, "chosen", "empty reply"),
        "sharegpt-from-int": ({"conversations": [[{"from": 1, "value": "x"}]] * n, "chosen": ["c"] * n, "rejected": ["r"] * n}, "conversations[0].from", "expected string"),
    }
    for name, (cols, field, msg) in pq_cases.items():
        c.append(Case(f"pq-{name}.parquet", write_parquet(cols), 1, field, msg))
    good_pq = write_parquet({k: [v] * 50 for k, v in STANDARD.items()})
    c.append(Case("pq-zero-rows.parquet", write_parquet({k: pa.array([], pa.string()) for k in STANDARD}), 0, "", "no records"))
    c.append(Case("pq-garbage.parquet", b"PAR1" + os.urandom(200), 0, "", "cannot read Parquet"))
    c.append(Case("pq-text.parquet", jsonl([STANDARD]), 0, "", "cannot read Parquet"))
    for cut in (10, len(good_pq) // 2, len(good_pq) - 5):
        c.append(Case(f"pq-cut-{cut}.parquet", good_pq[:cut], 0, "", "cannot read Parquet"))
    return c


def gzip_cases() -> list[Case]:
    body = b"".join(json.dumps({**STANDARD, "chosen": f"reply {i} " * (i % 7 + 1)}).encode() + b"\n" for i in range(400))
    whole = gzip.compress(body)
    c = [Case("gz-not-gzip.jsonl.gz", body, 0, "", "cannot read file"),
         Case("gz-empty-content.jsonl.gz", gzip.compress(b""), 0, "", "no records"),
         Case("gz-blank-content.jsonl.gz", gzip.compress(b"\n\n"), 0, "", "no records")]
    for i, pos in enumerate(range(10, len(whole) - 8, max(1, (len(whole) - 18) // 24))):
        b = bytearray(whole)
        b[pos] ^= 0xFF
        c.append(Case(f"gz-corrupt-{i}.jsonl.gz", bytes(b), ANY, "", "cannot read file"))
    for i, cut in enumerate((11, 30, len(whole) // 3, len(whole) // 2, len(whole) - 30, len(whole) - 4)):
        c.append(Case(f"gz-cut-{i}.jsonl.gz", whole[:cut], ANY, "", "gzip"))
    c.append(Case("gz-trailing-garbage.jsonl.gz", whole + b"garbage!", ANY, "", "cannot read file"))
    # --limit stops reading early, but the container is checked in full: a flipped byte late in the
    # stream, a cut trailer (CRC, length) or trailing garbage fails even when the first pair is fine
    late = bytearray(whole)
    late[len(whole) - 40] ^= 0xFF
    crc = bytearray(whole)
    crc[-6] ^= 0xFF
    for name, data in (("late-flip", bytes(late)), ("bad-crc", bytes(crc)), ("no-trailer", whole[:-8]),
                       ("half-trailer", whole[:-3]), ("trailing-garbage", whole + b"garbage!")):
        c.append(Case(f"gz-limit-{name}.jsonl.gz", data, ANY, "", "", args=("--limit", "1")))
    return c


def file_cases() -> list[Case]:
    """Problems of the whole file (line 0), also with --skip-invalid."""
    def directory(p: Path):
        p.mkdir()

    def loop(p: Path):
        p.symlink_to(p)

    def dangling(p: Path):
        p.symlink_to(p.with_name("nowhere.jsonl"))

    def fifo(p: Path):
        os.mkfifo(p)

    c = [
        Case("zero.jsonl", b"", 0, "", "empty file"), Case("zero.json", b"", 0, "", "empty file"),
        Case("zero.parquet", b"", 0, "", "empty file"), Case("zero.jsonl.gz", b"", 0, "", "empty file"),
        Case("blank.jsonl", b"\n  \n\t\n", 0, "", "no records"), Case("spaces.json", b" " * 9000, 0, "", "no records"),
        Case("empty-array.json", b" " * 5000 + b"[]", 0, "", "no records"),
        Case("dir.jsonl", None, 0, "", "is a directory", make=directory),
        Case("loop.jsonl", None, 0, "", "symbolic links", make=loop),
        Case("dangling.jsonl", None, 0, "", "broken symbolic link", make=dangling),
        Case("fifo.jsonl", None, 0, "", "not a regular file", make=fifo),
        Case("data.csv", b"prompt,chosen,rejected\n", 0, "", "unsupported file type"),
        Case("data.txt", jsonl([STANDARD]), 0, "", "unsupported file type"),
        Case("data", jsonl([STANDARD]), 0, "", "unsupported file type"),
        Case("data.jsonl.bz2", jsonl([STANDARD]), 0, "", "unsupported file type"),
        Case("utf16le.jsonl", json.dumps(STANDARD).encode("utf-16"), 0, "", "UTF-16"),
        Case("utf16be.jsonl", b"\xfe\xff" + json.dumps(STANDARD).encode("utf-16-be"), 0, "", "UTF-16"),
        Case("unknown-format.jsonl", jsonl([STANDARD]), 0, "", "unknown format", args=("--format", "alpaca")),
        Case("all-identical.jsonl", jsonl([{**STANDARD, "rejected": STANDARD["chosen"]}] * 3), 0, "", "3 with identical replies"),
        Case("all-invalid.jsonl", jsonl(["nope", {"prompt": 1}]), 0, "", "no valid pairs in 2 records", args=("--skip-invalid",)),
        Case("esc-\x1b[2J-\u202ename.jsonl", jsonl([STANDARD, "{"]), 2, "", "invalid JSON"),
    ]
    # the same file-level problems stop a --skip-invalid run too
    c += [Case(x.name.replace(".", "-skip.", 1), x.content, x.line, x.field, x.message, ("--skip-invalid",), x.make)
          for x in c if x.line == 0 and not x.args and x.name not in ("data",)]
    return c


def all_cases() -> list[Case]:
    cases = field_cases() + value_cases() + line_cases() + container_cases() + gzip_cases() + file_cases()
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    return cases


ERROR = re.compile(r"^datadebug: error: (?P<rest>.*)$")
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def check(case: Case, path: Path, code: int, stdout: str, stderr: str) -> str | None:
    """None when the CLI answered as it must, else why not."""
    if code != 2:
        return f"exit {code}"
    if "Traceback" in stdout + stderr:
        return "traceback"
    lines = stderr.splitlines()
    if len(lines) != 1 or stdout:
        return f"{len(lines)} lines on stderr, {len(stdout)} chars on stdout"
    if RAW_CONTROL.search(stderr.rstrip("\n")):
        return "raw control character on stderr"
    m = ERROR.match(lines[0])
    if not m:
        return "not a datadebug error line"
    rest = m["rest"]
    shown = visible(str(path))
    if not rest.startswith(shown):
        return "does not name the file"
    rest = rest[len(shown):]
    loc = re.match(r"^(?::(\d+))?: (?:field '([^']*)': )?", rest)
    line = int(loc[1]) if loc[1] else 0
    field = loc[2] or ""
    if case.line == ANY:
        if line < 0:
            return f"line {line}"
    elif line != case.line:
        return f"line {line}, expected {case.line}"
    if field != case.field:
        return f"field {field!r}, expected {case.field!r}"
    if case.message not in rest:
        return f"message lacks {case.message!r}"
    return None


def materialise(case: Case, folder: Path) -> Path:
    path = folder / case.name
    if case.make is not None:
        case.make(path)
    else:
        path.write_bytes(case.content)
    return path


def test_hundreds_of_malformed_files_each_give_one_line_naming_file_line_and_field(tmp_path):
    cases = all_cases()
    assert len(cases) >= 300, len(cases)
    runner, command = CliRunner(), typer.main.get_command(app)  # built once: typer rebuilds it per invoke
    ws = tmp_path / "ws"
    failures = []
    for i, case in enumerate(cases):
        folder = tmp_path / f"c{i}"
        folder.mkdir()
        path = materialise(case, folder)
        r = runner.invoke(command, ["index", str(path), "-w", str(ws), *case.args])
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            failures.append(f"{case.name}: {type(r.exception).__name__}: {r.exception}")
            continue
        why = check(case, path, r.exit_code, r.stdout, r.stderr)
        if why:
            failures.append(f"{case.name}: {why}: {r.stderr.strip()[:300]!r}")
    assert not ws.exists(), "an ingestion error created the workspace"
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures[:30])


def test_errors_as_json_are_one_object_on_stdout(tmp_path):
    runner, command = CliRunner(), typer.main.get_command(app)
    cases = [c for c in all_cases() if c.name in ("broken-deep.jsonl", "gz-corrupt-0.jsonl.gz", "dir.jsonl",
                                                  "surrogate-hh-0-d800.jsonl", "esc-\x1b[2J-\u202ename.jsonl")]
    assert len(cases) == 5
    for i, case in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        path = materialise(case, tmp_path / str(i))
        r = runner.invoke(command, ["index", str(path), "-w", str(tmp_path / "ws"), "--json"])
        assert r.exit_code == 2 and r.stderr == "" and len(r.stdout.splitlines()) == 1, r.output
        assert not RAW_CONTROL.search(r.stdout)
        out = json.loads(r.stdout)
        assert out["type"] == "IngestError" and out["error"].startswith(str(path)), out


@pytest.mark.slow(16)  # 16 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_a_real_process_answers_in_one_line_before_importing_torch(tmp_path):
    """A handful through `python -m core.cli`: exit 2, one line, no traceback, and torch (whose import
    alone takes seconds) never imported: bad input is refused before any model work."""
    probe = (
        "import atexit, runpy, sys\n"
        "atexit.register(lambda: 'torch' in sys.modules and sys.stderr.write('torch was imported\\n'))\n"
        "sys.argv = ['datadebug', *sys.argv[1:]]\n"
        "runpy.run_module('core.cli', run_name='__main__')\n"
    )
    wanted = ("broken-deep.jsonl", "gz-corrupt-3.jsonl.gz", "surrogate-standard-0-d800.jsonl",
              "zero.jsonl", "pq-int-chosen.parquet", "first-invalid.jsonl")
    cases = [c for c in all_cases() if c.name in wanted]
    assert len(cases) == len(wanted)
    root = Path(__file__).resolve().parents[2]
    for i, case in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        path = materialise(case, tmp_path / str(i))
        r = subprocess.run([sys.executable, "-c", probe, "index", str(path), "-w", str(tmp_path / "ws")],
                           capture_output=True, text=True, timeout=120, cwd=root)
        why = check(case, path, r.returncode, r.stdout, r.stderr)
        assert why is None, f"{case.name}: {why}: {r.stderr[-2000:]}"


# -- export that cannot destroy ----------------------------------------------------------------------
# Each case: the CLI refuses in one line (exit 2) and every file that was there before (the source,
# the user's own files, links, pipes, device nodes) is byte- and kind-identical afterwards.


def snapshot(*paths: Path) -> dict:
    """What each path is now: its bytes, where a link points, or the kind of a special file."""
    out = {}
    for p in paths:
        if p.is_symlink():
            out[p] = ("link", os.readlink(p))
        elif not os.path.lexists(p):
            out[p] = None
        else:
            st = p.lstat()
            if os.path.isfile(p):
                out[p] = ("file", p.read_bytes())
            else:
                out[p] = ("special", st.st_mode, st.st_rdev)
    return out


def export_refused(ws: Path, out: Path, *extra: str, watch: tuple[Path, ...] = (), message: str = ""):
    """Run `export --out OUT`; assert exit 2, one error line holding `message`, and that `watch`,
    `out`, its manifest and the source are exactly as before."""
    from core.data.workspace import Workspace

    source = Path(Workspace(ws).meta()["dataset"])
    manifest = out.with_name(out.name + ".removed.jsonl")
    paths = (source, out, manifest, *watch)
    before = snapshot(*paths)
    r = CliRunner().invoke(typer.main.get_command(app), ["export", "-w", str(ws), "--out", str(out), *extra])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert r.exit_code == 2, (r.exit_code, r.output)
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("datadebug: error: "), r.stderr
    assert message in r.stderr, r.stderr
    assert not RAW_CONTROL.search(r.stderr.rstrip("\n"))
    assert snapshot(*paths) == before, "an export that was refused changed a file"
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name], "temporary files left behind"


def export_ws(tmp_path: Path, source_name: str = "data.jsonl") -> Path:
    from core.data.marks import Marks
    from core.data.workspace import file_sha256
    from tests.unit.test_crash_safety import triage_workspace

    ws = triage_workspace(tmp_path)
    src = Path(ws.meta()["dataset"])
    if source_name != src.name:
        src = src.rename(src.with_name(source_name))
        ws.write_meta({"dataset": str(src), "dataset_sha256": file_sha256(src)})
    Marks(ws).mark([0, 4], reason="r")
    return ws.path


def test_export_never_writes_its_manifest_over_the_source(tmp_path):
    """The reliability run: a source named clean.jsonl.removed.jsonl, exported to clean.jsonl, lost
    29 of its 30 lines to the manifest."""
    ws = export_ws(tmp_path, "clean.jsonl.removed.jsonl")
    for extra in ((), ("--overwrite",)):
        export_refused(ws, tmp_path / "clean.jsonl", *extra, message="source dataset")
    assert not (tmp_path / "clean.jsonl").exists()


def test_export_never_replaces_the_source_however_it_is_named(tmp_path):
    ws = export_ws(tmp_path)
    src = tmp_path / "data.jsonl"
    (tmp_path / "sub").mkdir()
    (tmp_path / "link-dir").symlink_to(tmp_path)
    hard = tmp_path / "hard.jsonl"
    os.link(src, hard)
    for out in (src, tmp_path / "sub" / ".." / "data.jsonl", tmp_path / "link-dir" / "data.jsonl", hard):
        for extra in ((), ("--overwrite",)):
            export_refused(ws, out, *extra, message="source dataset" if extra else "")


def test_export_keeps_an_existing_manifest_without_overwrite(tmp_path):
    ws = export_ws(tmp_path)
    mine = tmp_path / "clean.jsonl.removed.jsonl"
    mine.write_bytes(b"my own notes\n")
    export_refused(ws, tmp_path / "clean.jsonl", message="pass --overwrite")
    assert not (tmp_path / "clean.jsonl").exists()
    # with --overwrite both are replaced, as asked
    r = CliRunner().invoke(typer.main.get_command(app),
                           ["export", "-w", str(ws), "--out", str(tmp_path / "clean.jsonl"), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert mine.read_bytes() != b"my own notes\n" and b'"source_index": 0' in mine.read_bytes()


def test_export_never_replaces_a_pipe_or_a_device(tmp_path):
    ws = export_ws(tmp_path)
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    outs = [(fifo, fifo), (tmp_path / "x.jsonl", tmp_path / "x.jsonl.removed.jsonl")]
    os.mkfifo(outs[1][1])
    if os.geteuid() == 0:  # only root may make a device node: a copy of /dev/null, here in tmp
        node = tmp_path / "null.jsonl"
        os.mknod(node, 0o666 | __import__("stat").S_IFCHR, os.makedev(1, 3))
        outs.append((node, node))
    for out, special in outs:
        for extra in ((), ("--overwrite",)):
            export_refused(ws, out, *extra, message="not a regular file" if extra else "")
        assert not special.is_file() and special.exists()


def test_export_never_replaces_a_symlink_dangling_looping_or_not(tmp_path):
    ws = export_ws(tmp_path)
    mine = tmp_path / "mine.jsonl"
    mine.write_bytes(b"the user's own file\n")
    links = {
        "dangling.jsonl": tmp_path / "nowhere.jsonl", "loop.jsonl": tmp_path / "loop.jsonl",
        "to-mine.jsonl": mine, "to-source.jsonl": tmp_path / "data.jsonl",
    }
    for name, target in links.items():
        (tmp_path / name).symlink_to(target)
        for extra in ((), ("--overwrite",)):
            export_refused(ws, tmp_path / name, *extra, watch=(mine,), message="symbolic link")
    # a link where the manifest goes
    (tmp_path / "y.jsonl.removed.jsonl").symlink_to(mine)
    for extra in ((), ("--overwrite",)):
        export_refused(ws, tmp_path / "y.jsonl", *extra, watch=(mine,), message="symbolic link")
    assert not (tmp_path / "y.jsonl").exists()


def test_export_never_writes_into_a_workspace(tmp_path):
    ws = export_ws(tmp_path)
    (tmp_path / "second").mkdir()
    other = export_ws(tmp_path / "second")
    for out in (ws / "clean.jsonl", ws / "meta.lance" / "clean.jsonl", other / "marks.lance" / "x.jsonl"):
        for extra in ((), ("--overwrite",)):
            export_refused(ws, out, *extra, message="inside the workspace")
    assert not (ws / "clean.jsonl").exists()


# -- hostile workspaces, sources and arguments --------------------------------------------------------
# Every case exits 2 with one line (no traceback, no raw control character), before any model work.


def one_line(args: list[str], message: str, env: dict | None = None) -> str:
    r = CliRunner().invoke(typer.main.get_command(app), args, env={"DATADEBUG_PROGRESS": "0", **(env or {})})
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, repr(r.exception))
    assert r.exit_code == 2, (args, r.exit_code, r.output)
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith("datadebug: error: "), (args, r.stderr)
    assert "Traceback" not in r.output and not RAW_CONTROL.search(r.stderr.rstrip("\n")), (args, r.stderr)
    assert message in r.stderr, (args, message, r.stderr)
    return r.stderr


def ok(args: list[str]) -> str:
    r = CliRunner().invoke(typer.main.get_command(app), args, env={"DATADEBUG_PROGRESS": "0"})
    assert r.exit_code == 0, (args, r.output)
    return r.stdout


WS_COMMANDS = (["shifts"], ["marks"], ["undo"], ["redo"], ["mark", "6"], ["unmark", "0"], ["trace", "-f", "3"],
               ["clusters"], ["compare"], ["export", "--out", "OUT"])


def run_all(ws: Path, message: str, out: Path) -> None:
    for cmd in WS_COMMANDS:
        one_line([*[str(out) if a == "OUT" else a for a in cmd], "-w", str(ws)], message)


def test_a_source_changed_after_indexing_is_refused_by_every_command(tmp_path):
    ws = export_ws(tmp_path)
    src = tmp_path / "data.jsonl"
    lines = src.read_bytes().split(b"\n")
    before = os.stat(src).st_mtime_ns
    lines[0], lines[1] = lines[1], lines[0]  # two lines swapped: same size, other records at 0 and 1
    src.write_bytes(b"\n".join(lines))
    os.utime(src, ns=(before + 10**9, before + 10**9))
    run_all(ws, "changed since it was indexed", tmp_path / "clean.jsonl")
    assert not (tmp_path / "clean.jsonl").exists()
    from core.data.marks import Marks
    from core.data.workspace import Workspace
    assert Marks(Workspace(ws)).marked_set() == {0, 4}  # no command changed the marks


def test_a_touched_but_equal_source_passes_and_is_hashed_once(tmp_path):
    ws = export_ws(tmp_path)
    src = tmp_path / "data.jsonl"
    os.utime(src, ns=(1, 1))  # mtime differs from the one recorded: hashed, equal, remembered
    assert "marked" in ok(["mark", "6", "-w", str(ws)])
    cache = json.loads((ws / "source-fingerprint.json").read_text())
    assert cache["dataset_mtime_ns"] == 1 and cache["dataset_size"] == src.stat().st_size
    ok(["marks", "-w", str(ws)])


def test_index_records_the_cheap_fingerprint(tmp_path):
    """What index writes to meta for the check: size and mtime of the file it hashed."""
    from core.data.workspace import source_fingerprint

    src = tmp_path / "d.jsonl"
    src.write_bytes(jsonl([STANDARD]))
    fp = source_fingerprint(src.stat())
    assert fp == {"dataset_size": src.stat().st_size, "dataset_mtime_ns": src.stat().st_mtime_ns}


# Commands that answer without reading a table (so a damage there cannot mislead them).
NOT_READING = {"meta": (), "pairs": ("marks", "undo", "redo"), "marks": ("trace", "clusters", "compare")}


def damage(ws: Path, table: str, how: str) -> None:
    for f in (ws / f"{table}.lance" / ("data" if how != "manifest" else "_versions")).iterdir():
        if f.suffix in (".lance", ".manifest"):
            f.write_bytes(f.read_bytes()[:40] if how == "cut" else b"garbage\n")


@pytest.mark.parametrize("table,how", [("meta", "garbage"), ("meta", "manifest"), ("pairs", "cut"),
                                       ("marks", "garbage"), ("marks", "cut")])
def test_a_damaged_workspace_table_gives_one_line_naming_it(tmp_path, table, how):
    ws = export_ws(tmp_path)
    damage(ws, table, how)
    src_before = (tmp_path / "data.jsonl").read_bytes()
    for cmd in WS_COMMANDS:
        args = [*[str(tmp_path / "clean.jsonl") if a == "OUT" else a for a in cmd], "-w", str(ws)]
        r = CliRunner().invoke(typer.main.get_command(app), args, env={"DATADEBUG_PROGRESS": "0"})
        assert "Traceback" not in r.output and (r.exception is None or isinstance(r.exception, SystemExit)), \
            (cmd, repr(r.exception))
        if r.exit_code == 0:  # a command that does not read the damaged table answers from the others
            assert cmd[0] in NOT_READING[table], (cmd, r.output)
            continue
        assert r.exit_code == 2 and len(r.stderr.splitlines()) == 1, (cmd, r.output)
        assert f"{table}.lance cannot be read" in r.stderr and "rustc" not in r.stderr, (cmd, r.stderr)
    assert (tmp_path / "data.jsonl").read_bytes() == src_before and not (tmp_path / "clean.jsonl").exists()


def test_marks_lock_as_a_directory_and_a_damaged_plan_give_one_line(tmp_path):
    ws = export_ws(tmp_path)
    (ws / "marks.lock").unlink()
    (ws / "marks.lock").mkdir()
    for cmd in (["mark", "6"], ["unmark", "0"], ["undo"], ["redo"]):
        one_line([*cmd, "-w", str(ws)], "marks lock")
    from core.train.interventions import PLAN_FILE
    (ws / PLAN_FILE).write_text('{"kind": "shape", "feat')
    one_line(["plan", "-w", str(ws)], "cannot be read")


def test_a_cut_structure_cache_or_names_file_is_rebuilt(tmp_path):
    """Derived caches: a cut one is fitted again (and replaced), not a traceback."""
    ws = export_ws(tmp_path)
    ok(["concepts", "-w", str(ws)])
    caches = sorted((ws / "structure").iterdir())
    assert any(p.suffix == ".npz" for p in caches) and any(p.name.endswith(".names.json") for p in caches)
    for p in caches:
        p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    first = ok(["concepts", "-w", str(ws)])
    for p in caches:  # rebuilt whole
        if p.suffix == ".npz":
            np_load = __import__("numpy").load(p)
            assert "k" in np_load.files
        else:
            json.loads(p.read_text())
    assert ok(["concepts", "-w", str(ws)]) == first


def test_not_a_workspace_is_refused_by_undo_redo_marks_and_plan(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("x")
    for cmd in (["undo"], ["redo"], ["marks"], ["plan"], ["shifts"], ["mark", "1"]):
        for where in (tmp_path / "folder", tmp_path / "absent"):
            one_line([*cmd, "-w", str(where)], "is not a datadebug workspace")
    assert not (tmp_path / "absent").exists()


def test_usage_errors_are_one_line_with_a_hint_to_help(tmp_path):
    for args, message in ((["shifts"], "Missing option '--workspace'"), (["shifts", "-w", "x", "--bogus"], "--bogus"),
                          (["shifts", "-w", "x", "--top", "many"], "--top"), (["nosuch"], "nosuch"),
                          (["index"], "Missing argument"), (["models", "pull"], "Missing argument")):
        line = one_line(args, message)
        assert "--help`)" in line, line


def test_out_of_range_numbers_and_unknown_devices_are_refused_before_any_work(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl([STANDARD] * 3))
    ws = tmp_path / "new-ws"
    for args, message in ((["--max-tokens", "0"], "--max-tokens 0"), (["--max-tokens", "-5"], "--max-tokens -5"),
                          (["--batch-tokens", "0"], "--batch-tokens 0"), (["--chunk-pairs", "0"], "--chunk-pairs 0"),
                          (["--ray-workers", "0"], "--ray-workers 0"), (["--device", "tpu"], "unknown device"),
                          (["--device", "cuda:99"], "no such CUDA GPU")):
        if args[0] == "--device" and args[1].startswith("cuda"):
            from core.index.build import index_dataset
            from core.errors import UsageError
            with pytest.raises(UsageError, match="no such CUDA GPU"):  # checked by core, first thing
                index_dataset(data, ws, device=args[1])
            continue
        one_line(["index", str(data), "-w", str(ws), *args], message)
    assert not ws.exists()
    from core.index.readout import IndexSettings
    from core.errors import UsageError
    with pytest.raises(UsageError, match="--max-tokens 0"):
        IndexSettings(max_tokens=0)


def test_out_of_range_numbers_on_a_workspace_are_refused(tmp_path):
    ws = export_ws(tmp_path)
    for cmd in (["shifts", "--top", "0"], ["concepts", "--top", "0"], ["hypotheses", "--top", "0"],
                ["trace", "-f", "3", "--top", "0"]):
        one_line([*cmd, "-w", str(ws)], "0")
    for bad in ("nan", "inf", "-inf"):
        one_line(["plan", "-w", str(ws), "--kind", "shape", "--features", "3", "--strength", bad], "finite")
    ok(["plan", "-w", str(ws), "--clear"])
    assert "no plan" in ok(["plan", "-w", str(ws)])  # nothing was saved
    truth = tmp_path / "truth.json"
    for ids in ([-1], [99999999], [0, 1]):  # 1 is in the source, but not indexed
        truth.write_text(json.dumps({"planted": ids}))
        one_line(["compare", "-w", str(ws), "--truth", str(truth)], "not indexed")
    one_line(["hypotheses", "-w", str(ws), "--llm"], "no LLM namer is configured",
             env={"DATADEBUG_NAMER_URL": ""})


def test_marking_past_a_limit_does_not_claim_the_source_is_that_short(tmp_path):
    from core.data.workspace import Workspace

    ws = export_ws(tmp_path)
    Workspace(ws).write_meta({"limit": 5, "n_records": 10})
    line = one_line(["mark", "25", "-w", str(ws)], "no such pair")
    assert "first 10 records" in line and "--limit 5" in line and "the source has" not in line


def test_workspace_paths_with_control_bytes_are_printed_escaped(tmp_path):
    for name in ("ws\x1b[2J\x07", "ws-\udcff-bytes", "ws\u202eevil"):
        line = one_line(["shifts", "-w", str(tmp_path / name)], "is not a datadebug workspace")
        assert "\x1b" not in line and "\u202e" not in line


def test_goblin_refuses_an_invalid_record_as_index_does(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl([STANDARD, STANDARD, {**STANDARD, "chosen": 5}, STANDARD]))
    line = one_line(["goblin", str(data), "--rate", "0.5", "-w", str(tmp_path / "ws")], "field 'chosen'")
    assert line.startswith(f"datadebug: error: {data}:3:")
    assert not (tmp_path / "ws").exists() and not (tmp_path / "ws.goblin").exists()


def test_a_second_index_into_one_workspace_is_refused_while_the_first_holds_it(tmp_path):
    """The reliability run: two concurrent `index` runs into one new workspace, one died with a Rust
    panic. The second is refused in one line while the first (a real process holding the index lock,
    as `index` does for its whole run) is alive; after it, the lock is free."""
    import time

    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl([STANDARD] * 3))
    ws, flag = tmp_path / "ws", tmp_path / "holding"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom core.data.workspace import Workspace\n"
        "with Workspace(sys.argv[1], create=True).index_lock():\n"
        "    open(sys.argv[2], 'w').close()\n    time.sleep(120)\n"), str(ws), str(flag)],
        cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.time() + 60
        while not flag.exists():
            assert holder.poll() is None and time.time() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        line = one_line(["index", str(data), "-w", str(ws)], "another `datadebug index`")
        assert f"pid {holder.pid}" in line
        assert holder.poll() is None, "the first run had ended: the refusal proves nothing"
        assert not (ws / "meta.lance").exists()  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    from core.data.workspace import Workspace
    with Workspace(ws, create=True).index_lock():  # a killed holder blocks no one
        pass


def test_index_with_an_unreachable_ray_address_fails_in_bounded_time(tmp_path):
    import time

    data = tmp_path / "d.jsonl"
    data.write_bytes(jsonl([STANDARD] * 3))
    for address, message in (("256.1.1.1:1", "cannot reach a Ray cluster"), ("127.0.0.1:1", "cannot reach"),
                             ("ray://127.0.0.1:1", "cannot reach"), ("nonsense", "expected auto, local")):
        start = time.monotonic()
        one_line(["index", str(data), "-w", str(tmp_path / "ws"), "--ray", address], message)
        assert time.monotonic() - start < 30, address
    assert not (tmp_path / "ws").exists()
