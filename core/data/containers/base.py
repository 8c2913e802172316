"""What a container is (`Container`), and the reading helpers the containers share."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.data.records import file_error, os_reason

_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class Container:
    """One way preference records are stored in a file, found by the file's name (`suffixes`).

    `records(path, suffix)` yields (number, record) in source order: number is the 1-based line
    for JSON lines and the record number otherwise; a record that cannot be decoded is yielded as
    the exception that stopped it (one bad line never stops the file); a file unreadable as a whole
    raises IngestError. `raw(path, suffix)` returns the records as stored, for writing them back,
    with the container that writes them (JSON lines in a .json file are written back as lines).
    `write(f, records, keep, source, out)` writes `records[i]` for i in `keep` to the binary file
    `f`, `removed(record)` is a raw record as the removed-pairs manifest holds it, and `outputs`
    are the names a cleaned file may have. `check(path, suffix)` refuses a file before reading it;
    `verify(path)` reads a whole compressed file whose corruption shows only at its end (read_pairs
    calls it when it stops early, and reads to the end before reporting a bad record).
    `hf_builder` is the `datasets` builder that reads a folder of these files as shards, and
    `filter_shard(path, dest, marked, start, removed_rows)` copies a shard less its marked rows
    (row numbers from `start`; the removed rows go to `removed_rows`), returning its row count.
    """

    name: str
    suffixes: tuple[str, ...]
    records: Callable[[Path, str], Iterator[tuple[int, object]]]
    raw: Callable[[Path, str], tuple[Container, list]]
    write: Callable[[BinaryIO, list, list[int], Path, Path], None]
    removed: Callable[[object], dict]
    outputs: tuple[str, ...]
    check: Callable[[Path, str], None] | None = None
    verify: Callable[[Path], None] | None = None
    hf_builder: str | None = None
    filter_shard: Callable[[Path, Path, set[int], int, dict], int] | None = None


def refuse_utf16(path: Path, suffix: str) -> None:
    """Raise IngestError for UTF-16 text (a BOM says so): the JSON containers read UTF-8."""
    if read_head(path, 2) in _UTF16_BOMS:
        raise file_error(path, "UTF-16 text; datadebug reads UTF-8 (iconv -f UTF-16 -t UTF-8)")


def read_head(path: Path, n: int) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError as exc:
        raise file_error(path, f"cannot read file: {os_reason(exc)}") from None


def parse_json(text: str) -> object:
    """json.loads, with the ways it fails beyond JSONDecodeError turned into one ValueError that
    says why: nesting deeper than Python's recursion limit, integers of more than 4,300 digits."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise ValueError("invalid JSON: nested too deeply") from None
    except ValueError as e:  # int() refusing a huge integer literal
        raise ValueError(f"invalid JSON: {str(e).split(':')[0]}") from None


_SURROGATE = re.compile("[\ud800-\udfff]")


def json_bytes(obj, indent: int | None = None) -> bytes:
    """UTF-8 JSON of `obj`; lone surrogates (a record's escaped "\\ud800", or a non-UTF-8 byte
    kept by surrogateescape) stay escaped, so the text is valid UTF-8 and parses back to `obj`."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent, default=str)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text).encode("utf-8")
