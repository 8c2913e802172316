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
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import IngestError

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


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(_ALL_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def _file_error(path: str | Path, message: str, line: int = 0) -> IngestError:
    return IngestError(Issue(str(path), line, "", message, "error"))


def _check_file(path: Path) -> str:
    """Return the file's supported suffix, or raise IngestError saying why it cannot be read."""
    if not path.exists():
        raise _file_error(path, "file not found")
    if not path.is_file():
        raise _file_error(path, "not a file")
    suffix = _suffix(path)
    if not suffix:
        expected = ", ".join(_ALL_SUFFIXES)
        raise _file_error(path, f"unsupported file type; expected one of {expected}")
    return suffix


def _is_json_array(path: Path) -> bool:
    """True when a .json file holds one array rather than JSON lines."""
    with path.open("rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _jsonl_lines(path: Path, suffix: str) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line bytes without the newline) for non-blank lines.

    Lines are split on b"\\n" only, so a CRLF file keeps its "\\r" and written-back lines
    stay byte-identical.
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
    except (OSError, EOFError) as e:  # truncated or corrupt gzip, unreadable file
        raise _file_error(path, f"cannot read file: {e}", line_number + 1) from e


def _decode_line(line_number: int, raw: bytes) -> object:
    """Parse one JSONL line; return the record, or the exception that stopped it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return e
    if line_number == 1:
        text = text.removeprefix("\ufeff")  # a BOM is legal in UTF-8 files; json rejects it
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        return e


def _load_json_array(path: Path) -> list:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise _file_error(path, f"not valid UTF-8: byte 0x{data[e.start]:02x}", line) from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _file_error(path, f"invalid JSON: {e.msg} (column {e.colno})", e.lineno) from e


def _read_parquet(path: Path):
    import pyarrow  # only Parquet users pay for the import
    import pyarrow.parquet

    try:
        return pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise _file_error(path, f"cannot read Parquet: {e}") from e


def iter_records(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield every record of a preference file in source order.

    Takes a path to a .jsonl, .jsonl.gz, .json (an array, or JSON lines saved as .json)
    or .parquet file. Yields (number, record) where number is the 1-based line for JSON
    lines and the 1-based record number for arrays and Parquet. A JSON line that cannot
    be decoded or parsed yields the UnicodeDecodeError or json.JSONDecodeError in place
    of the record, so one bad line never stops the file. Blank lines are not records
    but still count in line numbers.

    Raises IngestError when the file is missing, of an unsupported type, or unreadable
    as a whole (a broken JSON array, a corrupt gzip or Parquet file).
    """
    path = Path(path)
    suffix = _check_file(path)
    if suffix == ".parquet":
        table = _read_parquet(path)
        number = 0
        for batch in table.to_batches(max_chunksize=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    elif suffix == ".json" and _is_json_array(path):
        yield from enumerate(_load_json_array(path), start=1)
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
    keys = ", ".join(sorted(record)) or "none"
    raise ValueError(
        f"unrecognised record shape (keys: {keys}); expected prompt/chosen/rejected, "
        "HH-RLHF chosen/rejected transcripts, or ShareGPT conversations"
    )


_TYPE_NAMES = {str: "string", list: "list", dict: "object", bool: "boolean", type(None): "null"}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), "number" if isinstance(value, int | float) else "value")


def _get(obj: dict, key: str, expected: type | tuple[type, ...], where: str) -> object:
    """Return obj[key] if present and of the expected type; ``where`` names it in issues."""
    if key not in obj:
        raise _Invalid(where, "missing field")
    value = obj[key]
    if not isinstance(value, expected):
        types = expected if isinstance(expected, tuple) else (expected,)
        wanted = " or ".join(_TYPE_NAMES[t] for t in types)
        raise _Invalid(where, f"expected {wanted}, got {_type_name(value)}")
    return value


def _field(record: dict, name: str, expected: type | tuple[type, ...]) -> object:
    return _get(record, name, expected, name)


def _message(value: object, where: str) -> Message:
    """Check one {role, content} message and return it with only those two keys."""
    if not isinstance(value, dict):
        raise _Invalid(where, f"expected object, got {_type_name(value)}")
    role = _get(value, "role", str, f"{where}.role")
    if role not in _ROLE_LABELS:
        raise _Invalid(f"{where}.role", f"unknown role '{role}'")
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
        raise _Invalid(f"{where}.from", f"unknown role '{speaker}'")
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
    if not prompt.strip():
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
        prompt = [{"role": "user", "content": prompt}]
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


def _to_pair(record: object, format: str, source_index: int, line: int) -> Pair:
    """Turn one record of a known format into a Pair, or raise _Invalid saying why not."""
    if not isinstance(record, dict):
        raise _Invalid("", f"record is not a JSON object (got {_type_name(record)})")
    prompt, chosen, rejected = _PARSERS[format](record)
    if not any(m["role"] == "user" for m in prompt):
        raise _Invalid("prompt", "no user message in the prompt")
    if not chosen.strip():
        raise _Invalid("chosen", "empty reply")
    if not rejected.strip():
        raise _Invalid("rejected", "empty reply")
    if chosen == rejected:
        # Identical replies give DPO no preference to learn, only noise.
        raise _Invalid("rejected", "chosen and rejected replies are identical")
    return Pair(source_index, line, tuple(prompt), chosen, rejected)


def _parse_error_message(error: UnicodeDecodeError | json.JSONDecodeError) -> str:
    if isinstance(error, UnicodeDecodeError):
        return (
            f"not valid UTF-8: byte 0x{error.object[error.start]:02x} at column {error.start + 1}"
        )
    return f"invalid JSON: {error.msg} (column {error.colno})"


def read_pairs(
    path: str | Path,
    format: str | None = None,
    skip_invalid: bool = False,
    limit: int | None = None,
) -> IngestResult:
    """Read the preference pairs of a file and report every record that is not one.

    Takes a .jsonl, .jsonl.gz, .json or .parquet path; ``format``, one of FORMATS, or
    None to take the shape of the first record that has a recognisable one; with
    ``skip_invalid`` invalid records are left out and each reported in ``issues``
    instead of raising; ``limit`` stops reading after that many valid pairs.

    Returns an IngestResult whose pairs keep their source_index (position among all
    records) so they can be matched to ``raw_records``; len(pairs) + skipped ==
    n_records.

    Raises IngestError for an unknown ``format``, a file that cannot be read as a whole
    (see ``iter_records``), and, unless ``skip_invalid``, the first invalid record.
    """
    if format is not None and format not in FORMATS:
        expected = ", ".join(FORMATS)
        raise _file_error(path, f"unknown format '{format}'; expected one of {expected}")
    result = IngestResult(
        pairs=[], issues=[], format=format or "unknown", path=str(path), n_records=0
    )

    def reject(line: int, field: str, message: str) -> None:
        issue = Issue(str(path), line, field, message, "error")
        if not skip_invalid:
            raise IngestError(issue)
        result.issues.append(issue)

    for source_index, (line, record) in enumerate(iter_records(path)):
        result.n_records += 1
        if isinstance(record, Exception):
            reject(line, "", _parse_error_message(record))
            continue
        if result.format == "unknown":
            try:
                result.format = detect_format(record)
            except ValueError as e:
                reject(line, "", str(e))
                continue
        try:
            result.pairs.append(_to_pair(record, result.format, source_index, line))
        except _Invalid as e:
            reject(line, e.field, e.message)
            continue
        if limit is not None and len(result.pairs) >= limit:
            break

    if result.n_records == 0:
        result.issues.append(Issue(str(path), 0, "", "file holds no records", "warning"))
    return result
