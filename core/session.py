"""One door into core for both front ends: a workspace's shifts, what-if, selections, marks, pairs,
clusters and export (`Session`), and the catalogue's models and SAEs by name (module functions).

The CLI makes a Session per command; the TUI keeps one open. A Session loads the workspace's analysis
and marks on first use and keeps them up to date as marks change, so the what-if after a mark costs
O(pairs in the change), not O(pairs marked). Its methods may read LanceDB or run numpy over the whole
workspace: the TUI calls them from thread workers. Methods that touch marks or the what-if state hold
the session's lock, so calls from several threads are serialised.

Modules that pull in torch, sklearn or sentence-transformers are imported inside the functions that
need them: opening a session and marking pairs stays fast.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np

from core.arguments import at_least
from core.analysis.calibration import DEFAULT_FDR
from core.errors import CatalogError, ExportError, UsageError, WorkspaceError
from core.data.marks import MarkOp, Marks
from core.progress import ProgressFn
from core.analysis.shifts import Analysis, ShiftReport, WhatIf
from core.views import (
    CatalogChoices,
    CompareRow,
    CompareView,
    ConceptFeature,
    ConceptFeatures,
    ConceptInPair,
    ConceptsView,
    DataCluster,
    DataClustersView,
    FeaturePairs,
    HypothesisChange,
    HypothesisKey,
    HypothesisPairs,
    Landing,
    ModelRow,
    ModelsView,
    PairDelta,
    PairRow,
    PairView,
    Preview,
    Selection,
    ShiftChange,
    Snippet,
    TriageState,
    WorkspaceInfo,
    WorkspaceStatus,
)
from core.data.workspace import Workspace

N_EXAMPLES = 5  # pairs shown in a preview
N_CHANGES = 4  # features whose shift a preview shows before -> after
N_POINT_LOOKUPS = 32  # up to this many pairs are read one by one; more read three text columns at once


GROUPINGS = ("data", "sae", "embedding")


def grouping(by: str | None, k: int | None = None) -> str:
    """The grouping of pairs that `by` names: "data", the data clusters the hypotheses read (fitted
    once with the structure), or a k-means grouping by SAE features ("sae") or by MiniLM embedding
    ("embedding"). None: "data", or "sae" when a `k` is given (only the k-means groupings take one).
    Raises UsageError for another name, or a k with "data"."""
    if by is None:
        return "data" if k is None else "sae"
    if by not in GROUPINGS:
        raise UsageError(f"unknown clustering {by!r}; expected one of {', '.join(GROUPINGS)}")
    if by == "data" and k is not None:
        raise UsageError("--k sets the k of the k-means groupings (--by sae or embedding); the data clusters "
                         "are fitted once with the workspace's structure")
    return by


def probe(path: Path | str) -> WorkspaceStatus:
    """What is at `path`: an indexed workspace, a partly indexed one, or nothing. Never raises for a
    missing folder."""
    path = Path(path)
    if not (path / "meta.lance").exists():
        return WorkspaceStatus(path, False, 0, False, "")
    ws = Workspace(path)
    meta = ws.meta()
    n = len(ws.indexed_source_indices())
    complete = n > 0 and ws.has("features") and "d_sae" in meta
    return WorkspaceStatus(path, True, n, complete, str(meta.get("dataset", "")))


class Session:
    """One workspace: its predicted shifts, the marks and their what-if, its pairs and clusters.

    Args:
        workspace: an existing workspace folder.
        params: the structure's parameters (core.analysis.structure.Params; default: its defaults), for a
            bench that sweeps them.
    Raises WorkspaceError when `workspace` is not one, or its source dataset changed since it was
    indexed. The analysis is loaded on first use (and raises
    WorkspaceError then when nothing is indexed yet, or the workspace is of an older schema).
    """

    def __init__(self, workspace: Path | str, params=None):
        self.path = Path(workspace)
        self.params = params
        self.ws = Workspace(self.path)
        self.ws.require_source_unchanged()  # else pair numbers may name other records
        self.meta = self.ws.meta()
        self.last_export: Path | None = None  # offered again by the next export
        self._analysis: Analysis | None = None
        self._marks: Marks | None = None
        self._before: WhatIf | None = None
        self._labels: dict[int, str] = {}
        self._clusterings: dict[tuple[str, int], object] = {}
        self._k: int | None = None
        self._lock = threading.RLock()
        self._engine = None  # core.analysis.hypotheses.Hypotheses, once fitted or read
        self._concepts_before: dict[int, float] | None = None
        # The engine keeps its last what-if state: one caller at a time (and one fit).
        self._engine_lock = threading.RLock()

    # -- what is open ---------------------------------------------------------------------------

    @property
    def analysis(self) -> Analysis:
        """The workspace's per-reply feature summaries, loaded once."""
        with self._lock:
            if self._analysis is None:
                self.ws.require_pairs()  # WorkspaceError naming how to go on
                self._analysis = Analysis(self.ws)
            return self._analysis

    @property
    def marks(self) -> Marks:
        """The workspace's marks (the log read once, then kept up to date by this session)."""
        with self._lock:
            if self._marks is None:
                self._marks = Marks(self.ws)
            return self._marks

    def marked(self) -> frozenset[int]:
        """The source indices marked now (a snapshot: marks may change from another thread)."""
        with self._lock:
            return frozenset(self.marks.marked_set())

    def info(self) -> WorkspaceInfo:
        return WorkspaceInfo(
            name=self.path.name,
            model=str(self.meta.get("model", "")),
            sae=str(self.meta.get("sae", "")),
            layer=int(self.meta.get("layer", -1)),
            n_pairs=self.analysis.n,
            dataset_name=self.dataset_path.name,
        )

    @property
    def dataset_path(self) -> Path:
        """The dataset the workspace was indexed from."""
        return Path(self.meta.get("dataset", ""))

    def label(self, feature: int) -> str:
        """A short label for one feature: the published one, else its firing and promoted tokens."""
        with self._lock:
            if feature in self._labels:
                return self._labels[feature]
        analysis = self.analysis
        published = analysis.feature_info().get(feature, {}).get("label") or ""
        text = analysis.describe(feature, n_contexts=0, published=published)[1]
        with self._lock:
            self._labels[feature] = text
        return text

    # -- shifts and what-if ---------------------------------------------------------------------

    def report(self, top: int = 20, without_marked: bool = True, excluded=None, **kw) -> ShiftReport:
        """The `top` most amplified and suppressed features (core.analysis.shifts.Analysis.report), ranked
        without the marked pairs unless `without_marked` is False, or without the `excluded` source
        indices when given. Raises UsageError for top < 1."""
        at_least("--top", top)
        if excluded is None and without_marked:
            excluded = self.marked()
        report = self.analysis.report(top=top, excluded=excluded, **kw)
        with self._lock:
            for f in report.features:
                self._labels.setdefault(f.feature, f.label)
        return report

    def triage(self) -> TriageState:
        """The marks as they stand and every feature's shift before (all pairs) and after (kept)."""
        with self._lock:
            analysis, marks = self.analysis, self.marks
            if self._before is None:
                self._before = analysis.shifts_without(frozenset())
            info = marks.marked
            marked = frozenset(info)
            return TriageState(
                marked=marked,
                n_total=analysis.n,
                can_undo=marks.can_undo,
                can_redo=marks.can_redo,
                before=self._before,
                after=analysis.shifts_without(marked) if marked else self._before,
                info=info,
            )

    # -- selections -----------------------------------------------------------------------------

    def select(
        self,
        pairs=(),
        feature: int | None = None,
        top: int = 20,
        cluster: int | None = None,
        by: str | None = None,
        k: int | None = None,
        skip_marked: bool = False,
        hypothesis: HypothesisKey | None = None,
    ) -> Selection:
        """The pairs a mark names: source indices, a feature's `top` pairs (largest delta in its
        direction), a cluster's pairs (of the grouping `by` names, see `grouping`: a data cluster, or a
        k-means cluster with this workspace's k unless `k` is given), a
        hypothesis' `top` driving pairs not marked yet, or any union of them. With skip_marked, a
        feature's top pairs are found among the pairs not marked yet (its next drivers). Raises
        UsageError when nothing is named, a cluster is unknown or a hypothesis is not ranked.
        """
        chosen, scopes, features = {int(s) for s in pairs}, [], []
        if hypothesis is not None:
            drivers = self.driving_pairs(hypothesis, top)
            chosen |= {p.source_index for p in drivers}
            scopes.append(f"drivers of {hypothesis.describe(self.concept_name(hypothesis.concept))}")
            features.extend(self.concept_of(hypothesis.concept))
        if pairs:
            scopes.append("pair" if len(chosen) == 1 else "pairs")
        if feature is not None:
            excluded = self.marked() if skip_marked else ()
            tops = self.analysis.top_pairs_of(int(feature), top, excluded=excluded)
            chosen |= {p.source_index for p in tops}
            scopes.append(f"feature {feature} top {top}")
            features.append(int(feature))
        by = grouping(by, k) if cluster is not None else by
        if cluster is not None and by == "data":
            data = self.data_cluster(cluster)
            chosen |= set(data.source_indices)
            scopes.append(f"cluster data:{cluster}")
            best = data.hypotheses[0].features[:3] if data.hypotheses else ()
            features.extend(f for f in best if f not in features)
        elif cluster is not None:
            clustering = self.clusters(by, k)
            match = [c for c in clustering.clusters if c.id == cluster]
            if not match:
                raise UsageError(
                    f"no {by} cluster {cluster} (there are {len(clustering.clusters)})"
                )
            chosen |= set(match[0].source_indices)
            scopes.append(f"cluster {by}:{cluster}")
            features.extend(f.feature for f in match[0].top_features[:3] if f.feature not in features)
        if not chosen and not scopes:
            raise UsageError("name pairs (source indices), --feature F [--top N] or --cluster C")
        return Selection(tuple(sorted(chosen)), ", ".join(scopes), tuple(features), hypothesis)

    def preview(self, selection: Selection) -> Preview:
        """What marking `selection` would do: how many pairs are new, a few of them, and how the
        shift of each feature that flagged them moves."""
        with self._lock:
            now = self.triage()
            new = [s for s in selection.source_indices if s not in now.marked]
            with_it = self.analysis.shifts_without(now.marked | set(new))
        changes = tuple(
            ShiftChange(f, self.label(f), float(now.after.shift[f]), float(with_it.shift[f]))
            for f in selection.features[:N_CHANGES]
            if 0 <= f < len(now.after.shift)
        )
        hypothesis = None
        if selection.hypothesis is not None:
            hypothesis = self.hypothesis_change(selection.hypothesis, now.marked, now.marked | set(new))
        return Preview(
            selection=selection,
            n_new=len(new),
            n_kept_before=now.n_kept,
            n_kept_after=with_it.n_kept,
            examples=self.pair_rows(selection.source_indices[:N_EXAMPLES]),
            changes=changes,
            hypothesis=hypothesis,
        )

    # -- marks ----------------------------------------------------------------------------------

    def mark(self, selection: Selection, reason: str = "") -> MarkOp | None:
        """Mark the selection for removal (persisted before this returns).

        With a reason every selected pair is (re)marked with it, so a reason given for a pair marked
        earlier is kept; without one only the pairs not marked yet are marked, keeping the reasons
        others carry. Returns the op written, None when there was nothing to change. Raises
        UsageError when the selection is empty or names a pair that is not indexed.
        """
        with self._lock:
            self._require_same_dataset()
            marks = self.marks
            marks.check_pairs(selection.source_indices, "mark")  # UsageError: nothing named, or not indexed
            todo = [s for s in selection.source_indices if reason or not marks.is_marked(s)]
            if not todo:
                return None
            return marks.mark(todo, reason=reason, scope=selection.scope, features=selection.features)

    def unmark(self, selection: Selection, reason: str = "") -> MarkOp | None:
        """Keep the selected pairs again. Returns the op written, None when none was marked.
        Raises UsageError as `mark` does."""
        with self._lock:
            self._require_same_dataset()
            marks = self.marks
            marks.check_pairs(selection.source_indices, "unmark")
            todo = [s for s in selection.source_indices if marks.is_marked(s)]
            if not todo:
                return None
            return marks.unmark(todo, reason=reason, scope=selection.scope)

    def _require_same_dataset(self) -> None:
        """Raise WorkspaceError when the Hugging Face dataset indexed here has changed since: a mark
        names a row by its position, which then may hold another pair."""
        from core.data.hfdata import changed

        why = changed(self.meta)
        if why:
            raise WorkspaceError(why)

    def undo(self) -> MarkOp | None:
        """Revert the latest mark or unmark; returns it, None when there is nothing to undo."""
        with self._lock:
            return self.marks.undo()

    def redo(self) -> MarkOp | None:
        """Re-apply the latest undone change; returns it, None when there is nothing to redo."""
        with self._lock:
            return self.marks.redo()

    def change(self, action: str, selection: Selection | None = None, reason: str = "") -> str:
        """Apply one triage change ("mark", "unmark", "undo", "redo") and say what happened in a line."""
        if action in ("mark", "unmark"):
            if selection is None:
                raise UsageError(f"{action} needs a selection of pairs")
            op = (self.mark if action == "mark" else self.unmark)(selection, reason)
            if op is None:
                return "already marked" if action == "mark" else "nothing to unmark"
            n = len(op.source_indices)
            return f"{action}ed {n} pair{'s' * (n != 1)} ({selection.scope})"
        if action in ("undo", "redo"):
            op = self.undo() if action == "undo" else self.redo()
            if op is None:
                return f"nothing to {action}"
            return f"{'undid' if action == 'undo' else 'redid'}: {op.action} {len(op.source_indices)} ({op.scope})"
        raise UsageError(f"unknown triage action {action!r}")

    # -- pairs ----------------------------------------------------------------------------------

    def trace(self, feature: int, top: int = 20):
        """The pairs driving one feature's predicted shift, with the tokens it fires on
        (core.analysis.trace.trace_feature)."""
        from core.analysis.trace import trace_feature

        return trace_feature(self.analysis, feature, top=top)

    def feature_pairs(self, feature: int, top: int = 20) -> FeaturePairs:
        """The pairs that drive `feature`'s shift, largest delta in its direction first."""
        from core.analysis.trace import trace_feature

        t = trace_feature(self.analysis, int(feature), top=top)
        rows = tuple(
            PairRow(p["source_index"], p["delta"], p["prompt"], p["chosen"], p["rejected"])
            for p in t["pairs"]
        )
        return FeaturePairs(int(feature), t["label"] or self.label(feature), t["direction"], rows)

    def pair_rows(self, source_indices) -> tuple[PairRow, ...]:
        """Texts of the given pairs (indexed ones), in the order given."""
        analysis = self.analysis
        indices = [int(s) for s in source_indices if int(s) in analysis.row_of]
        if len(indices) <= N_POINT_LOOKUPS:
            rows = [self.ws.pair(s) for s in indices]
            return tuple(
                PairRow(s, None, p["prompt_text"], p["chosen"], p["rejected"])
                for s, p in zip(indices, rows)
            )
        t = self.ws.pairs_columns(["source_index", "prompt_text", "chosen", "rejected"])
        cols = [t[name] for name in ("prompt_text", "chosen", "rejected")]
        return tuple(
            PairRow(s, None, *(c[analysis.row_of[s]].as_py() for c in cols)) for s in indices
        )

    def pair(self, source_index: int, feature: int | None = None, n_deltas: int = 12,
             concept: int | None = None) -> PairView:
        """One pair: texts, reply tokens, where each feature fires, and its `n_deltas` largest feature
        deltas (`feature` first when given, whatever its delta here). With `concept`, also the
        concept's firing in each reply (ConceptInPair), and its features that fire here first among
        the deltas. Raises WorkspaceError when the pair is not indexed."""
        analysis = self.analysis
        s = int(source_index)
        if s not in analysis.row_of:
            raise WorkspaceError(f"pair {s} is not indexed in workspace {self.path.name}")
        r = analysis.row_of[s]
        delta = analysis.delta[r]  # (1, d_sae) CSR: the features firing in either reply
        order = np.argsort(-np.abs(delta.data), kind="stable")
        ranked = [int(f) for f in delta.indices[order]]
        in_pair, counted = None, {}
        if concept is not None:
            in_pair = self._concept_in_pair(concept, r)
            members = set(in_pair.features)
            counted = {side: frozenset(int(f) for f in m.indices if int(f) in members)
                       for side, m in zip(("chosen", "rejected"), self.hypotheses_engine().counted([r]))}
            ranked = [f for f in ranked if f in members] + [f for f in ranked if f not in members]
        top = ranked[:n_deltas]
        if feature is not None:
            top = [int(feature)] + [f for f in top if f != feature][: n_deltas - 1]
        chosen = analysis.chosen[r].toarray().ravel()  # (d_sae,)
        rejected = analysis.rejected[r].toarray().ravel()
        deltas = tuple(
            PairDelta(f, self.label(f), float(chosen[f]), float(rejected[f]), float(chosen[f] - rejected[f]))
            for f in top
        )
        row = self.ws.pair(s)
        firings = {}
        for side in ("chosen", "rejected"):
            by_feature: dict[int, list[tuple[int, float]]] = {}
            for f, p, v in zip(row[f"{side}_tok_feat"], row[f"{side}_tok_pos"], row[f"{side}_tok_val"]):
                by_feature.setdefault(int(f), []).append((int(p), float(v)))
            firings[side] = {f: tuple(sorted(x)) for f, x in by_feature.items()}
        return PairView(
            source_index=s,
            prompt=row["prompt_text"],
            chosen=row["chosen"],
            rejected=row["rejected"],
            chosen_tokens=tuple(row["chosen_tokens"]),
            rejected_tokens=tuple(row["rejected_tokens"]),
            firings=firings,
            top_deltas=deltas,
            concept=in_pair,
            counted=counted,
        )

    def _concept_in_pair(self, concept: int, row: int) -> ConceptInPair:
        chosen, rejected, u = (float(x[0]) for x in self.hypotheses_engine().concept_in_pairs([row], concept))
        return ConceptInPair(concept, self.concept_name(concept), self.concept_of(concept), chosen, rejected, u)

    # -- hypotheses and concepts ----------------------------------------------------------------

    def hypotheses_engine(self, progress: ProgressFn | None = None,
                          cancel: threading.Event | None = None):
        """The workspace's hypothesis engine (core.analysis.hypotheses.Hypotheses), loaded once: its structure
        and names are read from the workspace's cache, or fitted and cached the first time (seconds to
        minutes; reports progress). Raises WorkspaceError, Cancelled."""
        with self._engine_lock:
            if self._engine is None:
                from core.analysis.hypotheses import open_hypotheses

                self._engine = open_hypotheses(self.analysis, self.params, progress=progress, cancel=cancel)
            return self._engine

    @property
    def has_hypotheses(self) -> bool:
        """Whether the hypothesis engine is loaded (calls that need it return at once)."""
        return self._engine is not None

    def hypotheses(self, top: int = 50, kind: str | None = None, excluded=None, fdr: float = DEFAULT_FDR):
        """The `top` hypotheses (core.analysis.hypotheses.HypothesisReport), ranked without the marked pairs
        (or without the `excluded` source indices when given): those established at q < `fdr` first;
        `kind` "cluster", "prompt" or "concept" keeps one view (q then over that view's cells).
        Raises UsageError for top < 1, an unknown kind or an fdr outside (0, 0.25]."""
        at_least("--top", top)
        engine = self.hypotheses_engine()
        excluded = self.marked() if excluded is None else frozenset(excluded)
        with self._engine_lock:
            return engine.report(excluded, top=top, kind=kind, fdr=fdr)

    def landing(self, top: int = 50, kind: str | None = None, excluded=None, fdr: float = DEFAULT_FDR,
                n_concepts: int = 10) -> Landing:
        """What the landing view shows: the `top` hypotheses (as `hypotheses`) and the first
        `n_concepts` concepts whose global shift is established (as `concepts`, established rows
        only), so that a view where no local hypothesis is established still says what is."""
        rep = self.hypotheses(top, kind, excluded, fdr)
        view = self.concepts(top=n_concepts, excluded=excluded, fdr=fdr)
        established = tuple(r for r in view.rows if r.shift.established)
        return Landing(rep, dataclasses.replace(view, rows=established))

    def name_with_llm(self, top: int = 50, kind: str | None = None, excluded=None):
        """Ask the configured LLM namer (core.analysis.naming.namer_from_config) for names of the concepts and
        groups of the `top` hypotheses that have none yet, cache them, and return the report again
        with them (as `hypotheses`). Raises UsageError when no namer is configured (before any work)."""
        at_least("--top", top)
        from core.analysis.naming import name_with_llm

        namer = self.require_namer()
        report = self.hypotheses(top, kind, excluded)
        engine = self.hypotheses_engine()
        with self._engine_lock:
            engine.names = name_with_llm(engine.analysis, engine.st, engine.names, report, namer)
        return self.hypotheses(top, kind, excluded)

    @staticmethod
    def require_namer():
        """The configured LLM namer (core.analysis.naming.namer_from_config); UsageError when there is none, so
        a front end can refuse before fitting anything."""
        from core import locations
        from core.analysis.naming import namer_from_config

        namer = namer_from_config()
        if namer is None:
            raise UsageError(f"no LLM namer is configured: set DATADEBUG_NAMER_URL and DATADEBUG_NAMER_MODEL, "
                             f"or [namer] url and model in {locations.config_dir() / 'namer.toml'}")
        return namer

    def concept_of(self, concept: int) -> tuple[int, ...]:
        """The SAE features of response concept `concept`. Raises UsageError for an unknown one."""
        engine = self.hypotheses_engine()
        if not 0 <= concept < engine.st.response.n_concepts:
            raise UsageError(f"no concept {concept} (there are {engine.st.response.n_concepts})")
        return tuple(int(f) for f in engine.st.response.features(concept))

    def concept_name(self, concept: int) -> str:
        engine = self.hypotheses_engine()
        return engine.names.concept(concept) if engine.names is not None else ""

    def _cell(self, key: HypothesisKey) -> int:
        cell = self.hypotheses_engine().cell_of(key.kind, key.group, key.concept)
        if cell is None:
            raise UsageError(f"hypothesis {key} is not ranked in this workspace")
        return cell

    def driving_pairs(self, key: HypothesisKey, top: int = 10, excluded=None):
        """The `top` pairs that drive hypothesis `key` most, among those not marked (not in
        `excluded` when given): core.analysis.hypotheses.DrivingPair records, strongest first."""
        engine = self.hypotheses_engine()
        excluded = self.marked() if excluded is None else frozenset(excluded)
        with self._engine_lock:
            cell = self._cell(key)
            sign = 1.0 if engine.standing_without(cell, excluded)[1]["delta"] >= 0 else -1.0
            group = int(engine.cell_group[cell])
            return engine.driving_pairs(group, key.concept, sign, excluded, top)

    def hypothesis_change(self, key: HypothesisKey, now, after) -> HypothesisChange:
        """Hypothesis `key`'s n, Δ, d, score and rank without the source indices `now`, then without
        `after` (a what-if: nothing is marked)."""
        from core.analysis.hypotheses import sentence

        engine = self.hypotheses_engine()
        with self._engine_lock:
            cell = self._cell(key)
            # one cell's standing rescoring only the cells that could outrank it (not a full pass)
            standings = [engine.standing_without(cell, frozenset(x)) for x in (now, after)]
        ranks = tuple(rank for rank, _ in standings)
        n, delta, d, score, q = (
            tuple(float(st[name]) for _, st in standings) for name in ("n", "delta", "d", "score", "q")
        )
        d = tuple(None if x != x else x for x in d)  # NaN: undefined (u has no spread)
        names = engine.names
        group_name = names.group(key.kind, key.group) if names is not None and key.kind != "concept" else ""
        text = sentence(
            kind=key.kind, group=key.group, group_name=group_name, concept=key.concept,
            concept_name=self.concept_name(key.concept), direction="more" if delta[0] >= 0 else "less",
            n=int(n[0]), delta=delta[0], d=d[0],
        )
        return HypothesisChange(key, text, (int(n[0]), int(n[1])), delta, d, score, ranks, q)

    def hypothesis_pairs(self, h) -> HypothesisPairs:
        """The driving pairs of a ranked hypothesis (core.analysis.hypotheses.Hypothesis), with their texts
        and each pair's u on its concept."""
        rows = self._rows_with_u(h.concept, [p.source_index for p in h.driving])
        return HypothesisPairs(HypothesisKey.of(h), h.sentence, h.concept_name, tuple(h.features), rows)

    def data_cluster_pairs(self, cluster: DataCluster) -> tuple[PairRow, ...]:
        """The pairs of a data cluster (of `data_clusters`), in source order, each with its u on the
        concept of the cluster's best hypothesis (`delta` None when it has none)."""
        if not cluster.hypotheses:
            return self.pair_rows(cluster.source_indices)
        return self._rows_with_u(cluster.hypotheses[0].concept, cluster.source_indices)

    def _rows_with_u(self, concept: int, source_indices) -> tuple[PairRow, ...]:
        """The texts of the given pairs, each with its u on response `concept` as its delta."""
        texts = self.pair_rows(source_indices)
        u = self.pair_u(concept, [r.source_index for r in texts])
        return tuple(PairRow(r.source_index, x, r.prompt, r.chosen, r.rejected) for r, x in zip(texts, u))

    def pair_u(self, concept: int, source_indices) -> list[float]:
        """Each pair's u on response `concept` (core.analysis.hypotheses.Hypotheses.concept_in_pairs: the one
        reading the ranking, its driving pairs and the pair view share), in the order given."""
        rows = self.analysis.rows(source_indices)
        return [float(x) for x in self.hypotheses_engine().concept_in_pairs(rows, concept)[2]]

    def evidence(self, h, n: int = 3) -> tuple[Snippet, ...]:
        """The `n` strongest exemplar snippets of hypothesis `h`'s concept in its driving pairs, one
        from a chosen and one from a rejected reply where both exist (core.analysis.evidence.exemplars). `h`: a
        core.analysis.hypotheses.Hypothesis, or a HypothesisKey (its driving pairs not marked)."""
        from core.analysis.evidence import exemplars

        if isinstance(h, HypothesisKey):
            features, driving = self.concept_of(h.concept), self.driving_pairs(h)
        else:
            features, driving = h.features, h.driving
        sources = [p.source_index for p in driving]
        counted = self.hypotheses_engine().counted(self.analysis.rows(sources))
        return exemplars(self.analysis, features, sources, dict(zip(sources, self.pair_u(h.concept, sources))), n,
                         counted=counted)

    def concepts(self, top: int = 100, grouped_only: bool = False, excluded=None,
                 fdr: float = DEFAULT_FDR) -> ConceptsView:
        """The `top` response concepts without the marked pairs (or the `excluded` ones): those whose
        global shift (mean u) is established at q < `fdr` first, then the rest, each by |shift|; each
        with its shift over all pairs beside it. Raises UsageError for top < 1 or an fdr outside
        (0, 0.25]."""
        at_least("--top", top)
        from core.analysis.calibration import check_fdr, detectable_d
        from core.analysis.hypotheses import concept_report

        try:
            fdr = check_fdr(fdr)
        except ValueError as e:
            raise UsageError(str(e)) from None
        engine = self.hypotheses_engine()
        excluded = self.marked() if excluded is None else frozenset(excluded)
        if self._concepts_before is None:
            everyone = concept_report(engine, frozenset(), top=engine.M)
            self._concepts_before = {c.shift.concept: c.shift.shift for c in everyone}
        moving = concept_report(engine, excluded, top=engine.M, fdr=fdr)  # every concept that moves
        shown = [c for c in moving if not grouped_only or c.shift.concept < engine.st.response.n_grouped]
        n_excluded = len(self.analysis.rows(excluded))
        n_pairs = self.analysis.n - n_excluded
        return ConceptsView(
            rows=tuple(shown[:top]),
            before=self._concepts_before,
            n_pairs=n_pairs,
            n_excluded=n_excluded,
            n_concepts=engine.M,
            n_grouped=engine.st.response.n_grouped,
            n_tested=len(moving),
            n_established=sum(c.shift.established for c in shown),
            fdr=fdr,
            detectable_d=detectable_d(len(moving), n_pairs, fdr),
        )

    def concept_features(self, concept: int) -> ConceptFeatures:
        """The features of response concept `concept`, each with its shift before and after the
        marks, largest |shift| now first."""
        features = self.concept_of(concept)
        t = self.triage()
        b, a = t.before, t.after
        rows = sorted(
            (
                ConceptFeature(
                    f, self.label(f),
                    (float(b.shift[f]), float(a.shift[f])),
                    (float(b.effect[f]), float(a.effect[f])),
                    (int(b.n_firing[f]), int(a.n_firing[f])),
                )
                for f in features
            ),
            key=lambda r: -abs(r.shift[1]),
        )
        return ConceptFeatures(concept, self.concept_name(concept), tuple(rows))

    # -- intervention plans (issue 11: train-dpo --plan WS applies the saved one) ----------------

    def plan(self):
        """The workspace's saved intervention plan (core.train.interventions.Plan), or None."""
        from core.train.interventions import load_plan

        return load_plan(self.ws)

    def train_dpo_command(self, out: str = "DIR") -> str:
        """The command that trains DPO on this workspace's dataset as triaged here: the marked pairs
        left out and the saved plan applied, with absolute paths (quoted for a POSIX shell)."""
        import shlex

        ws = shlex.quote(str(self.path.resolve()))
        data = shlex.quote(str(self.dataset_path.resolve())) if self.dataset_path.name else "DATA"
        return f"datadebug train-dpo {data} --out {out} --exclude-marked {ws} --plan {ws}"

    def save_plan(self, kind: str, features, strength: float | None = None, label: str = "",
                  source: str = "", text: str = ""):
        """Save an intervention plan on the concept made of `features` in the workspace, replacing
        any earlier one (core.train.interventions.make_plan, save_plan). Returns the Plan; raises UsageError
        as make_plan does."""
        from core.train.interventions import make_plan, save_plan

        plan = make_plan(self.ws, kind, features, strength, label=label, source=source, text=text)
        save_plan(self.ws, plan)
        return plan

    # -- clusters -------------------------------------------------------------------------------

    def data_clusters(self, per_cluster: int = 3, excluded=None, fdr: float = DEFAULT_FDR) -> DataClustersView:
        """The workspace's data clusters, the groups of the hypotheses' "cluster" rows
        (core.analysis.dataclusters, read from the fitted structure: nothing is refitted), largest
        first, each with its name, its pairs and its `per_cluster` best hypotheses of kind cluster
        ranked without the marked pairs (or the `excluded` ones) as `hypotheses` ranks them (the
        established first, q over every cell). Loads the hypothesis engine (as `hypotheses_engine`).
        Raises UsageError for per_cluster < 1 or an fdr outside (0, 0.25]."""
        at_least("--per-cluster", per_cluster)
        engine = self.hypotheses_engine()
        excluded = self.marked() if excluded is None else frozenset(excluded)
        with self._engine_lock:
            best = engine.best_by_group("cluster", excluded, per_cluster, fdr)
        st, names = engine.st, engine.names
        order = np.argsort(st.clusters, kind="stable")  # analysis rows by cluster, silent (-1) first
        bounds = np.searchsorted(st.clusters[order], np.arange(-1, st.k + 1))
        members = [tuple(sorted(int(x) for x in st.source_index[order[lo:hi]]))
                   for lo, hi in zip(bounds[:-1], bounds[1:])]
        clusters = tuple(
            DataCluster(k, names.group("cluster", k) if names is not None else "", len(members[k + 1]),
                        len(members[k + 1]) / max(st.n, 1), members[k + 1], best.get(k, ()))
            for k in range(st.k)
        )
        return DataClustersView(clusters, st.n, members[0], len(self.analysis.rows(excluded)),
                                fdr, st.key)

    def data_cluster(self, cluster: int) -> DataCluster:
        """One data cluster of `data_clusters` (its best hypothesis only). Raises UsageError for an
        unknown id."""
        view = self.data_clusters(per_cluster=1)
        match = [c for c in view.clusters if c.id == cluster]
        if not match:
            raise UsageError(f"no data cluster {cluster} (there are {len(view.clusters)})")
        return match[0]

    @property
    def k(self) -> int:
        """The workspace's number of clusters: the SAE grouping's silhouette choice, used by every
        grouping unless a k is given, so Clusters, Compare and a mark by cluster agree."""
        if self._k is None:
            from core.analysis.clusters import cluster_pairs

            c = cluster_pairs(self.analysis, by="sae")
            with self._lock:
                self._k = c.k
                self._clusterings[("sae", c.k)] = c
        return self._k

    def clusters(self, by: str = "sae", k: int | None = None):
        """The pairs grouped `by` "sae" or "embedding" into `k` clusters (default: `self.k`), as
        core.analysis.clusters.Clustering, computed once per (by, k). Raises UsageError as cluster_pairs."""
        from core.analysis.clusters import BY, cluster_pairs

        if by not in BY:  # before finding the workspace's k, which clusters the pairs
            raise UsageError(f"unknown clustering {by!r}; expected one of {', '.join(BY)}")
        k = self.k if k is None else k
        with self._lock:
            cached = self._clusterings.get((by, k))
        if cached is None:
            cached = cluster_pairs(self.analysis, by=by, k=k)
            with self._lock:
                self._clusterings[(by, k)] = cached
        return cached

    def compare(self, truth: set[int] | None = None, k: int | None = None) -> dict:
        """SAE clusters against embedding clusters with `k` each (default: `self.k`), as
        core.analysis.clusters.compare_clusterings returns them."""
        from core.analysis.clusters import compare_clusterings

        if truth is not None:
            indexed = set(self.analysis.source_index.tolist())
            unknown = sorted(set(truth) - indexed)
            if unknown:
                shown = ", ".join(map(str, unknown[:8])) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
                raise UsageError(f"truth names pairs that are not indexed in {self.path}: {shown}; "
                                 f"planted pairs are source indices of indexed pairs")
        return compare_clusterings(self.analysis, truth=truth, k=self.k if k is None else k)

    def compare_view(self) -> CompareView:
        """`compare()` with each SAE cluster's top feature label, for a table."""
        out = self.compare()
        sae = self.clusters("sae", out["k"])
        top = {c.id: (c.top_features[0].label if c.top_features else "") for c in sae.clusters}
        rows = tuple(
            CompareRow(
                int(r["cluster"]),
                int(r["size"]),
                top.get(int(r["cluster"]), ""),
                {int(e): int(n) for e, n in r["spread"].items()},
            )
            for r in out["sae_to_embedding"]
        )
        return CompareView(int(out["k"]), int(out["n_pairs"]), float(out["ari"]), float(out["nmi"]), rows)

    # -- export and the goblin test -------------------------------------------------------------

    def default_export_path(self) -> Path:
        """The last path exported to, else `<workspace>-<dataset stem>.clean.<suffixes>` beside the
        workspace folder."""
        if self.last_export is not None:
            return self.last_export
        if "hf" in self.meta:  # a Hugging Face dataset is exported to a folder of the same form
            return self.path.parent / f"{self.path.name}-{self.dataset_path.name}.clean"
        stem, _, suffix = (self.dataset_path.name or "data.jsonl").partition(".")
        return self.path.parent / f"{self.path.name}-{stem}.clean.{suffix or 'jsonl'}"

    def export(self, out: Path | str, overwrite: bool = False):
        """Write the kept records and the removed-pairs manifest (core.data.export.export_clean; raises
        ExportError as it does). Returns its ExportResult."""
        from core.data.export import export_clean
        from core.data.hfdata import changed, export_dataset, source_of

        source = source_of(self.meta)
        if source is None:
            result = export_clean(self.ws, Path(out), overwrite=overwrite)
        else:
            why = changed(self.meta)
            if why:
                raise ExportError(why)
            result = export_dataset(source, self.marks.marked, Path(out), overwrite=overwrite)
        self.last_export = Path(out)
        return result

    # -- the report ------------------------------------------------------------------------------

    def default_report_dir(self) -> Path:
        """Where the report goes unless told: `<workspace>-report` beside the workspace folder."""
        return self.path.parent / f"{self.path.name}-report"

    def write_report(self, out: Path | str | None = None, validation: Path | str | None = None,
                     progress: ProgressFn | None = None, cancel: threading.Event | None = None):
        """Write the workspace's report (Markdown, self-contained HTML, PNG plots) into the folder `out`
        (default `default_report_dir()`); `validation` adds a validation report's scatter. Returns
        core.report.ReportFiles; raises as core.report.write_report."""
        from core.report import write_report

        return write_report(self, out or self.default_report_dir(), validation=validation,
                            progress=progress, cancel=cancel)

    def goblin_workspace(self, rate: float, seed: int) -> Path:
        """Where the goblin test indexes its planted copy of the dataset (beside this workspace)."""
        return self.path.parent / f"{self.path.name}.goblin-{rate:g}-{seed}"

    def goblin(self, rate: float, seed: int = 0, limit: int | None = None, sae: str | None = None,
               progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> dict:
        """Plant goblins in `rate` of the chosen replies of a copy of the dataset, index the copy and
        measure what each method recovers (core.checks.goblin.run_goblin's result). `sae` None trains one."""
        from core.checks.goblin import run_goblin

        # the dataset as it was indexed: invalid records it holds were skipped then (--skip-invalid)
        skipped = any(not str(i).endswith("skipped") for i in self.meta.get("issues") or [])
        return run_goblin(self.dataset_path, self.goblin_workspace(rate, seed), rate, seed=seed,
                          limit=limit, sae=sae, progress=progress, cancel=cancel, skip_invalid=skipped)


# -- the catalogue's models and SAEs, by name -------------------------------------------------------


def models() -> ModelsView:
    """Every catalogue model and SAE with its store status, and every SAE trained here for a corpus
    ("RECIPE@KEY", with its FVU and corpus in `detail`)."""
    from core import locations
    from core.model.catalog import load_catalog
    from core.model.store import sae_ready, status

    cat = load_catalog()
    rows = []
    for r in status(cat, trained=True):
        if r.kind == "sae":
            entry = cat.saes.get(r.name)
            trainable = entry is None or entry.source == "train"  # a recipe, or a variant trained again
        else:
            sae = cat.saes.get(cat.models[r.name].sae or "")
            trainable = sae is not None and sae.source == "train" and not sae_ready(sae)
        rows.append(ModelRow(r.name, r.kind, r.source, r.ready, r.size_bytes, r.detail, trainable, r.path))
    return ModelsView(tuple(rows), tuple(cat.files), str(locations.user_catalog_file()))


def pull(name: str, progress: ProgressFn | None = None) -> Path:
    """Make the model or SAE `name` ready offline. Returns where it is stored. Raises CatalogError for
    an unknown name, StoreError when it cannot be fetched."""
    from core.model.catalog import load_catalog
    from core.model.store import pull_model, pull_sae

    cat = load_catalog()
    if name in cat.models:
        return pull_model(cat.models[name], progress)
    if name in cat.saes:
        return pull_sae(cat.saes[name], progress)
    raise CatalogError(f"unknown model or SAE {name!r}; known: {', '.join(sorted([*cat.models, *cat.saes]))}")


def verify(name: str) -> str:
    """Load the stored model or SAE `name` and check it is whole. Returns a one-line verdict."""
    from core.model.catalog import load_catalog
    from core.model.store import verify as verify_stored

    return verify_stored(load_catalog(), name)


def remove(name: str) -> int:
    """Delete the model or SAE `name` from the local store. Returns the bytes freed."""
    from core.model.catalog import load_catalog
    from core.model.store import remove as remove_stored

    return remove_stored(load_catalog(), name)


def train_sae(name: str | None = None, data=(), device: str | None = None, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None):
    """Train the SAE that `index` uses for the datasets `data`: recipe `name` (an SAE recipe, a
    "RECIPE@KEY" variant, or a model whose SAE is one; None: the default model's) for the corpus that
    starts with `data`'s replies (none: the bundled sample), stored as "RECIPE@KEY"
    (core.model.dataset_sae.train_dataset_sae). The one way the CLI (`sae train`) and the TUI train.
    Returns (its catalogue entry, its held-out quality SAEQuality). Raises CatalogError for an unknown
    name or an SAE not trained here, IngestError for an unreadable file, Cancelled."""
    from core.model.catalog import load_catalog
    from core.model.dataset_sae import train_dataset_sae

    cat = load_catalog()
    recipe = name.split("@", 1)[0] if name else None
    if recipe and recipe not in cat.saes and recipe not in cat.models:
        raise CatalogError(f"unknown SAE or model {name!r}; known: {', '.join(sorted([*cat.saes, *cat.models]))}")
    entry = cat.saes[recipe] if recipe in cat.saes else cat.sae(None, cat.model(recipe))
    if entry.source != "train":
        raise CatalogError(f"SAE {entry.name} is not trained here (source {entry.source!r})")
    return train_dataset_sae(cat.saes[entry.recipe], cat, list(data), device=device, progress=progress,
                             cancel=cancel)


def catalog_choices() -> CatalogChoices:
    """The catalogue's model and SAE names, and each model's default SAE."""
    from core.model.catalog import load_catalog

    cat = load_catalog()
    return CatalogChoices(
        models=tuple(cat.models),
        saes=tuple(cat.saes),
        default_model=cat.default_model,
        default_sae={m.name: m.sae or "" for m in cat.models.values()},
    )


def read_input(data: Path | str, split: str | None = None, config: str | None = None, format: str | None = None,
               skip_invalid: bool = False, limit: int | None = None):
    """Read `data` (a file or a Hugging Face dataset) as `index` will, without the model: bad input fails
    here in well under a second, with its one-line error. Returns core.data.ingest.IngestResult."""
    from core.data.hfdata import open_source
    from core.data.ingest import read_pairs

    return read_pairs(open_source(data, split, config) or data, format=format, skip_invalid=skip_invalid,
                      limit=limit)


def index(data: Path | str, workspace: Path | str, model: str | None = None, sae: str | None = None,
          limit: int | None = None, progress: ProgressFn | None = None,
          cancel: threading.Event | None = None, split: str | None = None, config: str | None = None,
          max_tokens: int | None = None, batch_tokens: int | None = None, chunk_pairs: int | None = None,
          **options):
    """Index `data` (a file or a Hugging Face dataset, see core.data.hfdata) into `workspace` (resuming an
    earlier run). `max_tokens`, `batch_tokens`, `chunk_pairs`: core.index.readout.IndexSettings (None: its
    default); `options`: core.index.build.index_dataset's format, skip_invalid, device, train_sae, ray,
    ray_workers. Returns core.index.build.IndexResult; raises Cancelled when cancelled (the chunks written
    are kept)."""
    from core.index.build import IndexSettings, index_dataset

    sizes = {k: v for k, v in (("max_tokens", max_tokens), ("batch_tokens", batch_tokens),
                               ("chunk_pairs", chunk_pairs)) if v is not None}
    return index_dataset(data, Path(workspace), model=model or None, sae=sae or None,
                         limit=limit, progress=progress, cancel=cancel, split=split, config=config,
                         settings=IndexSettings(**sizes), **options)


def intervention_kinds() -> dict[str, float]:
    """Each intervention kind a plan can take (core.train.interventions.KINDS) and its default strength.
    Imports torch."""
    from core.train.interventions import DEFAULT_STRENGTH, KINDS

    return {kind: DEFAULT_STRENGTH[kind] for kind in KINDS}


def demo_paths() -> tuple[Path, Path]:
    """(the demo workspace, the bundled sample dataset)."""
    from core import locations

    return locations.cache_dir() / "workspaces" / "demo", locations.sample_data_file()
