"""A .json file: one JSON array of records, or JSON lines saved under a .json name (read and written
back as `jsonl` does). An array is written back as an array (indented by one space)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from core.data.containers import jsonl
from core.data.containers.base import Container, json_bytes, parse_json, refuse_utf16
from core.data.records import file_error, os_reason

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n"


def is_array(path: Path) -> bool:
    """True when a .json file holds one array rather than JSON lines (after any BOM and however
    much leading whitespace)."""
    try:
        with path.open("rb") as f:
            chunk = f.read(1 << 16).removeprefix(_BOM)
            while chunk:
                rest = chunk.lstrip(_WHITESPACE)
                if rest:
                    return rest.startswith(b"[")
                chunk = f.read(1 << 16)
    except OSError as exc:
        raise file_error(path, f"cannot read file: {os_reason(exc)}") from None
    return False


def load_array(path: Path) -> list:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise file_error(path, f"cannot read file: {os_reason(exc)}") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise file_error(path, f"not valid UTF-8: byte 0x{data[e.start]:02x}", line) from e
    try:
        return parse_json(text)
    except json.JSONDecodeError as e:
        raise file_error(path, f"invalid JSON: {e.msg} (column {e.colno})", e.lineno) from e
    except ValueError as e:
        raise file_error(path, str(e)) from e


def records(path: Path, suffix: str) -> Iterator[tuple[int, object]]:
    if not is_array(path):
        yield from jsonl.records(path, suffix)
        return
    array = load_array(path)
    if not isinstance(array, list):  # "[1] 2" is caught by json; this is belt and braces
        raise file_error(path, "a JSON file must hold an array of records or JSON lines")
    yield from enumerate(array, start=1)


def raw(path: Path, suffix: str) -> tuple[Container, list]:
    """An array's records as parsed (a dict, or whatever the array held); JSON lines as `jsonl`."""
    if not is_array(path):
        return jsonl.raw(path, suffix)
    return ARRAY, load_array(path)


def write(f: BinaryIO, records: list, keep: list[int], source: Path, out: Path) -> None:
    f.write(json_bytes([records[i] for i in keep], indent=1))


def removed(record: object) -> dict:
    return {"record": record}


ARRAY = Container("json", (".json",), records, raw, write, removed, outputs=(".json",),
                  check=refuse_utf16, hf_builder="json", filter_shard=jsonl.filter_shard)
