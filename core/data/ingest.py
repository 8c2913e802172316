"""Read preference pairs from the common dataset formats, reporting every bad record.

A preference file is JSONL (optionally gzipped), a JSON array, or Parquet. Each record
is one pair in one of four shapes (see ``FORMATS``): TRL "standard" strings, TRL
"conversational" message lists, Anthropic HH-RLHF transcripts, or ShareGPT. Every
record that cannot become a pair becomes an ``Issue`` naming the file, line and field;
nothing is dropped without one.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import IngestError, UsageError

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}

FORMATS = ("standard", "conversational", "hh-rlhf", "sharegpt")

_ALL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")

_ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}
# ShareGPT names speakers with "from"; these are the spellings seen in the wild.
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
# Only a blank line followed by the speaker starts a turn. HH replies sometimes contain
# "Human:" mid-line where the sampling model wrote the next turn itself; that text is
# part of the reply, not a new turn.
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


@dataclass(frozen=True)
class Pair:
    """One preference pair: a prompt conversation and two competing final replies."""

    source_index: int  # 0-based position among all records of the file, valid or not
    line: int  # 1-based line (JSONL) or record number (JSON array, Parquet)
    prompt: tuple[Message, ...]  # the conversation before the replies; has a user message
    chosen: str
    rejected: str

    @property
    def prompt_text(self) -> str:
        """The prompt as readable text: a lone user message as its bare content,
        otherwise one "User: ..." / "Assistant: ..." paragraph per turn."""
        if len(self.prompt) == 1 and self.prompt[0]["role"] == "user":
            return self.prompt[0]["content"]
        return "\n\n".join(f"{_ROLE_LABELS[m['role']]}: {m['content']}" for m in self.prompt)


@dataclass(frozen=True)
class Issue:
    """A problem found in a source file. ``line`` 0 means the file as a whole and
    ``field`` "" means the record as a whole."""

    path: str
    line: int
    field: str
    message: str
    severity: str  # "error" (the record is not a pair) | "warning"

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        what = f"field '{self.field}': {self.message}" if self.field else self.message
        return f"{where}: {what}"


@dataclass
class IngestResult:
    """What ``read_pairs`` found: the valid pairs and an issue for every problem."""

    pairs: list[Pair]
    issues: list[Issue]
    format: str  # one of FORMATS, or "unknown" when no record had a recognisable shape
    path: str
    n_records: int  # every record seen, valid or not
    identical: int = 0  # well-formed pairs left out because chosen == rejected (each has a warning)

    @property
    def skipped(self) -> int:
        """Records left out because of an error (each has exactly one error issue)."""
        return sum(issue.severity == "error" for issue in self.issues)


class _Invalid(Exception):
    """Why one record is not a pair; becomes an Issue for that record."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


# --- reading records ---------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_WHITESPACE = b" \t\r\n"


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(_ALL_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def _file_error(path: str | Path, message: str, line: int = 0) -> IngestError:
    return IngestError(Issue(str(path), line, "", message, "error"))


def _os_reason(exc: OSError) -> str:
    """An OSError as a person reads it: "Permission denied", "Is a directory", ..."""
    return exc.strerror or str(exc) or type(exc).__name__


def _check_file(path: Path) -> str:
    """Return the file's supported suffix, or raise IngestError saying why it cannot be read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise _file_error(path, f"broken symbolic link (to {os.readlink(path)})") from None
        raise _file_error(path, "file not found") from None
    except OSError as exc:  # a symlink loop, a path through a file, a name too long
        raise _file_error(path, f"cannot open: {_os_reason(exc)}") from None
    if path.is_dir():
        raise _file_error(path, "is a directory, not a file")
    if not path.is_file():
        raise _file_error(path, "not a regular file (a device, pipe or socket)")
    suffix = _suffix(path)
    if not suffix:
        expected = ", ".join(_ALL_SUFFIXES)
        raise _file_error(path, f"unsupported file type; expected one of {expected}")
    if st.st_size == 0:
        raise _file_error(path, "empty file: it holds no records")
    if suffix in (".jsonl", ".json"):
        head = _read_head(path, 2)
        if head in _UTF16_BOMS:
            raise _file_error(path, "UTF-16 text; datadebug reads UTF-8 (iconv -f UTF-16 -t UTF-8)")
    return suffix


def _read_head(path: Path, n: int) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError as exc:
        raise _file_error(path, f"cannot read file: {_os_reason(exc)}") from None


def _is_json_array(path: Path) -> bool:
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
        raise _file_error(path, f"cannot read file: {_os_reason(exc)}") from None
    return False


def _jsonl_lines(path: Path, suffix: str) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line bytes without the newline) for non-blank lines.

    Lines are split on b"\\n" only, so a CRLF file keeps its "\\r" and written-back lines
    stay byte-identical. A file that cannot be read to its end (a truncated or corrupt gzip
    stream, an I/O error) raises IngestError naming the first line it could not read (0 when
    not even the first).
    """
    opener = gzip.open if suffix == ".jsonl.gz" else open
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
        raise _file_error(path, f"truncated gzip file: it ends{where} before its end marker",
                          line_number + 1 if line_number else 0) from e
    except (OSError, zlib.error) as e:  # corrupt gzip data, not gzip at all, unreadable
        reason = _os_reason(e) if isinstance(e, OSError) else f"corrupt gzip data ({e})"
        raise _file_error(path, f"cannot read file: {reason}", line_number + 1 if line_number else 0) from e


def _parse_json(text: str) -> object:
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


def _decode_line(line_number: int, raw: bytes) -> object:
    """Parse one JSONL line; return the record, or the exception that stopped it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return e
    if line_number == 1:
        text = text.removeprefix("\ufeff")  # a BOM is legal in UTF-8 files; json rejects it
    try:
        return _parse_json(text)
    except ValueError as e:
        return e


def _load_json_array(path: Path) -> list:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _file_error(path, f"cannot read file: {_os_reason(exc)}") from None
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _file_error(path, f"not valid UTF-8: byte 0x{data[e.start]:02x}", line) from e
    try:
        return _parse_json(text)
    except json.JSONDecodeError as e:
        raise _file_error(path, f"invalid JSON: {e.msg} (column {e.colno})", e.lineno) from e
    except ValueError as e:
        raise _file_error(path, str(e)) from e


def _read_parquet(path: Path):
    import pyarrow  # only Parquet users pay for the import
    import pyarrow.parquet

    try:
        return pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise _file_error(path, f"cannot read Parquet: {_first_line(e)}") from e


def _parquet_rows(path: Path, table) -> Iterator[tuple[int, object]]:
    import pyarrow

    number = 0
    try:
        for batch in table.to_batches(max_chunksize=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pyarrow.ArrowException, ValueError, OverflowError) as e:  # a value Python cannot hold
        raise _file_error(path, f"cannot read Parquet record: {_first_line(e)}", number + 1) from e


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def iter_records(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield every record of a preference file in source order.

    Takes a path to a .jsonl, .jsonl.gz, .json (an array, or JSON lines saved as .json)
    or .parquet file. Yields (number, record) where number is the 1-based line for JSON
    lines and the 1-based record number for arrays and Parquet. A JSON line that cannot
    be decoded or parsed yields the UnicodeDecodeError or ValueError (json.JSONDecodeError,
    or nesting/number limits) in place of the record, so one bad line never stops the file.
    Blank lines are not records but still count in line numbers.

    Raises IngestError when the file is missing, empty, of an unsupported type, or unreadable
    as a whole (a broken JSON array, a corrupt or truncated gzip or Parquet file).
    """
    path = Path(path)
    suffix = _check_file(path)
    if suffix == ".parquet":
        yield from _parquet_rows(path, _read_parquet(path))
    elif suffix == ".json" and _is_json_array(path):
        records = _load_json_array(path)
        if not isinstance(records, list):  # "[1] 2" is caught by json; this is belt and braces
            raise _file_error(path, "a JSON file must hold an array of records or JSON lines")
        yield from enumerate(records, start=1)
    else:
        for line_number, raw in _jsonl_lines(path, suffix):
            yield line_number, _decode_line(line_number, raw)


def raw_records(path: str | Path) -> list:
    """Return each record of a preference file as it is stored, for writing it back.

    Takes the same files as ``iter_records``; index i of the list is the record whose
    Pair has source_index i. For JSON lines (.jsonl, .jsonl.gz, JSON lines in .json) an
    item is the exact bytes of the record's line without its b"\\n" (a CRLF file keeps
    its b"\\r"). For a JSON array it is the record as parsed (a dict, or whatever the
    array held). For Parquet it is a one-row ``pyarrow.Table`` slice of the file, which
    keeps the schema, so ``pyarrow.concat_tables`` of the kept slices writes them back.

    Raises IngestError as ``iter_records`` does.
    """
    path = Path(path)
    suffix = _check_file(path)
    if suffix == ".parquet":
        table = _read_parquet(path)
        return [table.slice(i, 1) for i in range(table.num_rows)]
    if suffix == ".json" and _is_json_array(path):
        return _load_json_array(path)
    return [raw for _, raw in _jsonl_lines(path, suffix)]


# --- recognising formats -----------------------------------------------------------


def detect_format(record: dict) -> str:
    """Return which of FORMATS a record's shape is, judging by its keys and types only.

    Takes one parsed record. Raises ValueError, with a message fit for an Issue, when
    the record is not an object or matches no known shape.
    """
    if not isinstance(record, dict):
        raise ValueError(f"record is not a JSON object (got {_type_name(record)})")
    if "conversations" in record:
        return "sharegpt"
    chosen, rejected = record.get("chosen"), record.get("rejected")
    if isinstance(chosen, list) or isinstance(rejected, list):
        return "conversational"
    if "prompt" in record:
        return "conversational" if isinstance(record["prompt"], list) else "standard"
    if isinstance(chosen, str) and _HH_TURN.search("\n\n" + chosen.lstrip()):
        return "hh-rlhf"
    keys = ", ".join(_clip(k, 30) for k in sorted(record, key=str)[:12]) or "none"
    if len(record) > 12:
        keys += f", ... ({len(record)} keys)"
    raise ValueError(
        f"unrecognised record shape (keys: {keys}); expected prompt/chosen/rejected, "
        "HH-RLHF chosen/rejected transcripts, or ShareGPT conversations"
    )


_TYPE_NAMES = {
    str: "string", list: "list", dict: "object", bool: "boolean", type(None): "null", bytes: "bytes",
}
_SURROGATE = re.compile("[\ud800-\udfff]")


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), "number" if isinstance(value, int | float) else "value")


def _clip(value: object, width: int = 40) -> str:
    """A value from a record, cut short for a message (front ends escape its control characters)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# Characters that show nothing: whitespace, controls, format characters (zero-width space and joiners,
# bidi marks, the BOM, soft hyphen) and separators.
_INVISIBLE = frozenset(("Cc", "Cf", "Zs", "Zl", "Zp"))


def is_blank(text: str) -> bool:
    """True when `text` shows nothing: only whitespace, zero-width or other invisible characters."""
    return all(c.isspace() or unicodedata.category(c) in _INVISIBLE for c in text)


def _check_text(value: str, where: str) -> str:
    """`value`, or _Invalid when it holds a lone surrogate: JSON can escape one ("\\ud800"), but it
    is no character, so no tokenizer or UTF-8 file can take it."""
    bad = _SURROGATE.search(value)
    if bad:
        raise _Invalid(where, f"lone surrogate U+{ord(bad.group(0)):04X} at character {bad.start()}: not text")
    return value


def _get(obj: dict, key: str, expected: type | tuple[type, ...], where: str) -> object:
    """Return obj[key] if present and of the expected type; ``where`` names it in issues."""
    if key not in obj:
        raise _Invalid(where, "missing field")
    value = obj[key]
    if not isinstance(value, expected):
        types = expected if isinstance(expected, tuple) else (expected,)
        wanted = " or ".join(_TYPE_NAMES[t] for t in types)
        raise _Invalid(where, f"expected {wanted}, got {_type_name(value)}")
    if isinstance(value, str):
        _check_text(value, where)
    return value


def _field(record: dict, name: str, expected: type | tuple[type, ...]) -> object:
    return _get(record, name, expected, name)


def _message(value: object, where: str) -> Message:
    """Check one {role, content} message and return it with only those two keys."""
    if not isinstance(value, dict):
        raise _Invalid(where, f"expected object, got {_type_name(value)}")
    role = _get(value, "role", str, f"{where}.role")
    if role not in _ROLE_LABELS:
        raise _Invalid(f"{where}.role", f"unknown role '{_clip(role)}'")
    return {"role": role, "content": _get(value, "content", str, f"{where}.content")}


def _messages(value: object, name: str) -> list[Message]:
    if not isinstance(value, list):
        raise _Invalid(name, f"expected list, got {_type_name(value)}")
    return [_message(m, f"{name}[{i}]") for i, m in enumerate(value)]


def _sharegpt_message(value: object, where: str) -> Message:
    """Check a ShareGPT {from, value} (or {role, content}) message; return {role, content}."""
    if not isinstance(value, dict):
        raise _Invalid(where, f"expected object, got {_type_name(value)}")
    if "role" in value or "content" in value:
        return _message(value, where)
    speaker = _get(value, "from", str, f"{where}.from")
    if speaker not in _SHAREGPT_ROLES:
        raise _Invalid(f"{where}.from", f"unknown role '{_clip(speaker)}'")
    return {
        "role": _SHAREGPT_ROLES[speaker],
        "content": _get(value, "value", str, f"{where}.value"),
    }


def _assistant_reply(message: Message, where: str) -> str:
    if message["role"] != "assistant":
        raise _Invalid(where, f"reply is not from the assistant (role '{message['role']}')")
    return message["content"]


def _parse_standard(record: dict) -> tuple[list[Message], str, str]:
    prompt = _field(record, "prompt", str)
    chosen = _field(record, "chosen", str)
    rejected = _field(record, "rejected", str)
    if is_blank(prompt):
        raise _Invalid("prompt", "empty prompt")
    return [{"role": "user", "content": prompt}], chosen, rejected


def _parse_conversational(record: dict) -> tuple[list[Message], str, str]:
    chosen = _messages(_field(record, "chosen", list), "chosen")
    rejected = _messages(_field(record, "rejected", list), "rejected")
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if not messages:
            raise _Invalid(name, "empty reply")
    chosen_reply = _assistant_reply(chosen[-1], f"chosen[{len(chosen) - 1}]")
    rejected_reply = _assistant_reply(rejected[-1], f"rejected[{len(rejected) - 1}]")
    # The conversation may sit in "prompt" (explicit) or ahead of the reply in both
    # chosen and rejected (implicit); either way both replies must answer the same one.
    context = chosen[:-1]
    if rejected[:-1] != context:
        raise _Invalid("rejected", "conversation before the reply differs from chosen's")
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        prompt = _messages(prompt, "prompt")
        if context and context != prompt:
            raise _Invalid("chosen", "conversation before the reply differs from 'prompt'")
    elif isinstance(prompt, str) and not context:
        # HuggingFaceH4-style rows give the prompt as a string and the reply alone.
        prompt = [{"role": "user", "content": _check_text(prompt, "prompt")}]
    elif isinstance(prompt, str):
        # Rows that give both repeat a user turn of the conversation in "prompt".
        if not any(m["role"] == "user" and m["content"] == prompt for m in context):
            raise _Invalid("prompt", "differs from every user turn in chosen")
        prompt = context
    elif prompt is None:
        prompt = context
    else:
        raise _Invalid("prompt", f"expected list or string, got {_type_name(prompt)}")
    return prompt, chosen_reply, rejected_reply


def _parse_transcript(text: str, name: str) -> list[Message]:
    """Split an HH-RLHF "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript into messages."""
    # Some copies drop the leading blank line; put it back so every turn splits alike.
    parts = _HH_TURN.split("\n\n" + text.lstrip())
    if parts[0].strip():
        raise _Invalid(name, "text before the first 'Human:' turn")
    # The speaker's colon is followed by one space, sometimes two or three; trim them.
    return [
        {"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _parse_hh(record: dict) -> tuple[list[Message], str, str]:
    chosen = _parse_transcript(_field(record, "chosen", str), "chosen")
    rejected = _parse_transcript(_field(record, "rejected", str), "rejected")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if not turns or turns[-1]["role"] != "assistant":
            raise _Invalid(name, "transcript does not end with an Assistant reply")
    if rejected[:-1] != chosen[:-1]:
        raise _Invalid("rejected", "conversation before the reply differs from chosen's")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _reply(value: object, name: str) -> str:
    if isinstance(value, str):
        return value
    return _assistant_reply(_sharegpt_message(value, name), name)


def _parse_sharegpt(record: dict) -> tuple[list[Message], str, str]:
    conversation = _field(record, "conversations", list)
    prompt = [_sharegpt_message(m, f"conversations[{i}]") for i, m in enumerate(conversation)]
    chosen = _reply(_field(record, "chosen", (dict, str)), "chosen")
    rejected = _reply(_field(record, "rejected", (dict, str)), "rejected")
    return prompt, chosen, rejected


_PARSERS = {
    "standard": _parse_standard,
    "conversational": _parse_conversational,
    "hh-rlhf": _parse_hh,
    "sharegpt": _parse_sharegpt,
}


# Where a prompt without a user turn is reported: the field that holds the prompt in each shape.
_PROMPT_FIELD = {"standard": "prompt", "hh-rlhf": "chosen", "sharegpt": "conversations"}


def _to_pair(record: object, format: str, source_index: int, line: int) -> Pair:
    """Turn one record of a known format into a Pair, or raise _Invalid saying why not."""
    if not isinstance(record, dict):
        raise _Invalid("", f"record is not a JSON object (got {_type_name(record)})")
    prompt, chosen, rejected = _PARSERS[format](record)
    if not any(m["role"] == "user" for m in prompt):
        where = _PROMPT_FIELD.get(format) or ("prompt" if "prompt" in record else "chosen")
        raise _Invalid(where, "no user message in the prompt")
    if is_blank(chosen):
        raise _Invalid("chosen", "empty reply")
    if is_blank(rejected):
        raise _Invalid("rejected", "empty reply")
    return Pair(source_index, line, tuple(prompt), chosen, rejected)


def _parse_error_message(error: ValueError) -> str:
    if isinstance(error, UnicodeDecodeError):
        return (
            f"not valid UTF-8: byte 0x{error.object[error.start]:02x} at column {error.start + 1}"
        )
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON: {error.msg} (column {error.colno})"
    return str(error)


def read_pairs(
    path: str | Path,
    format: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
) -> IngestResult:
    """Read the preference pairs of a file and report every record that is not one.

    Takes a .jsonl, .jsonl.gz, .json or .parquet path, or a ``core.data.hfdata.HFSource``; ``format``, one of FORMATS, or
    None to take the shape of the first valid record (until then each record is read in
    its own shape, so an invalid first record is reported by its own fields); with
    ``skip_invalid`` invalid records are left out and each reported in ``issues``
    instead of raising; ``limit`` (at least 1) stops reading after that many valid pairs.

    A pair whose chosen and rejected replies are identical carries no preference: it is
    left out with a warning issue and counted in ``identical``, never an error.

    Returns an IngestResult with at least one pair, whose pairs keep their source_index
    (position among all records) so they can be matched to ``raw_records``;
    len(pairs) + skipped + identical == n_records when no limit cut the file short.

    Raises IngestError for an unknown ``format``, a file that cannot be read as a whole
    (see ``iter_records``), a file with no valid pair, and, unless ``skip_invalid``, the
    first invalid record. Raises UsageError for a ``limit`` under 1.
    """
    if format is not None and format not in FORMATS:
        expected = ", ".join(FORMATS)
        raise _file_error(path, f"unknown format '{format}'; expected one of {expected}")
    if limit is not None and limit < 1:
        raise UsageError(f"limit {limit}: must be at least 1 pair")
    result = IngestResult(
        pairs=[], issues=[], format=format or "unknown", path=str(path), n_records=0
    )

    # A Hugging Face dataset (core.data.hfdata.HFSource) hands over its own records: same shapes, same checks.
    from_source = hasattr(path, "records")
    records = path.records() if from_source else iter_records(path)
    gzipped = not from_source and _suffix(Path(path)) == ".jsonl.gz"

    def reject(line: int, field: str, message: str) -> None:
        issue = Issue(str(path), line, field, message, "error")
        if not skip_invalid:
            if gzipped:
                _drain(records)
            raise IngestError(issue)
        result.issues.append(issue)

    format_line = 0  # the line of the first valid record, which fixed the format (auto-detection)
    for source_index, (line, record) in enumerate(records):
        result.n_records += 1
        if isinstance(record, Exception):
            reject(line, "", _parse_error_message(record))
            continue
        shape = result.format
        if shape == "unknown":
            try:
                shape = detect_format(record)
            except ValueError as e:
                reject(line, "", str(e))
                continue
        try:
            pair = _to_pair(record, shape, source_index, line)
        except _Invalid as e:
            other = _valid_shape(record) if format is None and format_line else None
            if other and other != shape:
                reject(line, "", f"a valid {other} pair, but this file is {shape} (from its first "
                                 f"valid record, line {format_line}); one file holds one format")
            else:
                reject(line, e.field, e.message)
            continue
        if not format_line:
            result.format, format_line = shape, line  # the first valid record fixes the format
        if pair.chosen == pair.rejected:
            result.identical += 1
            result.issues.append(Issue(
                str(path), line, "", "chosen and rejected replies are identical: no preference, skipped",
                "warning",
            ))
            continue
        result.pairs.append(pair)
        if limit is not None and len(result.pairs) >= limit:
            if gzipped:  # the pairs read are only trustworthy once the whole stream checks out
                _verify_gzip(Path(path))
            break

    if not result.pairs:
        raise _file_error(path, _no_pairs(result))
    return result


def _verify_gzip(path: Path) -> None:
    """Decompress the whole of a gzip file without parsing it, so that a bad CRC, a cut trailer or
    trailing garbage is found even when reading stopped early (--limit): a corrupt stream garbles
    lines before its checksum fails. Raises IngestError saying so."""
    try:
        with gzip.open(path, "rb") as f:
            while f.read(1 << 20):
                pass
    except EOFError as e:
        raise _file_error(path, "truncated gzip file: it ends before its end marker (checked in full, "
                                "whatever --limit says)") from e
    except (OSError, zlib.error) as e:
        reason = _os_reason(e) if isinstance(e, OSError) else f"corrupt gzip data ({e})"
        raise _file_error(path, f"cannot read file: {reason} (checked in full, whatever --limit says)") from e


def _drain(records: Iterator) -> None:
    """Read the remaining records to the end: a corrupt gzip stream garbles lines before its checksum
    fails, and then the file error (IngestError) it raises is the problem to report, not the line."""
    for _ in records:
        pass


def _valid_shape(record: object) -> str | None:
    """The format in which `record` is a valid pair, or None."""
    try:
        shape = detect_format(record)
        _to_pair(record, shape, 0, 0)
    except (ValueError, _Invalid):
        return None
    return shape


def _no_pairs(result: IngestResult) -> str:
    if result.n_records == 0:
        return "no records (only blank lines, an empty array or no rows)"
    why = []
    if result.skipped:
        first = next(i for i in result.issues if i.severity == "error")
        why.append(f"{result.skipped} invalid (first: line {first.line}: {first.message})")
    if result.identical:
        why.append(f"{result.identical} with identical replies")
    return f"no valid pairs in {result.n_records} records: " + ", ".join(why)
