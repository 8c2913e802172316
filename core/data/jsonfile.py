"""Reading one small JSON file (a validation report, a truth file, published labels, concepts) with
the project's one-line errors: the file, the line where parsing stopped, and why."""

from __future__ import annotations

import json
from pathlib import Path

from core.errors import DatadebugError


def read_json_file(path: Path | str, what: str, error: type[DatadebugError]) -> object:
    """The parsed content of `path`. Raises `error` with "PATH: cannot read WHAT (why)" when the file
    cannot be read, "PATH:LINE: WHAT is not valid JSON (why)" when it does not parse, and "PATH: WHAT
    is not valid JSON (why)" for bytes that are no UTF-8 or nesting too deep for Python."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not valid JSON (not UTF-8 at byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: {what} is not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # nested too deeply, an integer too long for int()
        raise error(f"{path}: {what} is not valid JSON ({str(exc).split(':')[0] or type(exc).__name__})") from None
