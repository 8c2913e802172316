"""Triage marks: which pairs to remove before training, with who/when/why, undo and redo.

Marks are an append-only event log in the workspace's `marks` LanceDB table; every operation is
written as it is made, so marks survive a crash or restart. The current state is a replay of the log:
`mark`/`unmark` apply a change, `undo` reverts the latest applied change, `redo` re-applies the latest
undone one (a new change clears the redo stack), as in an editor.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pyarrow as pa

from core.errors import UsageError
from core.data.workspace import Workspace

MARKS_SCHEMA = pa.schema(
    [
        pa.field("op_id", pa.int64()),
        pa.field("action", pa.string()),  # "mark" | "unmark" | "undo" | "redo"
        pa.field("source_indices", pa.list_(pa.int64())),
        pa.field("reason", pa.string()),
        pa.field("scope", pa.string()),  # "pair", "pairs", "cluster sae:3", "feature 812 top 20", ...
        pa.field("features", pa.list_(pa.int32())),  # features that flagged these pairs, if any
        pa.field("who", pa.string()),
        pa.field("when", pa.string()),  # ISO 8601, UTC
    ]
)


@dataclass(frozen=True)
class MarkOp:
    op_id: int
    action: str
    source_indices: tuple[int, ...]
    reason: str = ""
    scope: str = "pair"
    features: tuple[int, ...] = ()
    who: str = ""
    when: str = ""


@dataclass(frozen=True)
class MarkInfo:
    source_index: int
    reason: str
    scope: str
    features: tuple[int, ...]
    who: str
    when: str


@dataclass
class MarkState:
    """The marks a log leaves. `apply` folds in one more op of the log, so a session that appends an
    op updates its state in O(pairs in the op) instead of replaying the whole log."""

    marked: dict[int, MarkInfo] = field(default_factory=dict)
    applied: list[MarkOp] = field(default_factory=list)
    undone: list[MarkOp] = field(default_factory=list)
    # per applied op: what its pairs were before it (None: not marked), so undo restores them
    _before: list[dict[int, MarkInfo | None]] = field(default_factory=list, repr=False)

    def apply(self, op: MarkOp) -> None:
        """Fold one more op of the log into the state (`replay` is this over the whole log)."""
        if op.action in ("mark", "unmark"):
            self._do(op)
            self.undone.clear()
        elif op.action == "undo" and self.applied:
            for s, info in self._before.pop().items():
                if info is None:
                    self.marked.pop(s, None)
                else:
                    self.marked[s] = info
            self.undone.append(self.applied.pop())
        elif op.action == "redo" and self.undone:
            self._do(self.undone.pop())

    def _do(self, op: MarkOp) -> None:
        self._before.append({s: self.marked.get(s) for s in op.source_indices})
        self.applied.append(op)
        for s in op.source_indices:
            if op.action == "mark":
                self.marked[s] = MarkInfo(s, op.reason, op.scope, op.features, op.who, op.when)
            else:
                self.marked.pop(s, None)


def _who() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def replay(ops: list[MarkOp]) -> MarkState:
    """The marks that a log of operations leaves, in order."""
    st = MarkState()
    for op in ops:
        st.apply(op)
    return st


def _describe(indices: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(s) for s in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


class Marks:
    """The triage marks of one workspace. Each change is persisted before the call returns.

    Several processes (two terminals, the TUI and the CLI) may change the marks of one workspace at
    once: each change takes an exclusive lock on `marks.lock` in the workspace folder, catches up
    with the operations the others logged, and appends its own with the next op id, so the log stays
    one sequence 0, 1, 2, ... The lock dies with its process, so a killed writer blocks no one.
    """

    LOCK = "marks.lock"

    def __init__(self, ws: Workspace):
        self.ws = ws
        self._ops = self._load()
        self._state = replay(self._ops)
        self._indexed: frozenset[int] | None = None

    def _load(self) -> list[MarkOp]:
        if not self.ws.has("marks"):
            return []
        with self.ws.reading("marks"):
            rows = self.ws.table("marks").to_arrow().sort_by("op_id").to_pylist()
        return [
            MarkOp(r["op_id"], r["action"], tuple(r["source_indices"]), r["reason"], r["scope"],
                   tuple(r["features"]), r["who"], r["when"])
            for r in rows
        ]

    @contextlib.contextmanager
    def _writing(self):
        """Hold the workspace's marks lock, with the log caught up with other writers."""
        with self.ws.lock_file(self.LOCK, "marks") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if self.ws.has("marks") and self._count() != len(self._ops):
                    self._ops = self._load()
                    self._state = replay(self._ops)
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _count(self) -> int:
        with self.ws.reading("marks"):
            return self.ws.table("marks").count_rows()

    def _write_row(self, row: pa.Table) -> None:
        """Append one operation to the log table (creating it on first use): one atomic commit."""
        if self.ws.has("marks"):
            self.ws.table("marks").add(row)
        else:
            self.ws.db.create_table("marks", row, schema=MARKS_SCHEMA)

    def _append(self, action: str, source_indices=(), reason: str = "", scope: str = "", features=()) -> MarkOp:
        """Log one operation with the next op id; call with the lock held (`_writing`)."""
        op = MarkOp(
            op_id=(self._ops[-1].op_id + 1) if self._ops else 0,
            action=action,
            source_indices=tuple(sorted({int(s) for s in source_indices})),
            reason=reason,
            scope=scope,
            features=tuple(int(f) for f in features),
            who=_who(),
            when=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        row = pa.table({k: [v if not isinstance(v, tuple) else list(v)] for k, v in op.__dict__.items()}, schema=MARKS_SCHEMA)
        self._write_row(row)
        self._ops.append(op)
        self._state.apply(op)  # incremental: a keypress must not replay the whole log
        return op

    def indexed(self) -> frozenset[int]:
        """The source indices of the workspace's indexed pairs: the only pairs that can be marked."""
        if self._indexed is None:
            self._indexed = frozenset(self.ws.indexed_source_indices().tolist())
        return self._indexed

    def check_pairs(self, source_indices, verb: str = "mark") -> list[int]:
        """`source_indices` as sorted ints when every one is an indexed pair; else UsageError naming
        the others (pairs the file does not have, or has but were not indexed: invalid records and
        records beyond --limit, which nobody has seen)."""
        try:
            wanted = sorted({int(s) for s in source_indices})
        except (TypeError, ValueError):
            raise UsageError(f"cannot {verb} {source_indices!r}: pairs are named by their source index") from None
        if not wanted:
            raise UsageError(f"no pairs to {verb}")
        unknown = [s for s in wanted if s not in self.indexed()]
        if unknown and not self.indexed():
            self.ws.require_pairs()  # says why and what to run
        if unknown:
            meta = self.ws.meta()
            n_records = int(meta.get("n_records") or 0)
            absent = [s for s in unknown if not 0 <= s < n_records]
            skipped = [s for s in unknown if 0 <= s < n_records]
            why = []
            if absent:
                # with --limit, reading stopped after n_records records: the file may hold more
                read = (f"indexing read the first {n_records} records of the source (--limit {meta['limit']}), "
                        f"0..{n_records - 1}" if meta.get("limit") else
                        f"the source has {n_records} records, 0..{n_records - 1}")
                why.append(f"{_describe(absent)}: no such pair ({read})")
            if skipped:
                why.append(f"{_describe(skipped)}: in the source but not indexed (invalid, or beyond --limit)")
            raise UsageError(f"cannot {verb} pairs {'; '.join(why)}")
        return wanted

    def mark(self, source_indices, reason: str = "", scope: str = "pairs", features=()) -> MarkOp:
        """Mark indexed pairs for removal. Returns the persisted operation.

        Raises UsageError when no pair is named or one is not an indexed pair of the workspace."""
        wanted = self.check_pairs(source_indices, "mark")
        with self._writing():
            return self._append("mark", wanted, reason, scope, features)

    def unmark(self, source_indices, reason: str = "", scope: str = "pairs") -> MarkOp:
        """Keep pairs again. Returns the persisted operation. Raises UsageError as `mark` does."""
        wanted = self.check_pairs(source_indices, "unmark")
        with self._writing():
            return self._append("unmark", wanted, reason, scope)

    def undo(self) -> MarkOp | None:
        """Revert the latest applied change; None when there is nothing to undo."""
        return self._step("undo")

    def redo(self) -> MarkOp | None:
        """Re-apply the latest undone change; None when there is nothing to redo."""
        return self._step("redo")

    def _step(self, action: str) -> MarkOp | None:
        """Log an undo or redo of the change on top of its stack; returns that change (None: empty)."""
        with self._writing():
            stack = self._state.applied if action == "undo" else self._state.undone
            if not stack:
                return None
            target = stack[-1]
            self._append(action, target.source_indices, scope=f"{action} op {target.op_id}")
        return target

    @property
    def marked(self) -> dict[int, MarkInfo]:
        """source_index -> why/when/who it is marked."""
        return dict(self._state.marked)

    def marked_set(self) -> set[int]:
        return set(self._state.marked)

    def is_marked(self, source_index: int) -> bool:
        return int(source_index) in self._state.marked

    @property
    def can_undo(self) -> bool:
        return bool(self._state.applied)

    @property
    def can_redo(self) -> bool:
        return bool(self._state.undone)

    def history(self) -> list[MarkOp]:
        return list(self._ops)

    def to_json(self) -> dict:
        return {
            "n_marked": len(self._state.marked),
            "marked": [info.__dict__ | {"features": list(info.features)} for info in sorted(self._state.marked.values(), key=lambda i: i.source_index)],
            "can_undo": self.can_undo,
            "can_redo": self.can_redo,
        }


def marked_set(ws: Workspace) -> set[int]:
    """The source indices currently marked for removal in `ws`."""
    return Marks(ws).marked_set()
