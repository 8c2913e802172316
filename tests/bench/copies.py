"""Workspaces of planted and label-shuffled copies, spliced from their base instead of re-read.

A planted copy of a file (core.data.plant) differs from its base only in the planted pairs' chosen
replies, and indexing reads each pair on its own (its prompt, then each reply), so the copy's
workspace is the base workspace, indexed with the same SAE and settings, with the planted pairs'
rows replaced by the rows of an index of those pairs alone. A label-shuffled copy is the base
workspace with the chosen and rejected columns exchanged in the swapped pairs. Both are written as
proper workspaces (core.data.workspace): the meta names the copy file, written beside, with its sha256,
so a Session opens them like any indexed workspace. tests/unit/test_copies.py shows that both equal
a full `index` of the copy file to float tolerance, which is what lets the calibration bench read
a 1,000-pair dataset through the model once instead of once per copy.

    splice_planted(base_ws, only_ws, kind, rate, seed, out_ws)   planted copy at one rate
    swap_labels(base_ws, seed, out_ws)                           a random half of the pairs swapped
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core.data.ingest import iter_records
from core.data.plant import plant_records, with_labels_swapped, write_records
from core.data.workspace import PAIRS_SCHEMA, Workspace, file_sha256

SIDE_COLUMNS = [name[len("chosen"):] for name in PAIRS_SCHEMA.names if name.startswith("chosen")]  # "", "_tokens", ...


def _dataset(ws: Workspace) -> Path:
    return Path(ws.meta()["dataset"])


def _write_workspace(base: Workspace, pairs: pa.Table, data: Path, out: Path | str) -> Workspace:
    """A workspace at `out` holding `pairs` (PAIRS_SCHEMA) and `base`'s meta and feature table, its
    meta naming the copy file `data` (one record a line: pair i on line i + 1). Whatever was at `out`
    is replaced."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    ws = Workspace(out, create=True)
    ws.write_meta({**base.meta(), "dataset": str(data.resolve()), "dataset_sha256": file_sha256(data)})
    pairs = pairs.sort_by("source_index")
    lines = pc.add(pairs["source_index"], 1)
    ws.add_pairs(pairs.set_column(pairs.schema.get_field_index("line"), "line", lines).cast(PAIRS_SCHEMA))
    if base.has("features"):
        ws.write_features(base.table("features").to_arrow())
    return ws


def _all_pairs(ws: Workspace) -> pa.Table:
    return ws.pairs_columns(PAIRS_SCHEMA.names)


def only_planted_file(base_data: Path | str, kind: str, rate: float, out: Path | str, seed: int = 0) -> list[int]:
    """Write the planted records of (kind, rate, seed) of `base_data` alone to `out`, in the order of
    their source indices in the copy; returns those indices (row j of `out` is copy pair planted[j]).
    Index `out` with the base's SAE and settings for `splice_planted`: at the highest rate it serves
    every lower one (core.data.plant: rates are nested, planted text independent of the rate)."""
    pd = plant_records(base_data, kind, rate, seed=seed)
    write_records([pd.records[i] for i in pd.planted], out)
    return pd.planted


def splice_planted(base: Workspace, only: Workspace, only_planted: list[int], kind: str, rate: float,
                   out: Path | str, seed: int = 0, data_dir: Path | str | None = None) -> tuple[Workspace, list[int]]:
    """The workspace of the (kind, rate, seed) planted copy of `base`'s dataset, at `out`.

    `only` indexes the planted-only file of `only_planted_file` (its row j is copy pair
    `only_planted[j]`) at a rate at least `rate`. The copy file is written to `data_dir` (default:
    beside `out`) as `<out name>.jsonl`. Returns (the workspace, the planted source indices).
    Raises ValueError when `only` does not hold every pair this rate plants.
    """
    out = Path(out)
    data = Path(data_dir or out.parent) / f"{out.name}.jsonl"
    pd = plant_records(_dataset(base), kind, rate, seed=seed)
    write_records(pd.records, data)
    position = {int(s): j for j, s in enumerate(only_planted)}
    if not set(pd.planted) <= set(position):
        raise ValueError(f"{only.path} lacks planted pairs {sorted(set(pd.planted) - set(position))[:8]}")
    rows = _all_pairs(base)
    if rows["source_index"].to_pylist() != pd.original_index:
        raise ValueError(f"{base.path} holds other pairs than the valid pairs of {_dataset(base)}: "
                         "splice only a workspace of a whole file with nothing skipped")
    at = {int(s): i for i, s in enumerate(rows["source_index"].to_pylist())}
    small = _all_pairs(only)
    replacement = small.take([position[s] for s in pd.planted])
    # the copy's own source_index (the small file numbers its records from 0)
    replacement = replacement.set_column(0, "source_index", pa.array(pd.planted, pa.int64()))
    keep = np.ones(len(rows), dtype=bool)
    keep[[at[s] for s in pd.planted]] = False
    spliced = pa.concat_tables([rows.filter(pa.array(keep)), replacement])
    return _write_workspace(base, spliced, data, out), pd.planted


def swapped_pairs(n: int, seed: int) -> list[int]:
    """A seeded random half (n // 2) of pair positions 0..n-1, sorted."""
    return sorted(np.random.default_rng(seed).permutation(n)[: n // 2].tolist())


def swap_labels(base: Workspace, seed: int, out: Path | str, data_dir: Path | str | None = None,
                swapped: list[int] | None = None) -> tuple[Workspace, list[int]]:
    """The workspace of a label-shuffled copy of `base`'s dataset, at `out`: chosen and rejected
    exchanged in `swapped` (source indices; default a seeded random half of the indexed pairs). The
    copy file (every record of the dataset, the swapped ones exchanged, one a line) goes to
    `data_dir` (default: beside `out`) as `<out name>.jsonl`. Returns (the workspace, the swapped
    source indices)."""
    out = Path(out)
    data = Path(data_dir or out.parent) / f"{out.name}.jsonl"
    rows = _all_pairs(base)
    indexed = rows["source_index"].to_pylist()
    if swapped is None:
        swapped = [indexed[i] for i in swapped_pairs(len(indexed), seed)]
    chosen_set = set(swapped)
    records = [with_labels_swapped(r) if i in chosen_set else r for i, (_, r) in enumerate(iter_records(_dataset(base)))]
    write_records(records, data)
    flip = pa.array([s in chosen_set for s in indexed])
    columns = {}
    for suffix in SIDE_COLUMNS:
        c, r = rows[f"chosen{suffix}"], rows[f"rejected{suffix}"]
        columns[f"chosen{suffix}"] = pc.if_else(flip, r, c)
        columns[f"rejected{suffix}"] = pc.if_else(flip, c, r)
    for side in ("chosen", "rejected"):
        other = "rejected" if side == "chosen" else "chosen"
        columns[f"emb_{side}"] = pc.if_else(flip, rows[f"emb_{other}"], rows[f"emb_{side}"])
    table = pa.table({name: columns.get(name, rows[name]) for name in rows.column_names})
    return _write_workspace(base, table, data, out), sorted(swapped)
