"""Export: the source records that are not marked, in their original format and order.

JSONL (and .jsonl.gz) records are written back byte-identical to their source lines; JSON arrays
and Parquet keep their format. Beside the output, `FILE.removed.jsonl` lists every removed pair
with its source_index, reason, who/when and the features that flagged it. Both files are written
to a temporary name and renamed, so a crash never leaves a half-written export.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import ExportError
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


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _ends_with_newline(path: Path, gz: bool) -> bool:
    if gz:
        with gzip.open(path, "rb") as f:
            data = f.read()
        return data.endswith(b"\n")
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def export_clean(ws: Workspace, out: Path | str, overwrite: bool = False) -> ExportResult:
    """Write the unmarked records of the workspace's source dataset to `out` (+ `out.removed.jsonl`).

    Every source record that is not marked is kept, including records that were not indexed
    (invalid or beyond --limit): export removes only what a person marked.
    Raises ExportError if `out` is the source, exists (unless overwrite), or the source changed since indexing.
    """
    out = Path(out)
    meta = ws.meta()
    source = Path(meta.get("dataset", ""))
    if not source.is_file():
        raise ExportError(f"the workspace's source dataset {source} is gone")
    if out.resolve() == source.resolve():
        raise ExportError(f"refusing to overwrite the source dataset {source}")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists (pass overwrite to replace it)")
    if file_sha256(source) != meta.get("dataset_sha256"):
        raise ExportError(f"{source} changed since it was indexed; re-index before exporting")
    marks = Marks(ws).marked
    records = raw_records(source)
    removed = sorted(s for s in marks if 0 <= s < len(records))
    keep = [i for i in range(len(records)) if i not in marks]
    name = source.name.lower()
    out.parent.mkdir(parents=True, exist_ok=True)

    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        def write(tmp):
            table = pa.concat_tables([records[i] for i in keep]) if keep else records[0].slice(0, 0)
            pq.write_table(table, tmp)
    elif isinstance(records[0] if records else b"", (bytes, bytearray)):
        gz = out.name.lower().endswith(".gz")

        # Reproduce the source's last-line convention too, so no marks gives back the same bytes.
        ends_nl = _ends_with_newline(source, name.endswith(".gz"))

        def write(tmp):
            opener = gzip.open if gz else open
            with opener(tmp, "wb") as f:
                for j, i in enumerate(keep):
                    last = j == len(keep) - 1
                    f.write(records[i] + (b"\n" if (not last or ends_nl) else b""))
    else:  # JSON array
        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump([records[i] for i in keep], f, ensure_ascii=False, indent=1)

    _atomic_write(out, write)
    manifest = out.with_name(out.name + ".removed.jsonl")

    def write_manifest(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            for s in removed:
                info = marks[s]
                f.write(json.dumps({
                    "source_index": s, "reason": info.reason, "scope": info.scope,
                    "features": list(info.features), "who": info.who, "when": info.when,
                }, ensure_ascii=False) + "\n")

    _atomic_write(manifest, write_manifest)
    return ExportResult(out, manifest, len(keep), len(removed), len(records))
