"""Export: the source records that are not marked, in their original format and order.

Each source's container (core.data.containers) writes its own records back: JSONL (and .jsonl.gz)
byte-identical to the source lines; JSON arrays and Parquet keep their format. Beside the output, `FILE.removed.jsonl` holds one line per removed
pair: its source_index, line, reason, scope, who/when, the features that flagged it, and the removed
record itself, so a person can review or restore it: `source_line` (JSON lines sources: the exact
text of the source line, `jq -r .source_line` writes it back byte for byte) or `record` (JSON arrays
and Parquet: the record as JSON).

Crash safety: both files are written in full to hidden temporary names (`.NAME.tmp-PID`), flushed
to disk, then renamed (manifest first, then output), so nothing partial ever appears under a final
name. A killed export leaves its temporary files behind; the next export into the same folder
removes those whose process is gone.

Nothing is destroyed: neither file may be, or resolve to, the source dataset or a file inside a
workspace, nor be a symbolic link (dangling or looping too) or something other than a regular file
(a FIFO, a device), with or without overwrite; without overwrite neither may exist. The checks run
before anything is written and again just before the renames.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from core.data import containers
from core.data.containers.base import Container, json_bytes
from core.errors import ExportError, IngestError
from core.processes import alive
from core.data.marks import Marks
from core.data.workspace import Workspace, file_sha256


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: Path
    n_kept: int
    n_removed: int
    n_records: int
    n_stale_removed: int = 0  # temporary files of killed exports that this export cleaned up


def _tmp_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp-{pid}")


def remove_stale_temps(*paths: Path) -> int:
    """Delete `.NAME.tmp-PID` files of these paths left by exports whose process is gone (a kill -9,
    a power cut); returns how many. A temporary file of a live process is left alone."""
    n = 0
    for path in paths:
        pattern = re.compile(re.escape(f".{path.name}.tmp-") + r"(\d+)$")
        try:
            entries = list(path.parent.iterdir())
        except OSError:
            continue
        for entry in entries:
            m = pattern.match(entry.name)
            if m and int(m.group(1)) != os.getpid() and not alive(int(m.group(1))):
                try:
                    entry.unlink()
                    n += 1
                except OSError:
                    pass
    return n


def _write_tmp(path: Path, write) -> Path:
    """Write `path`'s temporary file with `write(binary file)`, flushed to disk; returns its name."""
    tmp = _tmp_name(path, os.getpid())
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _publish(tmp: Path, path: Path, overwrite: bool = False) -> None:
    """Give `tmp` its final name, atomically: readers see the old file or the whole new one. Without
    `overwrite` a hard link makes the name, which fails when something took it since the checks (it
    never replaces what appeared meanwhile)."""
    if not overwrite:
        try:
            os.link(tmp, path)
        except FileExistsError:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"{path} appeared while exporting; pass --overwrite to replace it") from None
        except OSError:  # a file system without hard links: the checks made just before stand
            os.replace(tmp, path)
        else:
            tmp.unlink()
        return
    os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _check_out(out: Path, source: Path, workspace: Path, overwrite: bool) -> None:
    """Raise ExportError unless `out` and its manifest may be written (module doc: what is refused)."""
    if out.is_dir() and not out.is_symlink():
        raise ExportError(f"{out} is a directory; name the file to write (e.g. {out / ('clean' + _suffix(source))})")
    manifest = _manifest_of(out)
    if manifest.is_dir() and not manifest.is_symlink():
        raise ExportError(f"{manifest} is a directory; it is where the removed pairs go")
    for target in (out, manifest):
        _check_target(target, source, workspace, overwrite)


def _manifest_of(out: Path) -> Path:
    return out.with_name(out.name + ".removed.jsonl")


def _check_target(target: Path, source: Path, workspace: Path, overwrite: bool) -> None:
    """Refuse to write `target` (the output or its manifest) when that could destroy data: it is, or
    resolves to, the source dataset or a file of a workspace; it is a symbolic link (dangling or not)
    or not a regular file (a FIFO, a device); or it exists and `overwrite` is off."""
    role = "the removed-pairs manifest" if target.name.endswith(".removed.jsonl") else "the output"
    if target.is_symlink():
        raise ExportError(f"{target} ({role}) is a symbolic link; export writes only to a new or regular "
                          f"file, name the file itself")
    try:
        resolved = target.resolve()
        st = target.stat() if target.exists() else None
    except (OSError, RuntimeError) as exc:  # a symlink loop above it, a path through a file
        raise ExportError(f"cannot write {target}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        src_st = source.stat()
    except OSError:
        src_st = None
    if resolved == source.resolve() or (st is not None and src_st is not None
                                        and (st.st_dev, st.st_ino) == (src_st.st_dev, src_st.st_ino)):
        raise ExportError(f"refusing to overwrite the source dataset {source} with {role} ({target}); "
                          f"choose another --out")
    inside = _workspace_above(resolved)
    if inside is not None or resolved.is_relative_to(workspace.resolve()):
        raise ExportError(f"refusing to write {role} {target} inside the workspace "
                          f"{inside or workspace}; choose a path outside it")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ExportError(f"{target} ({role}) exists and is not a regular file (a pipe, device or "
                          f"socket); export never replaces one, choose another --out")
    if st is not None and not overwrite:
        raise ExportError(f"{target} ({role}) exists; pass --overwrite to replace it")


def _workspace_above(path: Path) -> Path | None:
    """The nearest folder above `path` that is a datadebug workspace (holds meta.lance), or None."""
    for folder in path.parents:
        if (folder / "meta.lance").is_dir():
            return folder
    return None


def _check_format(out: Path, source: Path, writer: Container) -> None:
    suffix = _suffix(out)
    if suffix and suffix not in writer.outputs:
        raise ExportError(
            f"{out}: a {suffix} name for a {_suffix(source)} source; the cleaned file keeps the source's format "
            f"({' or '.join(writer.outputs)})"
        )


def _suffix(path: Path) -> str:
    found = containers.container_of(path)
    return found[1] if found else ""


def _writer(writer: Container, records: list, keep: list[int], source: Path, out: Path):
    """A function writing the kept records to a binary file in the source's format."""
    return lambda f: writer.write(f, records, keep, source, out)


def export_clean(ws: Workspace, out: Path | str, overwrite: bool = False) -> ExportResult:
    """Write the unmarked records of the workspace's source dataset to `out` (+ `out.removed.jsonl`).

    Every source record that is not marked is kept, including records that were not indexed
    (invalid or beyond --limit): export removes only what a person marked.
    Raises ExportError if `out` or its manifest is (or resolves to) the source or a workspace file,
    is a symbolic link, a directory or not a regular file, exists (unless overwrite), has another
    format's name, cannot be written, or the source changed since indexing.
    """
    out = Path(out)
    meta = ws.meta()
    source = Path(meta.get("dataset", ""))
    if not source.is_file():
        raise ExportError(f"the workspace's source dataset {source} is gone")
    _check_out(out, source, ws.path, overwrite)
    if file_sha256(source) != meta.get("dataset_sha256"):
        raise ExportError(f"{source} changed since it was indexed; re-index before exporting")
    try:
        writer, records = containers.read_raw(source)
    except IngestError as exc:
        raise ExportError(f"cannot read the source dataset again: {exc}") from exc
    _check_format(out, source, writer)
    manifest = _manifest_of(out)
    marks = Marks(ws).marked
    removed = sorted(s for s in marks if 0 <= s < len(records))
    keep = [i for i in range(len(records)) if i not in marks]
    line_of = _source_lines(ws, removed)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temps(out, manifest)
        write = _writer(writer, records, keep, source, out)

        def write_manifest(f):
            for s in removed:
                info = marks[s]
                entry = {"source_index": s, "line": line_of.get(s), "reason": info.reason, "scope": info.scope,
                         "features": list(info.features), "who": info.who, "when": info.when,
                         **writer.removed(records[s])}
                f.write(json_bytes(entry) + b"\n")

        tmp_out = _write_tmp(out, write)
        try:
            tmp_manifest = _write_tmp(manifest, write_manifest)
        except BaseException:
            tmp_out.unlink(missing_ok=True)
            raise
        try:  # again, just before: the folder may have changed while the files were written
            _check_out(out, source, ws.path, overwrite)
            _publish(tmp_manifest, manifest, overwrite)  # an output never stands without its manifest
        except BaseException:
            tmp_out.unlink(missing_ok=True)
            tmp_manifest.unlink(missing_ok=True)
            raise
        _publish(tmp_out, out, overwrite)
        _fsync_dir(out.parent)
    except OSError as exc:
        where = exc.filename or out
        raise ExportError(f"cannot write {where}: {exc.strerror or exc}") from exc
    except RecursionError:
        raise ExportError(f"a record of {source} is nested too deeply to write back as JSON") from None
    return ExportResult(out, manifest, len(keep), len(removed), len(records), stale)


def _source_lines(ws: Workspace, source_indices: list[int]) -> dict[int, int]:
    """source_index -> its line (JSON lines) or record number in the source, for indexed pairs."""
    if not source_indices or not ws.has("pairs"):
        return {}
    wanted = set(source_indices)
    t = ws.pairs_columns(["source_index", "line"])
    return {s: ln for s, ln in zip(t["source_index"].to_pylist(), t["line"].to_pylist()) if s in wanted}
