"""Export: the source records that are not marked, in their original format and order.

JSONL (and .jsonl.gz) records are written back byte-identical to their source lines; JSON arrays
and Parquet keep their format. Beside the output, `FILE.removed.jsonl` holds one line per removed
pair: its source_index, line, reason, scope, who/when, the features that flagged it, and the removed
record itself, so a person can review or restore it: `source_line` (JSON lines sources: the exact
text of the source line, `jq -r .source_line` writes it back byte for byte) or `record` (JSON arrays
and Parquet: the record as JSON).

Crash safety: both files are written in full to hidden temporary names (`.NAME.tmp-PID`), flushed
to disk, then renamed (manifest first, then output), so nothing partial ever appears under a final
name. A killed export leaves its temporary files behind; the next export into the same folder
removes those whose process is gone.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import ExportError, IngestError
from core.ingest import raw_records
from core.marks import Marks
from core.workspace import Workspace, file_sha256


@dataclass(frozen=True)
class ExportResult:
    out: Path
    manifest: Path
    n_kept: int
    n_removed: int
    n_records: int
    n_stale_removed: int = 0  # temporary files of killed exports that this export cleaned up


# Output names each kind of source may be written to (the reader picks the format by the name).
_FAMILIES = {"lines": (".jsonl", ".jsonl.gz", ".json"), "array": (".json",), "parquet": (".parquet",)}
_KNOWN = (".jsonl.gz", ".jsonl", ".json", ".parquet")


def _tmp_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp-{pid}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


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
            if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
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


def _publish(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)  # atomic: readers see the old file or the whole new one


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


def _ends_with_newline(path: Path, gz: bool) -> bool:
    if gz:
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


def _family(source: Path, records: list) -> str:
    if source.name.lower().endswith(".parquet"):
        return "parquet"
    return "lines" if isinstance(records[0] if records else b"", (bytes, bytearray)) else "array"


def _check_out(out: Path, source: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise ExportError(f"{out} is a directory; name the file to write (e.g. {out / ('clean' + _suffix(source))})")
    if out.exists() and out.resolve() == source.resolve():
        raise ExportError(f"refusing to overwrite the source dataset {source}")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists (pass overwrite to replace it)")
    manifest = out.with_name(out.name + ".removed.jsonl")
    if manifest.is_dir():
        raise ExportError(f"{manifest} is a directory; it is where the removed pairs go")


def _check_format(out: Path, source: Path, family: str) -> None:
    suffix = _suffix(out)
    if suffix and suffix not in _FAMILIES[family]:
        raise ExportError(
            f"{out}: a {suffix} name for a {_suffix(source)} source; the cleaned file keeps the source's format "
            f"({' or '.join(_FAMILIES[family])})"
        )


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in _KNOWN if name.endswith(s)), "")


def _writer(records: list, keep: list[int], family: str, gz: bool, ends_nl: bool):
    """A function writing the kept records to a binary file in the source's format."""
    if family == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        def write(f):
            table = pa.concat_tables([records[i] for i in keep]) if keep else records[0].slice(0, 0)
            pq.write_table(table, f)
    elif family == "lines":
        def write(f):
            out = gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) if gz else f
            for j, i in enumerate(keep):
                last = j == len(keep) - 1
                # the source's last-line convention too, so no marks gives back the same bytes
                out.write(records[i] + (b"\n" if (not last or ends_nl) else b""))
            if gz:
                out.close()
    else:  # JSON array
        def write(f):
            f.write(_json_bytes([records[i] for i in keep], indent=1))
    return write


_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_bytes(obj, indent: int | None = None) -> bytes:
    """UTF-8 JSON of `obj`; lone surrogates (a record's escaped "\\ud800", or a non-UTF-8 byte
    kept by surrogateescape) stay escaped, so the text is valid UTF-8 and parses back to `obj`."""
    text = json.dumps(obj, ensure_ascii=False, indent=indent, default=str)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text).encode("utf-8")


def _removed_record(records: list, i: int, family: str) -> dict:
    """The removed record as the manifest holds it (module doc)."""
    if family == "lines":
        return {"source_line": records[i].decode("utf-8", "surrogateescape")}
    if family == "parquet":
        return {"record": records[i].to_pylist()[0]}
    return {"record": records[i]}


def export_clean(ws: Workspace, out: Path | str, overwrite: bool = False) -> ExportResult:
    """Write the unmarked records of the workspace's source dataset to `out` (+ `out.removed.jsonl`).

    Every source record that is not marked is kept, including records that were not indexed
    (invalid or beyond --limit): export removes only what a person marked.
    Raises ExportError if `out` is the source, a directory, exists (unless overwrite), has another
    format's name, cannot be written, or the source changed since indexing.
    """
    out = Path(out)
    meta = ws.meta()
    source = Path(meta.get("dataset", ""))
    if not source.is_file():
        raise ExportError(f"the workspace's source dataset {source} is gone")
    _check_out(out, source, overwrite)
    if file_sha256(source) != meta.get("dataset_sha256"):
        raise ExportError(f"{source} changed since it was indexed; re-index before exporting")
    try:
        records = raw_records(source)
    except IngestError as exc:
        raise ExportError(f"cannot read the source dataset again: {exc}") from exc
    family = _family(source, records)
    _check_format(out, source, family)
    manifest = out.with_name(out.name + ".removed.jsonl")
    marks = Marks(ws).marked
    removed = sorted(s for s in marks if 0 <= s < len(records))
    keep = [i for i in range(len(records)) if i not in marks]
    line_of = _source_lines(ws, removed)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stale = remove_stale_temps(out, manifest)
        write = _writer(records, keep, family, out.name.lower().endswith(".gz"),
                        family == "lines" and _ends_with_newline(source, source.name.lower().endswith(".gz")))

        def write_manifest(f):
            for s in removed:
                info = marks[s]
                entry = {"source_index": s, "line": line_of.get(s), "reason": info.reason, "scope": info.scope,
                         "features": list(info.features), "who": info.who, "when": info.when,
                         **_removed_record(records, s, family)}
                f.write(_json_bytes(entry) + b"\n")

        tmp_out = _write_tmp(out, write)
        try:
            tmp_manifest = _write_tmp(manifest, write_manifest)
        except BaseException:
            tmp_out.unlink(missing_ok=True)
            raise
        _publish(tmp_manifest, manifest)  # an output never stands without its manifest
        _publish(tmp_out, out)
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
