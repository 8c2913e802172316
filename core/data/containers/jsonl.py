"""JSON lines (.jsonl, and gzipped .jsonl.gz): one record a line, written back byte for byte."""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from core.data.containers.base import Container, parse_json, refuse_utf16
from core.data.records import file_error, os_reason


def lines(path: Path, gz: bool = False) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line bytes without the newline) for non-blank lines.

    Lines are split on b"\\n" only, so a CRLF file keeps its "\\r" and written-back lines
    stay byte-identical. A file that cannot be read to its end (a truncated or corrupt gzip
    stream, an I/O error) raises IngestError naming the first line it could not read (0 when
    not even the first).
    """
    opener = gzip.open if gz else open
    line_number = 0
    try:
        with opener(path, "rb") as f:
            for line_number, raw in enumerate(f, start=1):
                if raw.endswith(b"\n"):
                    raw = raw[:-1]
                if raw.strip():
                    yield line_number, raw
    except EOFError as e:  # a gzip stream cut short
        where = f" after line {line_number}" if line_number else ""
        raise file_error(path, f"truncated gzip file: it ends{where} before its end marker",
                         line_number + 1 if line_number else 0) from e
    except (OSError, zlib.error) as e:  # corrupt gzip data, not gzip at all, unreadable
        reason = os_reason(e) if isinstance(e, OSError) else f"corrupt gzip data ({e})"
        raise file_error(path, f"cannot read file: {reason}", line_number + 1 if line_number else 0) from e


def decode_line(line_number: int, raw: bytes) -> object:
    """Parse one JSON line; return the record, or the exception that stopped it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return e
    if line_number == 1:
        text = text.removeprefix("\ufeff")  # a BOM is legal in UTF-8 files; json rejects it
    try:
        return parse_json(text)
    except ValueError as e:
        return e


def _gz(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def records(path: Path, suffix: str) -> Iterator[tuple[int, object]]:
    for line_number, raw in lines(path, _gz(path)):
        yield line_number, decode_line(line_number, raw)


def raw(path: Path, suffix: str) -> tuple[Container, list]:
    """Each record's exact line bytes without its b"\\n" (a CRLF file keeps its b"\\r")."""
    return (GZIP if _gz(path) else PLAIN), [line for _, line in lines(path, _gz(path))]


def _ends_with_newline(path: Path) -> bool:
    if _gz(path):
        last = b""
        with gzip.open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                last = block
        return last.endswith(b"\n") or not last
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def write_lines(f: BinaryIO, kept: Iterator[bytes] | list[bytes], gz: bool, last_newline: bool = True) -> None:
    """Write lines to `f` (gzipped with no name or time in the header, so equal lines give equal
    bytes), each ended by b"\\n" except, without `last_newline`, the last."""
    out = gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) if gz else f
    previous = None
    for line in kept:
        if previous is not None:
            out.write(previous + b"\n")
        previous = line
    if previous is not None:
        out.write(previous + (b"\n" if last_newline else b""))
    if gz:
        out.close()


def write(f: BinaryIO, records: list, keep: list[int], source: Path, out: Path) -> None:
    # the source's last-line convention too, so no marks gives back the same bytes
    write_lines(f, [records[i] for i in keep], _gz(out), _ends_with_newline(source))


def removed(record: bytes) -> dict:
    """The exact text of the source line (`jq -r .source_line` writes it back byte for byte)."""
    return {"source_line": record.decode("utf-8", "surrogateescape")}


def verify_gzip(path: Path) -> None:
    """Decompress the whole of a gzip file without parsing it, so that a bad CRC, a cut trailer or
    trailing garbage is found even when reading stopped early (--limit): a corrupt stream garbles
    lines before its checksum fails. Raises IngestError saying so."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except EOFError as e:
        raise file_error(path, "truncated gzip file: it ends before its end marker (checked in full, "
                               "whatever --limit says)") from e
    except (OSError, zlib.error) as e:
        reason = os_reason(e) if isinstance(e, OSError) else f"corrupt gzip data ({e})"
        raise file_error(path, f"cannot read file: {reason} (checked in full, whatever --limit says)") from e


def filter_shard(path: Path, dest: Path, marked: set[int], start: int, removed_rows: dict) -> int:
    """Copy the unmarked lines of a JSON lines shard to `dest` byte for byte (blank lines are no rows,
    as for `datasets`). Returns its number of rows. Raises IngestError for a JSON array shard."""
    from core.data.containers import read_raw

    _, rows = read_raw(path)
    if rows and not isinstance(rows[0], bytes):
        raise file_error(path, "a JSON array shard; shards are JSON lines or Parquet")
    kept = []
    for i, line in enumerate(rows):
        if start + i in marked:
            removed_rows[start + i] = json.loads(line)
        else:
            kept.append(line)
    with open(dest, "wb") as f:
        write_lines(f, kept, _gz(path))
    return len(rows)


_COMMON = dict(records=records, raw=raw, write=write, removed=removed,
               outputs=(".jsonl", ".jsonl.gz", ".json"), hf_builder="json", filter_shard=filter_shard)
PLAIN = Container("jsonl", (".jsonl",), check=refuse_utf16, **_COMMON)
GZIP = Container("jsonl.gz", (".jsonl.gz",), verify=verify_gzip, **_COMMON)
