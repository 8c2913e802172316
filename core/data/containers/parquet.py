"""Parquet (.parquet): one record a row. Only Parquet users pay for importing pyarrow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from core.data.containers.base import Container
from core.data.records import file_error, first_line

_BATCH = 1024


def _table(path: Path):
    import pyarrow
    import pyarrow.parquet

    try:
        return pyarrow.parquet.read_table(path)
    except (pyarrow.ArrowException, OSError) as e:
        raise file_error(path, f"cannot read Parquet: {first_line(e)}") from e


def records(path: Path, suffix: str) -> Iterator[tuple[int, object]]:
    import pyarrow

    table = _table(path)
    number = 0
    try:
        for batch in table.to_batches(max_chunksize=_BATCH):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pyarrow.ArrowException, ValueError, OverflowError) as e:  # a value Python cannot hold
        raise file_error(path, f"cannot read Parquet record: {first_line(e)}", number + 1) from e


def raw(path: Path, suffix: str) -> tuple[Container, list]:
    """A one-row `pyarrow.Table` slice per record, which keeps the schema, so
    `pyarrow.concat_tables` of the kept slices writes them back."""
    table = _table(path)
    return PARQUET, [table.slice(i, 1) for i in range(table.num_rows)]


def write(f: BinaryIO, records: list, keep: list[int], source: Path, out: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables([records[i] for i in keep]) if keep else records[0].slice(0, 0)
    pq.write_table(table, f)


def removed(record) -> dict:
    return {"record": record.to_pylist()[0]}


def filter_shard(path: Path, dest: Path, marked: set[int], start: int, removed_rows: dict) -> int:
    """Copy `path`'s rows minus the marked ones to `dest`, batch by batch, keeping its schema (and
    the features `datasets` keeps in its metadata). Returns its number of rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    with pq.ParquetFile(path) as f, pq.ParquetWriter(dest, f.schema_arrow) as w:
        for batch in f.iter_batches(batch_size=_BATCH):
            rows = range(start + n, start + n + batch.num_rows)
            keep = pa.array([s not in marked for s in rows])
            for s in (s for s in rows if s in marked):
                removed_rows[s] = batch.slice(s - start - n, 1).to_pylist()[0]
            w.write_batch(batch.filter(keep))
            n += batch.num_rows
    return n


PARQUET = Container("parquet", (".parquet",), records, raw, write, removed, outputs=(".parquet",),
                    hf_builder="parquet", filter_shard=filter_shard)
