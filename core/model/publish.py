"""A store folder (the model's float copy, a shipped or trained SAE) is written whole or not at all,
however many processes make it at once (two commands on a fresh machine, parallel test workers):
each writes a folder of its own, `partial_folder`, and `publish` renames it into place; the first to
finish wins and the others drop their copies. A shared half-written folder let one process delete
another's work."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from core.processes import alive

PARTIAL = ".partial"  # in the name of a folder being written (store listings skip them)


def partial_folder(out: Path) -> Path:
    """An empty folder name of this process's own, beside `out`, to write `out` in. The partial folders
    of `out` that processes no longer running left (killed mid-write) are removed first: a model's
    float copy is ~0.5 GB."""
    for old in out.parent.glob(f"{out.name}{PARTIAL}-*"):
        pid = old.name.rsplit("-", 1)[1]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    tmp = out.with_name(f"{out.name}{PARTIAL}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish(tmp: Path, out: Path, ready: Callable[[Path], bool]) -> None:
    """Move the folder `tmp` to `out` in one rename. When `out` is already `ready` (another process
    published it) `tmp` is dropped; an `out` that is not ready (left by a killed run) is replaced."""
    if ready(out):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    shutil.rmtree(out, ignore_errors=True)
    try:
        tmp.rename(out)
    except OSError:  # another process published it between the check and the rename
        shutil.rmtree(tmp, ignore_errors=True)
        if not ready(out):
            raise
