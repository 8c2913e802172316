"""Everything the TUI asks of core, in one object handed to the App (tests pass one on a small workspace).

Every method here may read LanceDB, load a model or run numpy over the whole workspace, so screens
call them only from thread workers. What comes back is plain frozen data (the `*View` classes below)
or core's own result dataclasses; no core object (Workspace, Analysis, Marks) leaves this module.
Core modules that pull in torch, sklearn or sentence-transformers are imported inside the methods
that need them, so the app starts in well under a second.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class NotAvailable(RuntimeError):
    """A core module the TUI codes against is not part of this build yet."""


def available(module: str) -> bool:
    """Whether `core.<module>` exists in this build (some arrive later than the TUI)."""
    return importlib.util.find_spec(f"core.{module}") is not None


# -- views: what the screens render ------------------------------------------------------------------


@dataclass(frozen=True)
class WorkspaceStatus:
    """What is on disk at a workspace path, before opening it."""

    path: Path
    exists: bool  # a datadebug workspace (meta table) is there
    n_pairs: int  # pairs indexed so far
    complete: bool  # the last index run finished (feature labels written)
    dataset: str  # the dataset path recorded in meta, "" when none


@dataclass(frozen=True)
class WorkspaceInfo:
    """The open workspace as the status line shows it (its name, never its full path)."""

    name: str
    model: str
    sae: str
    layer: int
    n_pairs: int
    dataset_name: str


@dataclass(frozen=True)
class WhatIf:
    """Per-feature moments over the pairs kept; index f is SAE feature f."""

    n_kept: int
    shift: np.ndarray  # (d_sae,) mean delta
    effect: np.ndarray  # (d_sae,) Cohen's d
    n_firing: np.ndarray  # (d_sae,) pairs where the feature fires in either reply


@dataclass(frozen=True)
class TriageState:
    """The marks as they stand, with the predicted shifts before (all pairs) and after (kept pairs)."""

    marked: frozenset[int]
    n_total: int
    can_undo: bool
    can_redo: bool
    before: WhatIf
    after: WhatIf
    reasons: dict[int, str] = field(default_factory=dict)

    @property
    def n_marked(self) -> int:
        return len(self.marked)

    @property
    def n_kept(self) -> int:
        return self.n_total - self.n_marked


@dataclass(frozen=True)
class MarkRequest:
    """One triage change. `action`: "mark" | "unmark" | "undo" | "redo"."""

    action: str
    source_indices: tuple[int, ...] = ()
    reason: str = ""
    scope: str = "pairs"
    features: tuple[int, ...] = ()


@dataclass(frozen=True)
class PairRow:
    """One pair in a list of pairs (a feature's drivers, a cluster's members)."""

    source_index: int
    delta: float | None
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class FeaturePairs:
    feature: int
    label: str
    direction: str
    shift: float
    rows: tuple[PairRow, ...]


@dataclass(frozen=True)
class PairDelta:
    feature: int
    label: str
    chosen: float  # mean activation over the chosen reply
    rejected: float
    delta: float


@dataclass(frozen=True)
class PairView:
    """One pair with what the Pair screen highlights."""

    source_index: int
    prompt: str
    chosen: str
    rejected: str
    chosen_tokens: tuple[str, ...]
    rejected_tokens: tuple[str, ...]
    # side -> feature -> ((token position, activation), ...), for each reply's strongest features
    firings: dict[str, dict[int, tuple[tuple[int, float], ...]]]
    top_deltas: tuple[PairDelta, ...]


@dataclass(frozen=True)
class ClusterFeatureView:
    feature: int
    label: str
    contrast: float
    q_value: float


@dataclass(frozen=True)
class ClusterView:
    id: int
    size: int
    source_indices: tuple[int, ...]
    top_features: tuple[ClusterFeatureView, ...]
    shift_contrast: tuple[ClusterFeatureView, ...]
    representative: tuple[int, ...]


@dataclass(frozen=True)
class ClusteringView:
    by: str
    k: int
    clusters: tuple[ClusterView, ...]


@dataclass(frozen=True)
class CompareView:
    k: int
    n_pairs: int
    ari: float
    nmi: float
    # per SAE cluster: (cluster id, size, top feature label, {embedding cluster: pairs})
    sae_to_embedding: tuple[tuple[int, int, str, dict[int, int]], ...]


@dataclass(frozen=True)
class ModelRow:
    name: str
    kind: str  # "model" | "sae"
    source: str
    ready: bool
    size_bytes: int
    detail: str
    trainable: bool  # an SAE trained here (or a model whose SAE is), not yet in the store


@dataclass(frozen=True)
class ModelsView:
    rows: tuple[ModelRow, ...]
    files: tuple[str, ...]  # the catalogue files read (packaged, then the user's)
    user_file: str  # where the user's own catalogue entries go (read when it exists)


@dataclass(frozen=True)
class CatalogChoices:
    models: tuple[str, ...]
    saes: tuple[str, ...]
    default_model: str
    default_sae: dict[str, str]  # model -> its catalogue SAE


def _as_view(features) -> tuple[ClusterFeatureView, ...]:
    return tuple(ClusterFeatureView(f.feature, f.label, f.contrast, f.q_value) for f in features)


# -- the service ---------------------------------------------------------------------------------------


class Services:
    """The TUI's one door into core, bound to one workspace at a time.

    Args:
        workspace: the workspace folder (may not exist yet).
        data: a dataset to index into it when it is not indexed yet.
        model, sae: catalogue names for indexing (None: the catalogue defaults).
        limit: index at most this many valid pairs.
    """

    def __init__(
        self,
        workspace: Path | str,
        data: Path | str | None = None,
        model: str | None = None,
        sae: str | None = None,
        limit: int | None = None,
    ):
        self.workspace_path = Path(workspace)
        self.data = Path(data) if data else None
        self.model = model
        self.sae = sae
        self.limit = limit
        self._ws = None
        self._analysis = None
        self._marks = None
        self._before: WhatIf | None = None
        self._dataset = Path()
        self._labels: dict[int, str] = {}
        self._clusterings: dict[str, object] = {}
        self._lock = threading.RLock()  # guards the open workspace and its caches
        # Marks are applied in the order they were asked for, whatever thread runs them.
        self._turn = threading.Condition()
        self._next_ticket = 0
        self._serving = 0

    # -- workspace ------------------------------------------------------------------------------

    def probe(self, path: Path | str | None = None) -> WorkspaceStatus:
        """What is at `path` (default: this service's workspace): indexed, partial or nothing."""
        from core.workspace import Workspace

        path = Path(path) if path else self.workspace_path
        if not (path / "meta.lance").exists():
            return WorkspaceStatus(path, False, 0, False, "")
        ws = Workspace(path)
        meta = ws.meta()
        n = len(ws.indexed_source_indices())
        complete = n > 0 and ws.has("features") and "d_sae" in meta
        return WorkspaceStatus(path, True, n, complete, str(meta.get("dataset", "")))

    def open(self, path: Path | str | None = None) -> tuple[WorkspaceInfo, TriageState]:
        """Load the workspace's analysis and marks. Raises WorkspaceError when it is not indexed."""
        from core.marks import Marks
        from core.shifts import Analysis
        from core.workspace import Workspace, WorkspaceError

        path = Path(path) if path else self.workspace_path
        ws = Workspace(path)
        meta = ws.meta()
        if "d_sae" not in meta or not ws.has("pairs"):
            raise WorkspaceError(f"workspace {path.name} has no indexed pairs yet")
        analysis = Analysis(ws)
        with self._lock:
            self.workspace_path = path
            self._ws, self._analysis, self._marks = ws, analysis, Marks(ws)
            self._labels.clear()
            self._clusterings.clear()
            self._before = self._what_if(frozenset())
            self._dataset = Path(meta.get("dataset", ""))
        info = WorkspaceInfo(
            name=path.name,
            model=str(meta.get("model", "")),
            sae=str(meta.get("sae", "")),
            layer=int(meta.get("layer", -1)),
            n_pairs=analysis.n,
            dataset_name=Path(meta.get("dataset", "")).name,
        )
        return info, self.triage_state()

    @property
    def is_open(self) -> bool:
        return self._analysis is not None

    def _need(self):
        if self._analysis is None:
            from core.workspace import WorkspaceError

            raise WorkspaceError("no workspace is open")
        return self._analysis

    # -- shifts and what-if ---------------------------------------------------------------------

    def report(self, top: int = 50, exclude_marked: bool = False):
        """core.shifts.ShiftReport of the open workspace; with exclude_marked, ranked without marked pairs."""
        analysis = self._need()
        excluded = self._marks.marked_set() if exclude_marked else None
        report = analysis.report(top=top, excluded=excluded)
        with self._lock:
            for f in report.features:
                self._labels.setdefault(f.feature, f.label)
        return report

    def _what_if(self, excluded: frozenset[int]) -> WhatIf:
        analysis = self._need()
        n, mean, sd, nf = analysis.moments(analysis.rows(excluded))
        if hasattr(analysis, "what_if"):
            n, mean, effect = analysis.what_if(set(excluded))
        else:
            effect = np.divide(mean, sd, out=np.zeros_like(mean), where=sd > 0)
        return WhatIf(int(n) if excluded else analysis.n, mean, effect, nf)

    def triage_state(self) -> TriageState:
        """The current marks and the shifts without them."""
        self._need()
        with self._lock:
            marks = self._marks
            marked = frozenset(marks.marked_set())
            reasons = {s: info.reason for s, info in marks.marked.items() if info.reason}
            return TriageState(
                marked=marked,
                n_total=self._analysis.n,
                can_undo=marks.can_undo,
                can_redo=marks.can_redo,
                before=self._before,
                after=self._what_if(marked) if marked else self._before,
                reasons=reasons,
            )

    # -- triage ---------------------------------------------------------------------------------

    def take_ticket(self) -> int:
        """A place in the queue of mark changes; take it on the UI thread when the key is pressed."""
        with self._turn:
            ticket = self._next_ticket
            self._next_ticket += 1
            return ticket

    def apply(self, ticket: int, request: MarkRequest) -> tuple[TriageState, str]:
        """Apply (and persist) one mark change once every earlier ticket is done.

        Returns the new state and a one-line note of what changed.
        """
        with self._turn:
            if not self._turn.wait_for(lambda: self._serving == ticket, timeout=120):
                raise RuntimeError(
                    "an earlier mark change never finished; restart the app to reload the marks"
                )
        try:
            self._need()
            with self._lock:
                note = self._apply(request)
            return self.triage_state(), note
        finally:
            with self._turn:
                self._serving += 1
                self._turn.notify_all()

    def _apply(self, r: MarkRequest) -> str:
        marks = self._marks
        if r.action == "mark":
            new = [s for s in r.source_indices if s not in marks.marked]
            if not new:
                return "already marked"
            marks.mark(new, reason=r.reason, scope=r.scope, features=r.features)
            return f"marked {len(new)} pair{'s' * (len(new) != 1)} ({r.scope})"
        if r.action == "unmark":
            old = [s for s in r.source_indices if s in marks.marked]
            if not old:
                return "nothing to unmark"
            marks.unmark(old, reason=r.reason, scope=r.scope)
            return f"unmarked {len(old)} pair{'s' * (len(old) != 1)} ({r.scope})"
        if r.action == "undo":
            op = marks.undo()
            return (
                f"undid: {op.action} {len(op.source_indices)} ({op.scope})"
                if op
                else "nothing to undo"
            )
        if r.action == "redo":
            op = marks.redo()
            return (
                f"redid: {op.action} {len(op.source_indices)} ({op.scope})"
                if op
                else "nothing to redo"
            )
        raise ValueError(f"unknown triage action {r.action!r}")

    # -- pairs ----------------------------------------------------------------------------------

    def label(self, feature: int) -> str:
        """A short label for one feature (published, else its firing and promoted tokens)."""
        analysis = self._need()
        with self._lock:
            if feature in self._labels:
                return self._labels[feature]
        published = analysis.feature_info().get(feature, {}).get("label") or ""
        text = analysis.describe(feature, n_contexts=0, published=published)[1]
        with self._lock:
            self._labels[feature] = text
        return text

    def feature_pairs(self, feature: int, top: int = 20) -> FeaturePairs:
        """The pairs that drive `feature`'s shift, largest delta in its direction first."""
        analysis = self._need()
        if available("clusters"):
            from core.clusters import trace_feature

            t = trace_feature(analysis, feature, top=top)
            rows = tuple(
                PairRow(p["source_index"], p["delta"], p["prompt"], p["chosen"], p["rejected"])
                for p in t["pairs"]
            )
            return FeaturePairs(
                feature, t.get("label") or self.label(feature), t["direction"], t["shift"], rows
            )
        tops = analysis.top_pairs_of(feature, top)
        rows = []
        for tp in tops:
            p = self._ws.pair(tp.source_index)
            rows.append(
                PairRow(tp.source_index, tp.delta, p["prompt_text"], p["chosen"], p["rejected"])
            )
        shift = float(self._before.shift[feature])
        return FeaturePairs(
            feature,
            self.label(feature),
            "amplified" if shift >= 0 else "suppressed",
            shift,
            tuple(rows),
        )

    def top_pair_indices(self, feature: int, n: int = 10) -> tuple[int, ...]:
        """Source indices of the `n` pairs pushing `feature` hardest in its direction."""
        return tuple(tp.source_index for tp in self._need().top_pairs_of(feature, n))

    def pair_rows(self, source_indices) -> tuple[PairRow, ...]:
        """Texts of the given pairs, in the order given."""
        analysis = self._need()
        indices = [int(s) for s in source_indices]
        if len(indices) <= 32:  # a few point lookups beat reading three text columns of every pair
            out = []
            for s in indices:
                p = self._ws.pair(s)
                out.append(PairRow(s, None, p["prompt_text"], p["chosen"], p["rejected"]))
            return tuple(out)
        t = self._ws.pairs_columns(
            ["source_index", "prompt_text", "chosen", "rejected"]
        )  # rows as analysis
        cols = {name: t[name] for name in ("prompt_text", "chosen", "rejected")}
        rows = [(s, analysis.row_of[s]) for s in indices if s in analysis.row_of]
        return tuple(
            PairRow(
                s,
                None,
                cols["prompt_text"][r].as_py(),
                cols["chosen"][r].as_py(),
                cols["rejected"][r].as_py(),
            )
            for s, r in rows
        )

    def pair(self, source_index: int, feature: int | None = None, n_deltas: int = 12) -> PairView:
        """One pair: texts, reply tokens, where each stored feature fires, and its largest deltas
        (with `feature` first when given, whatever its delta here)."""
        self._need()
        row = self._ws.pair(int(source_index))
        firings: dict[str, dict[int, list]] = {}
        means: dict[str, dict[int, float]] = {}
        for side in ("chosen", "rejected"):
            by_feature: dict[int, list] = {}
            for f, p, v in zip(
                row[f"{side}_tok_feat"], row[f"{side}_tok_pos"], row[f"{side}_tok_val"]
            ):
                by_feature.setdefault(int(f), []).append((int(p), float(v)))
            firings[side] = {f: tuple(sorted(x)) for f, x in by_feature.items()}
            means[side] = {
                int(f): float(v) for f, v in zip(row[f"{side}_feat"], row[f"{side}_mean"])
            }
        feats = set(means["chosen"]) | set(means["rejected"])
        delta = {f: means["chosen"].get(f, 0.0) - means["rejected"].get(f, 0.0) for f in feats}
        top = sorted(feats, key=lambda f: -abs(delta[f]))[:n_deltas]
        if feature is not None:
            top = [feature] + [f for f in top if f != feature][: n_deltas - 1]
        deltas = tuple(
            PairDelta(
                f,
                self.label(f),
                means["chosen"].get(f, 0.0),
                means["rejected"].get(f, 0.0),
                delta.get(f, 0.0),
            )
            for f in top
        )
        return PairView(
            source_index=int(source_index),
            prompt=row["prompt_text"],
            chosen=row["chosen"],
            rejected=row["rejected"],
            chosen_tokens=tuple(row["chosen_tokens"]),
            rejected_tokens=tuple(row["rejected_tokens"]),
            firings=firings,
            top_deltas=deltas,
        )

    # -- clusters -------------------------------------------------------------------------------

    def clusters(self, by: str = "sae") -> ClusteringView:
        """The open workspace's pairs clustered `by` "sae" or "embedding" (cached per workspace)."""
        if not available("clusters"):
            raise NotAvailable("clustering (core/clusters.py) is not available in this build")
        from core.clusters import cluster_pairs

        analysis = self._need()
        with self._lock:
            cached = self._clusterings.get(by)
        if cached is None:
            c = cluster_pairs(analysis, by=by)
            cached = ClusteringView(
                by=c.by,
                k=c.k,
                clusters=tuple(
                    ClusterView(
                        cl.id,
                        cl.size,
                        tuple(cl.source_indices),
                        _as_view(cl.top_features),
                        _as_view(cl.shift_contrast),
                        tuple(cl.representative),
                    )
                    for cl in c.clusters
                ),
            )
            with self._lock:
                self._clusterings[by] = cached
        return cached

    def compare(self) -> CompareView:
        """SAE clusters against embedding clusters: ARI, NMI and where each SAE cluster's pairs fall."""
        if not available("clusters"):
            raise NotAvailable(
                "the SAE vs embedding comparison (core/clusters.py) is not available in this build"
            )
        from core.clusters import compare_clusterings

        analysis = self._need()
        out = compare_clusterings(analysis)
        sae = self.clusters("sae") if out["k"] == self.clusters("sae").k else None
        top_label = {}
        if sae is not None:
            for c in sae.clusters:
                top_label[c.id] = c.top_features[0].label if c.top_features else ""
        rows = tuple(
            (
                int(r["cluster"]),
                int(r["size"]),
                top_label.get(int(r["cluster"]), ""),
                {int(k): int(v) for k, v in r["spread"].items()},
            )
            for r in out["sae_to_embedding"]
        )
        return CompareView(
            int(out["k"]), int(out["n_pairs"]), float(out["ari"]), float(out["nmi"]), rows
        )

    # -- goblin test ----------------------------------------------------------------------------

    def goblin_workspace(self, rate: float, seed: int) -> Path:
        """Where the goblin test indexes its planted copy of the dataset (beside the open workspace)."""
        return self.workspace_path.parent / f"{self.workspace_path.name}.goblin-{rate:g}-{seed}"

    def goblin(
        self,
        rate: float,
        seed: int = 0,
        limit: int | None = None,
        sae: str | None = None,
        progress=None,
        cancel=None,
    ) -> dict:
        """Plant goblins in `rate` of the chosen replies of a copy of the dataset, index the copy and
        measure what each method recovers (core.goblin.run_goblin's result). `sae` None trains one."""
        if not available("goblin"):
            raise NotAvailable("the goblin test (core/goblin.py) is not available in this build")
        from core.goblin import run_goblin

        return run_goblin(
            self.dataset_path(),
            self.goblin_workspace(rate, seed),
            rate,
            seed=seed,
            limit=limit,
            sae=sae,
            progress=progress,
            cancel=cancel,
        )

    def dataset_path(self) -> Path:
        """The open workspace's source dataset."""
        self._need()
        return self._dataset

    # -- export ---------------------------------------------------------------------------------

    def default_export_path(self) -> Path:
        """`<workspace>-<dataset stem>.clean.<suffixes>` beside the workspace folder (cheap: no I/O)."""
        stem, _, suffix = (self._dataset.name or "data.jsonl").partition(".")
        return (
            self.workspace_path.parent
            / f"{self.workspace_path.name}-{stem}.clean.{suffix or 'jsonl'}"
        )

    def export(self, out: Path | str, overwrite: bool = False):
        """Write the kept records and the removed-pairs manifest. Returns core.export.ExportResult."""
        if not available("export"):
            raise NotAvailable("export (core/export.py) is not available in this build")
        from core.export import export_clean

        self._need()
        return export_clean(self._ws, Path(out), overwrite=overwrite)

    # -- models ---------------------------------------------------------------------------------

    def models(self) -> ModelsView:
        """Every catalogue model and SAE with its store status."""
        from core.catalog import load_catalog
        from core.store import status

        cat = load_catalog()
        rows = []
        for r in status(cat):
            if r.kind == "sae":
                trainable = cat.saes[r.name].source == "train" and not r.ready
            else:
                sae = cat.saes.get(cat.models[r.name].sae or "")
                trainable = sae is not None and sae.source == "train" and not self._sae_ready(sae)
            rows.append(
                ModelRow(r.name, r.kind, r.source, r.ready, r.size_bytes, r.detail, trainable)
            )
        from core import locations

        return ModelsView(tuple(rows), tuple(cat.files), str(locations.user_catalog_file()))

    @staticmethod
    def _sae_ready(entry) -> bool:
        from core.store import sae_ready

        return sae_ready(entry)

    def pull(self, name: str, progress=None) -> str:
        """Make a model or SAE ready offline. Returns a one-line report; raises StoreError/CatalogError."""
        from core.catalog import load_catalog
        from core.store import pull_model, pull_sae

        cat = load_catalog()
        if name in cat.models:
            return f"{name}: ready at {pull_model(cat.models[name], progress)}"
        if name in cat.saes:
            return f"{name}: ready at {pull_sae(cat.saes[name], progress)}"
        from core.errors import CatalogError

        raise CatalogError(f"unknown model or SAE {name!r}")

    def verify(self, name: str) -> str:
        from core.catalog import load_catalog
        from core.store import verify

        return verify(load_catalog(), name)

    def remove(self, name: str) -> str:
        from core.catalog import load_catalog
        from core.store import remove

        freed = remove(load_catalog(), name)
        return f"{name}: removed ({freed / 2**20:.1f} MiB freed)"

    def train_sae(self, name: str, progress=None, cancel=None) -> str:
        """Train the SAE `name` (or the SAE of model `name`). Returns its held-out quality in one line."""
        from core.catalog import load_catalog
        from core.sae_train import train_catalog_sae

        cat = load_catalog()
        entry = cat.saes[name] if name in cat.saes else cat.sae(None, cat.model(name))
        q = train_catalog_sae(entry, cat, progress=progress, cancel=cancel)
        return f"SAE {entry.name}: FVU {q.fvu:.3f}, L0 {q.l0:.1f}, dead {q.dead_fraction:.1%}"

    def catalog_choices(self) -> CatalogChoices:
        from core.catalog import load_catalog

        cat = load_catalog()
        return CatalogChoices(
            models=tuple(cat.models),
            saes=tuple(cat.saes),
            default_model=cat.default_model,
            default_sae={m.name: m.sae or "" for m in cat.models.values()},
        )

    # -- indexing -------------------------------------------------------------------------------

    def index(
        self,
        data: Path | str,
        workspace: Path | str,
        model=None,
        sae=None,
        limit=None,
        progress=None,
        cancel=None,
    ):
        """Index `data` into `workspace` (resuming an earlier run). Returns core.index.IndexResult."""
        from core.index import index_dataset

        return index_dataset(
            Path(data),
            Path(workspace),
            model=model or None,
            sae=sae or None,
            limit=limit,
            progress=progress,
            cancel=cancel,
        )


def demo_paths() -> tuple[Path, Path]:
    """(the demo workspace, the bundled sample dataset)."""
    from core import locations

    return locations.cache_dir() / "workspaces" / "demo", locations.sample_data_file()


def describe_error(exc: BaseException) -> str:
    """The cause of a failure in one or two lines, the way a person should read it."""
    from core.errors import DatadebugError

    text = str(exc).strip() or "no detail"
    return text if isinstance(exc, DatadebugError) else f"{type(exc).__name__} (a bug in datadebug): {text}"
