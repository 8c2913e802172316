"""What `core.session` hands the front ends: small frozen records, safe to pass between threads.

Nothing here reads a workspace or computes; `core.session.Session` fills them. The CLI prints them,
the TUI renders them (dataset text in them is raw: a front end makes it visible, see core.data.textsafe).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

# Records and formats of the layers below that the front ends show as they are:
from core.analysis.calibration import DEFAULT_FDR, format_q  # noqa: F401
from core.analysis.evidence import Snippet, marked  # noqa: F401
from core.analysis.kinds import Kind  # noqa: F401
from core.data.containers import describe as data_files  # noqa: F401  (".jsonl, ... or .parquet", for help)
from core.data.shapes import formats as record_formats  # noqa: F401  (the record shapes, for help)

if TYPE_CHECKING:  # annotations only: front ends import this module at start-up, before lance loads
    from core.analysis.shifts import WhatIf
    from core.data.marks import MarkInfo


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
    """An open workspace as a status line shows it (its name, never its full path)."""

    name: str
    model: str
    sae: str
    layer: int
    n_pairs: int
    dataset_name: str


@dataclass(frozen=True)
class TriageState:
    """The marks as they stand, with the predicted shifts before (all pairs) and after (kept pairs)."""

    marked: frozenset[int]
    n_total: int
    can_undo: bool
    can_redo: bool
    before: WhatIf
    after: WhatIf
    info: Mapping[int, MarkInfo]  # source index -> why / who / when it is marked (a snapshot)

    @property
    def n_marked(self) -> int:
        return len(self.marked)

    @property
    def n_kept(self) -> int:
        return self.n_total - self.n_marked

    def reason(self, source_index: int) -> str:
        """The reason the pair is marked with ("" when unmarked or marked without one)."""
        info = self.info.get(source_index)
        return info.reason if info else ""


@dataclass(frozen=True)
class HypothesisKey:
    """Which hypothesis: its kind ("cluster" | "prompt" | "concept"), group and response concept
    (core.analysis.hypotheses.Hypothesis has the same three fields). Stable across marks."""

    kind: str
    group: int
    concept: int

    @classmethod
    def of(cls, h) -> HypothesisKey:
        return cls(h.kind, int(h.group), int(h.concept))

    def __str__(self) -> str:
        return f"{self.kind}:{self.group}:{self.concept}"

    def describe(self, concept_name: str = "") -> str:
        """How a person reads which hypothesis this is: 'concept 3 in data cluster 7 «step N»' (where, as
        core.analysis.kinds words it; the name last: where a line is cut, it is what goes)."""
        name = f" «{concept_name}»" if concept_name else ""
        return f"concept {self.concept} {Kind(self.kind).where(self.group)}{name}"


@dataclass(frozen=True)
class Selection:
    """Pairs named together for a mark: by source index, a feature's top pairs, a cluster, or a
    hypothesis' driving pairs."""

    source_indices: tuple[int, ...]
    scope: str  # how they were named: "pair", "feature 812 top 20", "cluster sae:3", ...
    features: tuple[int, ...] = ()  # features that flagged them
    hypothesis: HypothesisKey | None = None  # the hypothesis whose driving pairs they are

    def __len__(self) -> int:
        return len(self.source_indices)


@dataclass(frozen=True)
class PairRow:
    """One pair in a list of pairs (a feature's drivers, a cluster's members)."""

    source_index: int
    delta: float | None  # the listed feature's delta in this pair, None in a cluster's list
    prompt: str
    chosen: str
    rejected: str


@dataclass(frozen=True)
class ShiftChange:
    """One feature's predicted shift now and with a selection marked too."""

    feature: int
    label: str
    before: float
    after: float


@dataclass(frozen=True)
class HypothesisChange:
    """One hypothesis' statistics now and with a selection marked too (rank None: not ranked, its
    halves disagree or too few pairs support it)."""

    key: HypothesisKey
    sentence: str
    n: tuple[int, int]  # (now, after) pairs of its group
    delta: tuple[float, float]
    d: tuple[float | None, float | None]  # None: undefined (u has no spread)
    score: tuple[float, float]
    rank: tuple[int | None, int | None]  # the established first, as the landing view ranks
    q: tuple[float, float] = (float("nan"), float("nan"))  # q over every cell, now and after


@dataclass(frozen=True)
class Preview:
    """What marking a selection would do, shown before it is done."""

    selection: Selection
    n_new: int  # pairs of the selection not marked yet
    n_kept_before: int
    n_kept_after: int
    examples: tuple[PairRow, ...]  # the first few pairs of the selection
    changes: tuple[ShiftChange, ...]  # the selection's features
    hypothesis: HypothesisChange | None = None  # the selection's hypothesis, when it has one


@dataclass(frozen=True)
class FeaturePairs:
    """The pairs that drive one feature's shift, largest delta in its direction first."""

    feature: int
    label: str
    direction: str  # "amplified" | "suppressed"
    rows: tuple[PairRow, ...]


@dataclass(frozen=True)
class PairDelta:
    feature: int
    label: str
    chosen: float  # mean activation over the chosen reply
    rejected: float
    delta: float


@dataclass(frozen=True)
class ConceptInPair:
    """A concept (a set of SAE features) in one pair: the share of its features firing above τ in each
    reply (core.analysis.concepts.concept_rate) and their difference u (core.analysis.concepts.disparity)."""

    concept: int
    name: str
    features: tuple[int, ...]
    chosen: float
    rejected: float
    u: float


@dataclass(frozen=True)
class PairView:
    """One pair with what the Pair screen highlights."""

    source_index: int
    prompt: str
    chosen: str
    rejected: str
    chosen_tokens: tuple[str, ...]
    rejected_tokens: tuple[str, ...]
    # side -> feature -> ((token position, activation), ...), for every feature firing in the reply
    firings: Mapping[str, Mapping[int, tuple[tuple[int, float], ...]]]
    top_deltas: tuple[PairDelta, ...]
    concept: ConceptInPair | None = None  # the concept the pair was opened for, when it was
    # side -> the concept's features that count in that reply (strong, above τ: what its share and u
    # read, core.analysis.hypotheses.Hypotheses.counted); empty without a concept
    counted: Mapping[str, frozenset[int]] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class CompareRow:
    """One SAE cluster and where its pairs fall among the embedding clusters."""

    cluster: int
    size: int
    label: str  # the cluster's most characteristic feature's label
    spread: Mapping[int, int]  # embedding cluster -> pairs


@dataclass(frozen=True)
class CompareView:
    k: int  # clusters on each side (the workspace's one k)
    n_pairs: int
    ari: float
    nmi: float
    rows: tuple[CompareRow, ...]


@dataclass(frozen=True)
class DataCluster:
    """One data cluster as the hypotheses read it (core.analysis.dataclusters, fitted once with the
    workspace's structure), with its keyword name and what the labels select there."""

    id: int  # its number in the hypotheses' "cluster N" rows (largest cluster first)
    name: str  # its keyword name (core.analysis.naming), "" when it has none
    size: int  # pairs in the cluster (marked ones included)
    share: float  # of the workspace's pairs
    source_indices: tuple[int, ...]
    # its best hypotheses of kind cluster (core.analysis.hypotheses.Hypothesis), as Hypotheses ranks
    # them without the marked pairs: the established first; empty when none is ranked
    hypotheses: tuple = ()

    @property
    def n_established(self) -> int:
        return sum(h.established for h in self.hypotheses)


@dataclass(frozen=True)
class DataClustersView:
    """The data clusters of a workspace, largest first."""

    clusters: tuple[DataCluster, ...]
    n_pairs: int  # pairs indexed
    silent: tuple[int, ...]  # the silent bucket (least active pairs): in no cluster, read by no hypothesis
    n_excluded: int  # marked pairs left out of the hypotheses' statistics
    fdr: float  # a hypothesis is established at q below it
    structure_key: str  # the fitted structure read (core.analysis.structure)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelRow:
    name: str
    kind: str  # "model" | "sae"
    source: str
    ready: bool
    size_bytes: int
    detail: str
    trainable: bool  # an SAE trained here (or a model whose SAE is), not yet in the store
    path: str | None = None  # where it lives (or would) on disk


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
    default_sae: Mapping[str, str]  # model -> its catalogue SAE


@dataclass(frozen=True)
class HypothesisPairs:
    """The pairs that drive one hypothesis (not marked when it was ranked), strongest first: each
    row's `delta` is the pair's u on the hypothesis' concept."""

    key: HypothesisKey
    sentence: str
    concept_name: str
    features: tuple[int, ...]
    rows: tuple[PairRow, ...]


@dataclass(frozen=True)
class ConceptsView:
    """Response concepts by |global shift| without the marked pairs (core.analysis.hypotheses'
    NamedConceptShift rows), with each concept's shift over all pairs."""

    rows: tuple  # core.analysis.hypotheses.NamedConceptShift: the established first, each part by |shift| (after marks)
    before: Mapping[int, float]  # concept -> shift over all pairs
    n_pairs: int  # pairs counted (marked ones left out)
    n_excluded: int
    n_concepts: int
    n_grouped: int  # concepts that are communities of >= 4 features
    n_tested: int = 0  # concepts that move in some kept pair: q is over these
    n_established: int = 0  # of them, q < fdr (of the listed kind: grouped only, when asked)
    fdr: float = 0.1
    detectable_d: float = 0.0  # the smallest |mean u / SD| these pairs could establish (core.analysis.calibration)


@dataclass(frozen=True)
class Landing:
    """The landing view: the hypotheses (core.analysis.hypotheses.HypothesisReport, established first) and,
    beside them, the concepts whose global shift is established; what a person meets first."""

    hypotheses: object  # core.analysis.hypotheses.HypothesisReport
    concepts: ConceptsView  # only the established rows (empty when none is)


@dataclass(frozen=True)
class ConceptFeature:
    """One feature of a concept with its predicted shift before (all pairs) and after (kept pairs)."""

    feature: int
    label: str
    shift: tuple[float, float]
    effect: tuple[float, float]
    n_firing: tuple[int, int]


@dataclass(frozen=True)
class ConceptFeatures:
    concept: int
    name: str
    features: tuple[ConceptFeature, ...]  # largest |shift| (after) first
