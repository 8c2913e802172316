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
    marks     the triage log (see core.data.marks)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import stat
from pathlib import Path

import lancedb
import numpy as np
import pyarrow as pa

from core.errors import DatadebugError, WorkspaceError

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


# What to do about a table that cannot be read: the pairs and features are made by `index`, the marks
# are the person's own log and the meta is the workspace's settings.
_REMEDY = {
    "marks": "the marks log is damaged; restore the workspace from a backup, or move {file} away to start "
             "the marks afresh (the .removed.jsonl manifests of earlier exports keep what was removed)",
}
_REINDEX = "re-index the dataset into a new workspace (datadebug index DATA -w NEW_WORKSPACE)"


def _first_line(exc: BaseException) -> str:
    """The cause of a library error in brief: its first line, without the Rust source location that
    lance appends."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return re.sub(r",?\s*/\S*(rustc|cargo|\.rs:)\S*.*$", "", line)[:160]


def source_fingerprint(st: os.stat_result) -> dict:
    """The cheap fingerprint of a dataset file kept in meta beside its SHA-256: size and mtime."""
    return {"dataset_size": st.st_size, "dataset_mtime_ns": st.st_mtime_ns}


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

    @contextlib.contextmanager
    def reading(self, table: str):
        """Turn a failure to read `table` (damaged or cut Lance files: lance raises RuntimeError,
        OSError or ValueError, in many lines) into one WorkspaceError naming its folder and what to do."""
        try:
            yield
        except DatadebugError:
            raise
        except (RuntimeError, OSError, ValueError, KeyError, pa.ArrowException) as exc:
            file = self.path / f"{table}.lance"
            remedy = _REMEDY.get(table, _REINDEX).format(file=file)
            raise WorkspaceError(f"workspace table {file} cannot be read ({_first_line(exc)}); {remedy}") from None

    def _names(self) -> set[str]:
        with self.reading("meta"):
            res = self.db.list_tables()
        return set(getattr(res, "tables", res))

    def has(self, table: str) -> bool:
        """Whether `table` exists with a committed version. A process killed while creating a table
        leaves its folder without one: that table is not there (and is overwritten when written).
        Raises WorkspaceError when it is there but cannot be read."""
        if table not in self._names():
            return False
        if not any((self.path / f"{table}.lance" / "_versions").glob("*.manifest")):
            return False  # no committed version: a creation that was killed
        with self.reading(table):
            self.db.open_table(table)
        return True

    def table(self, name: str):
        with self.reading(name):
            return self.db.open_table(name)

    # -- meta -----------------------------------------------------------------------------------

    def meta(self) -> dict:
        if not self.has("meta"):
            return {}
        with self.reading("meta"):
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

    # The fingerprint (size, mtime) under which the source last hashed to its indexed SHA-256, when
    # that is not the one in meta (the file was touched or copied, its bytes the same): a derived
    # cache, so the next command need not hash it again.
    FINGERPRINT = "source-fingerprint.json"

    def require_source_unchanged(self) -> None:
        """Raise WorkspaceError when the dataset this workspace indexed has changed since: its pairs'
        source indices would then name other records. Cheap when size and mtime match what was
        recorded; the file is hashed only when they differ. A source that is gone, or a workspace
        that recorded no hash, passes (commands that need the source say so themselves)."""
        meta = self.meta()
        sha, dataset = meta.get("dataset_sha256"), meta.get("dataset")
        if not sha or not dataset:
            return
        path = Path(dataset)
        try:
            st = path.stat()
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode):
            return
        now = source_fingerprint(st)
        if all(meta.get(k) == v for k, v in now.items()):
            return
        cache = self.path / self.FINGERPRINT
        try:
            if json.loads(cache.read_text()) == {**now, "dataset_sha256": sha}:
                return
        except (OSError, ValueError):
            pass  # absent or damaged: hash again
        try:
            actual = file_sha256(path)
        except OSError:
            return
        if actual != sha:
            raise WorkspaceError(
                f"{path} changed since it was indexed into {self.path} (its contents differ), so the "
                f"workspace's pair numbers may name other records; restore the indexed file, or re-index "
                f"it into a new workspace: datadebug index {path} -w NEW_WORKSPACE"
            )
        tmp = cache.with_name(f".{cache.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps({**now, "dataset_sha256": sha}))
            os.replace(tmp, cache)
        except OSError:  # a read-only workspace: hash again next time
            tmp.unlink(missing_ok=True)

    INDEX_LOCK = "index.lock"

    def lock_file(self, name: str, what: str, mode: str = "a+b"):
        """The workspace's lock file `name` opened for flock; WorkspaceError naming it when it cannot be
        (a directory there, no permission)."""
        path = self.path / name
        try:
            return open(path, mode)
        except OSError as exc:
            raise WorkspaceError(f"cannot open the {what} lock {path}: {exc.strerror or exc}; it must be a "
                                 f"plain file (remove whatever is there and retry)") from None

    @contextlib.contextmanager
    def index_lock(self):
        """Hold the workspace's index lock: an exclusive lock on `index.lock` naming the holder. A
        second index run into the same workspace is refused at once with WorkspaceError (it would
        corrupt the tables); the lock dies with its process, so a killed run blocks no one."""
        with self.lock_file(self.INDEX_LOCK, "index", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise WorkspaceError(
                    f"another `datadebug index` ({holder}) is writing to workspace {self.path}; wait for it "
                    f"to finish (rerun then to resume), or index into another workspace") from None
            try:
                f.seek(0)
                f.truncate()
                f.write(f"pid {os.getpid()}")
                f.flush()
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

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
        with self.reading("pairs"):
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
        with self.reading("pairs"):
            t = tbl.search().where(where).select(keep).limit(len(set(wanted))).to_arrow()
        position = {s: i for i, s in enumerate(t["source_index"].to_pylist())}
        if len(position) != len(set(wanted)):
            missing = sorted(set(wanted) - set(position))
            raise WorkspaceError(f"pairs {missing[:8]} are not in workspace {self.path}")
        return t.take([position[s] for s in wanted]).select(columns)

    def pair(self, source_index: int) -> dict:
        """One indexed pair as a dict (every column). Raises WorkspaceError when absent."""
        with self.reading("pairs"):
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
        with self.reading("features"):
            t = self.table("features").to_arrow().to_pylist()
        return {r["feature"]: r for r in t}
