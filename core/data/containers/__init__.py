"""Input containers: how preference records are stored in a file, one module per container, found by
the file's name. `CONTAINERS` is the table that ingest, export, hfdata and rollout consult (and the
front ends' help, through core.views): a new container is one module defining a `Container` and one
line here."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from core.data.containers import json_array, jsonl, parquet
from core.data.containers.base import Container
from core.data.records import file_error, os_reason

CONTAINERS: tuple[Container, ...] = (
    jsonl.PLAIN,
    jsonl.GZIP,
    json_array.ARRAY,
    parquet.PARQUET,
)


def suffixes() -> tuple[str, ...]:
    """Every file suffix a container reads, in the table's order: (".jsonl", ".jsonl.gz", ...)."""
    return tuple(s for c in CONTAINERS for s in c.suffixes)


def describe(sep: str = ", ", last: str = " or ") -> str:
    """The readable suffixes as a person reads them: ".jsonl, .jsonl.gz, .json or .parquet"."""
    names = suffixes()
    return sep.join(names[:-1]) + last + names[-1] if len(names) > 1 else "".join(names)


def container_of(path: str | Path) -> tuple[Container, str] | None:
    """The container that reads `path`, found by the longest suffix its name ends with (so
    ".jsonl.gz" wins over ".gz"), and that suffix; None when no container reads it."""
    name = Path(path).name.lower()
    found = [(s, c) for c in CONTAINERS for s in c.suffixes if name.endswith(s)]
    if not found:
        return None
    suffix, container = max(found, key=lambda sc: len(sc[0]))
    return container, suffix


def open_file(path: Path) -> tuple[Container, str]:
    """The container and suffix of a file that can be read, or IngestError saying why it cannot:
    missing, a broken link, a directory or device, no known suffix, empty, or refused by the
    container's own check (UTF-16 text)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise file_error(path, f"broken symbolic link (to {os.readlink(path)})") from None
        raise file_error(path, "file not found") from None
    except OSError as exc:  # a symlink loop, a path through a file, a name too long
        raise file_error(path, f"cannot open: {os_reason(exc)}") from None
    if path.is_dir():
        raise file_error(path, "is a directory, not a file")
    if not path.is_file():
        raise file_error(path, "not a regular file (a device, pipe or socket)")
    found = container_of(path)
    if found is None:
        raise file_error(path, f"unsupported file type; expected one of {', '.join(suffixes())}")
    if st.st_size == 0:
        raise file_error(path, "empty file: it holds no records")
    container, suffix = found
    if container.check is not None:
        container.check(path, suffix)
    return container, suffix


def read_records(path: Path) -> Iterator[tuple[int, object]]:
    """(number, record or the exception that stopped it) for every record of the file at `path`
    (see Container.records). Raises IngestError as `open_file` does, or when the file is unreadable
    as a whole."""
    container, suffix = open_file(path)
    yield from container.records(path, suffix)


def read_raw(path: Path) -> tuple[Container, list]:
    """The records of the file at `path` as stored, and the container that writes them back (see
    Container.raw). Raises IngestError as `read_records` does."""
    container, suffix = open_file(path)
    return container.raw(path, suffix)
