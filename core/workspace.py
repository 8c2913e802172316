"""A workspace: one indexed dataset in LanceDB tables.

Tables:
    meta      key -> JSON value: model, SAE (name and sha256 of its weights), layer, dataset path +
              sha256, format, versions, settings, schema_version
    pairs     one row per indexed pair: texts, reply tokens, sparse per-reply SAE summaries (mean, max
              and firing frequency of every feature that fires), token-level firings of every firing
              feature (its strongest positions), a sparse summary of the prompt's features, MiniLM
              embeddings. A whole row is written in one append, so an interrupted run never leaves
              half a pair.
    features  one row per SAE feature: promoted tokens (decoder direction through the unembedding)
    marks     the triage log (see core.marks)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from core.errors import WorkspaceError

EMBED_DIM = 384  # all-MiniLM-L6-v2

# 1: mean and max per reply, token firings of each reply's 16 strongest features (before 0.2).
# 2: + firing frequency per reply, token firings of every firing feature, prompt feature summary.
SCHEMA_VERSION = 2


def _side_fields(side: str) -> list[pa.Field]:
    return [
        pa.field(f"{side}", pa.string()),
        pa.field(f"{side}_tokens", pa.list_(pa.string())),
        pa.field(f"{side}_feat", pa.list_(pa.int32())),  # every feature that fires (> 0) on a reply token
        pa.field(f"{side}_mean", pa.list_(pa.float32())),  # its mean activation over the reply's tokens
        pa.field(f"{side}_max", pa.list_(pa.float32())),  # its max activation
        pa.field(f"{side}_freq", pa.list_(pa.float32())),  # the share of the reply's tokens it fires on
        pa.field(f"{side}_tok_feat", pa.list_(pa.int32())),  # token-level firings: for every firing feature,
        pa.field(f"{side}_tok_pos", pa.list_(pa.int32())),  #   its strongest positions, as (feature,
        pa.field(f"{side}_tok_val", pa.list_(pa.float32())),  #   token position, value) triplets
        pa.field(f"emb_{side}", pa.list_(pa.float32(), EMBED_DIM)),
    ]


PAIRS_SCHEMA = pa.schema(
    [
        pa.field("source_index", pa.int64()),
        pa.field("line", pa.int64()),
        pa.field("prompt", pa.string()),  # JSON list of {role, content}
        pa.field("prompt_text", pa.string()),
        pa.field("n_prompt_tokens", pa.int32()),
        pa.field("prompt_feat", pa.list_(pa.int32())),  # every feature that fires on a prompt token
        pa.field("prompt_max", pa.list_(pa.float32())),  #   (the chat template's fixed opening left out)
        pa.field("prompt_freq", pa.list_(pa.float32())),
        pa.field("emb_prompt", pa.list_(pa.float32(), EMBED_DIM)),
        *_side_fields("chosen"),
        *_side_fields("rejected"),
    ]
)

FEATURES_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.int32()),
        pa.field("promoted", pa.list_(pa.string())),
        pa.field("label", pa.string()),  # published label when the catalogue SAE ships one, else ""
    ]
)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (identifies the dataset a workspace was indexed from)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Workspace:
    """Handle on a workspace folder. Opening is cheap; tables are read when asked for."""

    def __init__(self, path: Path | str, create: bool = False):
        self.path = Path(path)
        if not create and not (self.path / "meta.lance").exists():
            raise WorkspaceError(f"{self.path} is not a datadebug workspace (run `datadebug index` first)")
        if self.path.exists() and not self.path.is_dir():
            raise WorkspaceError(f"{self.path} is a file, not a workspace folder; choose another path")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a parent that is a file, no permission, a read-only disk
            raise WorkspaceError(f"cannot create workspace {self.path}: {exc.strerror or exc}") from exc
        self.db = lancedb.connect(str(self.path))

    def _names(self) -> set[str]:
        res = self.db.list_tables()
        return set(getattr(res, "tables", res))

    def has(self, table: str) -> bool:
        """Whether `table` exists with a committed version. A process killed while creating a table
        leaves its folder without one: that table is not there (and is overwritten when written)."""
        if table not in self._names():
            return False
        try:
            self.db.open_table(table)
        except (ValueError, OSError):
            return False
        return True

    def table(self, name: str):
        return self.db.open_table(name)

    # -- meta -----------------------------------------------------------------------------------

    def meta(self) -> dict:
        if not self.has("meta"):
            return {}
        t = self.table("meta").to_arrow().to_pylist()
        return {r["key"]: json.loads(r["value"]) for r in t}

    def require_current(self) -> None:
        """Raise WorkspaceError when the workspace was indexed by an older datadebug whose pairs lack
        what the analysis reads now (schema_version below SCHEMA_VERSION)."""
        meta = self.meta()
        version = int(meta.get("schema_version", 1))
        if self.has("pairs") and version < SCHEMA_VERSION:
            raise WorkspaceError(
                f"workspace {self.path} was indexed by an older datadebug (schema {version}, now "
                f"{SCHEMA_VERSION}: firing frequencies, prompt features); re-index it into a new workspace: "
                f"datadebug index {meta.get('dataset', 'DATA')} -w NEW_WORKSPACE"
            )

    def require_pairs(self) -> None:
        """Raise WorkspaceError when no pair has been saved yet (an index killed or stopped before its
        first chunk), naming how to go on."""
        meta = self.meta()
        if not self.has("pairs") or "d_sae" not in meta:
            raise WorkspaceError(
                f"workspace {self.path} holds no indexed pairs yet (indexing stopped before saving any); "
                f"run `datadebug index {meta.get('dataset', 'DATA')} -w {self.path}` to index it"
            )

    def write_meta(self, values: dict) -> None:
        merged = {**self.meta(), **values}
        rows = pa.table({"key": list(merged), "value": [json.dumps(v) for v in merged.values()]})
        self.db.create_table("meta", rows, mode="overwrite")

    # -- pairs ----------------------------------------------------------------------------------

    def add_pairs(self, rows: pa.Table) -> None:
        if self.has("pairs"):
            self.table("pairs").add(rows)
        else:
            self.db.create_table("pairs", rows, schema=PAIRS_SCHEMA, mode="overwrite")

    def indexed_source_indices(self) -> np.ndarray:
        if not self.has("pairs"):
            return np.zeros(0, dtype=np.int64)
        return self.pairs_columns(["source_index"])["source_index"].to_numpy()

    def pairs_columns(self, columns: list[str]) -> pa.Table:
        """Columns of every indexed pair, sorted by source_index."""
        if not self.has("pairs"):
            return PAIRS_SCHEMA.empty_table().select(columns)
        keep = columns if "source_index" in columns else ["source_index", *columns]
        tbl = self.table("pairs")
        t = tbl.search().select(keep).limit(max(1, tbl.count_rows())).to_arrow()
        return t.sort_by("source_index").select(columns)

    def pairs_in(self, source_indices: list[int], columns: list[str]) -> pa.Table:
        """Columns of the indexed pairs with these source indices, in the order given (one filtered
        read, not a scan of every row's columns). Raises WorkspaceError when one is absent."""
        if not source_indices:
            return PAIRS_SCHEMA.empty_table().select(columns)
        wanted = [int(s) for s in source_indices]
        keep = columns if "source_index" in columns else ["source_index", *columns]
        tbl = self.table("pairs")
        where = f"source_index IN ({', '.join(str(s) for s in sorted(set(wanted)))})"
        t = tbl.search().where(where).select(keep).limit(len(set(wanted))).to_arrow()
        position = {s: i for i, s in enumerate(t["source_index"].to_pylist())}
        if len(position) != len(set(wanted)):
            missing = sorted(set(wanted) - set(position))
            raise WorkspaceError(f"pairs {missing[:8]} are not in workspace {self.path}")
        return t.take([position[s] for s in wanted]).select(columns)

    def pair(self, source_index: int) -> dict:
        """One indexed pair as a dict (every column). Raises WorkspaceError when absent."""
        rows = self.table("pairs").search().where(f"source_index = {int(source_index)}").limit(1).to_list()
        if not rows:
            raise WorkspaceError(f"pair {source_index} is not in workspace {self.path}")
        return rows[0]

    def compact(self) -> None:
        if self.has("pairs"):
            try:
                self.table("pairs").optimize()
            except Exception:  # optimisation is an optional nicety; a failure leaves data intact
                pass

    # -- features -------------------------------------------------------------------------------

    def write_features(self, rows: pa.Table) -> None:
        self.db.create_table("features", rows, schema=FEATURES_SCHEMA, mode="overwrite")

    def feature_info(self) -> dict[int, dict]:
        if not self.has("features"):
            return {}
        t = self.table("features").to_arrow().to_pylist()
        return {r["feature"]: r for r in t}
