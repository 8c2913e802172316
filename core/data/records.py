"""What a preference file's records become: a `Pair`, or an `Issue` naming the file, line and field.

Shared by the containers (core.data.containers: how records are stored), the shapes
(core.data.shapes: how one record is a pair) and core.data.ingest, which joins the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import IngestError

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}

ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


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
        return "\n\n".join(f"{ROLE_LABELS[m['role']]}: {m['content']}" for m in self.prompt)


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


class Invalid(Exception):
    """Why one record is not a pair; read_pairs turns it into an Issue for that record."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def file_error(path: str | Path, message: str, line: int = 0) -> IngestError:
    """An IngestError about a file as a whole (`line` 0) or the line where reading it stopped."""
    return IngestError(Issue(str(path), line, "", message, "error"))


def os_reason(exc: OSError) -> str:
    """An OSError as a person reads it: "Permission denied", "Is a directory", ..."""
    return exc.strerror or str(exc) or type(exc).__name__


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (Arrow and `datasets` write several)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
