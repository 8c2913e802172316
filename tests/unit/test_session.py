"""core.session: the one facade both front ends call, on a private copy of the small real workspace."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest

from core.errors import UsageError, WorkspaceError
from core.data.marks import MarkOp, MarkState, Marks
from core.session import Session
from core.views import Selection
from core.data.workspace import Workspace


@pytest.fixture
def session(small_workspace, tmp_path) -> Session:
    dest = tmp_path / "hh"
    shutil.copytree(small_workspace, dest)
    return Session(dest)


def reference_replay(ops: list[MarkOp]) -> dict[int, str]:
    """The marks a log leaves, folded from scratch over the applied ops (the pre-incremental rule)."""
    applied, undone = [], []
    for op in ops:
        if op.action in ("mark", "unmark"):
            applied.append(op)
            undone.clear()
        elif op.action == "undo" and applied:
            undone.append(applied.pop())
        elif op.action == "redo" and undone:
            applied.append(undone.pop())
    marked: dict[int, str] = {}
    for op in applied:
        for s in op.source_indices:
            if op.action == "mark":
                marked[s] = op.reason
            else:
                marked.pop(s, None)
    return marked


def test_incremental_mark_state_equals_a_full_replay_after_every_op():
    rng = random.Random(0)
    ops, state = [], MarkState()
    for i in range(400):
        action = rng.choice(["mark", "mark", "unmark", "undo", "undo", "redo"])
        pairs = tuple(sorted(rng.sample(range(30), rng.randint(1, 6))))
        op = MarkOp(i, action, pairs, reason=f"r{i}" if rng.random() < 0.5 else "")
        ops.append(op)
        state.apply(op)
        assert {s: m.reason for s, m in state.marked.items()} == reference_replay(ops), i


def test_a_reason_given_for_marked_pairs_is_kept_and_no_reason_keeps_theirs(session):
    session.mark(Selection((1, 2), "pairs"), reason="first")
    assert session.mark(Selection((1, 2), "pairs")) is None  # nothing new, no reason: no op
    op = session.mark(Selection((2, 3), "pairs"))  # only the new pair, 2 keeps "first"
    assert op.source_indices == (3,)
    session.mark(Selection((1, 3), "cluster sae:0"), reason="boilerplate")  # both, reason replaced
    reasons = {s: m.reason for s, m in Marks(Workspace(session.path)).marked.items()}
    assert reasons == {1: "boilerplate", 2: "first", 3: "boilerplate"}
    session.undo()  # the earlier reasons come back
    assert session.triage().reason(1) == "first" and session.triage().reason(3) == ""


def test_triage_what_if_follows_marks_undo_and_redo(session):
    before = session.triage()
    assert before.n_marked == 0 and before.after is before.before
    note = session.change("mark", Selection((0, 3, 5), "pairs"))
    assert note == "marked 3 pairs (pairs)"
    after = session.triage()
    cold = session.analysis.moments(session.analysis.rows({0, 3, 5}))
    assert after.after.n_kept == after.n_kept == 21
    np.testing.assert_allclose(after.after.shift, cold[1], atol=1e-6)
    np.testing.assert_allclose(after.after.n_firing, cold[3])
    session.change("undo")
    np.testing.assert_allclose(session.triage().after.shift, before.before.shift, atol=1e-6)
    assert session.change("redo").startswith("redid: mark 3")
    assert session.triage().marked == {0, 3, 5}
    assert session.change("redo") == "nothing to redo"


def test_select_by_feature_skips_marked_pairs_when_asked(session):
    report = session.report(top=3)
    f = report.amplified[0].feature
    first = session.select(feature=f, top=3)
    assert first.scope == f"feature {f} top 3" and first.features == (f,)
    assert list(first.source_indices) == sorted(p.source_index for p in report.amplified[0].top_pairs[:3])
    session.mark(first)
    following = session.select(feature=f, top=3, skip_marked=True)
    assert not set(following.source_indices) & set(first.source_indices)
    assert session.report(top=3).n_excluded == 3  # ranked without the marked pairs by default


def test_preview_says_what_marking_would_do_without_marking(session):
    f = session.report(top=3).amplified[0].feature
    sel = session.select(feature=f, top=4)
    session.mark(Selection(sel.source_indices[:1], "pair"))
    p = session.preview(sel)
    assert (p.n_new, p.n_kept_before, p.n_kept_after) == (3, 23, 20)
    assert p.examples[0].source_index == sel.source_indices[0] and p.examples[0].prompt
    assert p.changes[0].feature == f and p.changes[0].after < p.changes[0].before
    assert session.triage().n_marked == 1  # nothing was marked


def test_one_k_for_both_groupings_and_unknown_clusters_refused(session):
    sae, emb = session.clusters("sae"), session.clusters("embedding")
    assert sae.k == emb.k == session.k == session.compare()["k"]
    sel = session.select(cluster=0, by="embedding")
    assert set(sel.source_indices) == set(emb.clusters[0].source_indices)
    with pytest.raises(UsageError):
        session.select(cluster=99)
    with pytest.raises(UsageError):
        session.select()


def test_pair_view_has_the_pairs_largest_deltas(session):
    a = session.analysis
    s = int(a.source_index[2])
    view = session.pair(s, n_deltas=5)
    dense = a.delta[a.row_of[s]].toarray().ravel()
    assert [d.delta for d in view.top_deltas] == pytest.approx(
        sorted(dense[np.abs(dense) > 0], key=abs, reverse=True)[:5], rel=1e-5
    )
    pinned = session.pair(s, feature=7, n_deltas=5)
    assert pinned.top_deltas[0].feature == 7 and len(pinned.top_deltas) == 5
    with pytest.raises(WorkspaceError):
        session.pair(10_000)
