"""Read preference pairs from the common dataset formats, reporting every bad record.

A preference file is one of the containers in ``core.data.containers.CONTAINERS`` (JSONL,
optionally gzipped, a JSON array, Parquet). Each record is one pair in one of the shapes in
``core.data.shapes.SHAPES`` (``FORMATS``: TRL "standard" strings, TRL "conversational" message
lists, Anthropic HH-RLHF transcripts, ShareGPT). This module joins the two tables: every record
that cannot become a pair becomes an ``Issue`` naming the file, line and field; nothing is dropped
without one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.data import containers, shapes
from core.data.records import Invalid, Issue, Message, Pair, file_error
from core.data.shapes.base import clip, is_blank, type_name
from core.errors import IngestError, UsageError

__all__ = ["FORMATS", "IngestError", "IngestResult", "Issue", "Message", "Pair", "detect_format", "is_blank",
           "iter_records", "raw_records", "read_pairs"]

FORMATS = shapes.formats()  # the record shapes (core.data.shapes.SHAPES)


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


# --- reading records (core.data.containers) ------------------------------------------


def iter_records(path: str | Path) -> Iterator[tuple[int, object]]:
    """Yield every record of a preference file in source order.

    Takes a path to a file of one of the containers (core.data.containers: .jsonl, .jsonl.gz,
    .json, an array or JSON lines, .parquet). Yields (number, record) where number is the 1-based
    line for JSON lines and the 1-based record number for arrays and Parquet. A JSON line that cannot
    be decoded or parsed yields the UnicodeDecodeError or ValueError (json.JSONDecodeError,
    or nesting/number limits) in place of the record, so one bad line never stops the file.
    Blank lines are not records but still count in line numbers.

    Raises IngestError when the file is missing, empty, of an unsupported type, or unreadable
    as a whole (a broken JSON array, a corrupt or truncated gzip or Parquet file).
    """
    yield from containers.read_records(Path(path))


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
    return containers.read_raw(Path(path))[1]


# --- recognising formats (core.data.shapes) -----------------------------------------


def detect_format(record: dict) -> str:
    """Return which of FORMATS a record's shape is, judging by its keys and types only.

    Takes one parsed record. Raises ValueError, with a message fit for an Issue, when
    the record is not an object or matches no known shape.
    """
    if not isinstance(record, dict):
        raise ValueError(f"record is not a JSON object (got {type_name(record)})")
    for shape in shapes.by_precedence():
        if shape.detect(record):
            return shape.name
    keys = ", ".join(clip(k, 30) for k in sorted(record, key=str)[:12]) or "none"
    if len(record) > 12:
        keys += f", ... ({len(record)} keys)"
    expects = list(dict.fromkeys(s.expects for s in shapes.SHAPES.values()))
    listed = ", ".join(expects[:-1]) + ", or " + expects[-1] if len(expects) > 1 else expects[0]
    raise ValueError(f"unrecognised record shape (keys: {keys}); expected {listed}")


def _to_pair(record: object, format: str, source_index: int, line: int) -> Pair:
    """Turn one record of a known format into a Pair, or raise Invalid saying why not."""
    if not isinstance(record, dict):
        raise Invalid("", f"record is not a JSON object (got {type_name(record)})")
    shape = shapes.SHAPES[format]
    prompt, chosen, rejected = shape.parse(record)
    if not any(m["role"] == "user" for m in prompt):
        # reported at the field that holds the prompt
        raise Invalid(shape.prompt_field if shape.prompt_field in record else "chosen",
                      "no user message in the prompt")
    if is_blank(chosen):
        raise Invalid("chosen", "empty reply")
    if is_blank(rejected):
        raise Invalid("rejected", "empty reply")
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

    Takes a path ``iter_records`` reads, or a ``core.data.hfdata.HFSource``; ``format``, one of FORMATS, or
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
    if format is not None and format not in shapes.SHAPES:
        expected = ", ".join(shapes.SHAPES)
        raise file_error(path, f"unknown format '{format}'; expected one of {expected}")
    if limit is not None and limit < 1:
        raise UsageError(f"limit {limit}: must be at least 1 pair")
    result = IngestResult(
        pairs=[], issues=[], format=format or "unknown", path=str(path), n_records=0
    )

    # A Hugging Face dataset (core.data.hfdata.HFSource) hands over its own records: same shapes, same checks.
    from_source = hasattr(path, "records")
    records = path.records() if from_source else iter_records(path)
    found = None if from_source else containers.container_of(path)
    # a compressed stream shows corruption only at its end (core.data.containers.Container.verify)
    verify = found[0].verify if found else None

    def reject(line: int, field: str, message: str) -> None:
        issue = Issue(str(path), line, field, message, "error")
        if not skip_invalid:
            if verify:
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
        except Invalid as e:
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
            if verify:  # the pairs read are only trustworthy once the whole stream checks out
                verify(Path(path))
            break

    if not result.pairs:
        raise file_error(path, _no_pairs(result))
    return result


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
    except (ValueError, Invalid):
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
