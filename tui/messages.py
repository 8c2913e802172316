"""Messages that carry results from thread workers back to the UI thread.

Workers never touch widgets or reactives: they post one of these and a handler on the UI thread
applies it. Frequent progress messages replace an unprocessed earlier one (`can_replace`), so a fast
job cannot flood the queue.
"""

from __future__ import annotations

from textual.message import Message
from textual.worker import Worker

from core.progress import Progress
from core.views import (
    CatalogChoices,
    CompareView,
    ConceptFeatures,
    ConceptsView,
    DataClustersView,
    FeaturePairs,
    HypothesisPairs,
    ModelsView,
    PairRow,
    PairView,
    Preview,
    Selection,
    TriageState,
    WorkspaceInfo,
    WorkspaceStatus,
)


class WorkspaceOpened(Message):
    """A workspace is loaded: show its shifts."""

    def __init__(self, info: WorkspaceInfo, triage: TriageState) -> None:
        super().__init__()
        self.info = info
        self.triage = triage


class WorkspaceNeedsIndex(Message):
    """The workspace is missing or partly indexed: go to the Index screen."""

    def __init__(self, status: WorkspaceStatus, autostart: bool) -> None:
        super().__init__()
        self.status = status
        self.autostart = autostart


class MarkRequested(Message):
    """A screen asks for a mark change: "mark" | "unmark" | "undo" | "redo" (the app applies them in
    the order asked)."""

    def __init__(self, action: str, selection: Selection | None = None, reason: str = "") -> None:
        super().__init__()
        self.action = action
        self.selection = selection
        self.reason = reason


class TriageChanged(Message):
    """Marks changed (and are on disk); `note` says what happened."""

    def __init__(self, triage: TriageState, note: str) -> None:
        super().__init__()
        self.triage = triage
        self.note = note


class PreviewReady(Message):
    """What marking a selection would do, to confirm (and give a reason for, when asked)."""

    def __init__(self, preview: Preview, ask_reason: bool) -> None:
        super().__init__()
        self.preview = preview
        self.ask_reason = ask_reason


class WorkerFailed(Message):
    """A worker of a screen or widget ended in an error (Worker.StateChanged does not bubble)."""

    def __init__(self, worker: Worker) -> None:
        super().__init__()
        self.worker = worker


class ReportReady(Message):
    """A ranking of features (core.analysis.shifts.ShiftReport) without the `excluded` (marked) pairs."""

    def __init__(self, report, excluded: frozenset[int]) -> None:
        super().__init__()
        self.report = report
        self.excluded = excluded


class FeaturePairsReady(Message):
    def __init__(self, pairs: FeaturePairs) -> None:
        super().__init__()
        self.pairs = pairs


class PairRowsReady(Message):
    def __init__(self, rows: tuple[PairRow, ...]) -> None:
        super().__init__()
        self.rows = rows


class PairReady(Message):
    def __init__(self, pair: PairView) -> None:
        super().__init__()
        self.pair = pair


class ClustersReady(Message):
    """A core.analysis.clusters.Clustering."""

    def __init__(self, clustering) -> None:
        super().__init__()
        self.clustering = clustering


class DataClustersReady(Message):
    """The data clusters (core.views.DataClustersView), their hypotheses ranked without the `excluded`
    (marked) pairs."""

    def __init__(self, view: DataClustersView, excluded: frozenset[int]) -> None:
        super().__init__()
        self.view = view
        self.excluded = excluded


class CompareReady(Message):
    """The comparison, and the SAE grouping (core.analysis.clusters.Clustering) its rows are of."""

    def __init__(self, compare: CompareView, clustering) -> None:
        super().__init__()
        self.compare = compare
        self.clustering = clustering


class ModelsListed(Message):
    def __init__(self, models: ModelsView) -> None:
        super().__init__()
        self.models = models


class CatalogRead(Message):
    def __init__(self, choices: CatalogChoices) -> None:
        super().__init__()
        self.choices = choices


class JobProgressed(Message):
    """A core.progress.Progress of a long job; the latest one of a stage wins."""

    def __init__(self, job: int, progress: Progress) -> None:
        super().__init__()
        self.job = job
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return (
            isinstance(message, JobProgressed)
            and message.job == self.job
            and message.progress.stage == self.progress.stage
        )


class JobFinished(Message):
    """A long job returned `result` (a cancelled or failed one posts nothing: see WorkerFailed)."""

    def __init__(self, job: int, result) -> None:
        super().__init__()
        self.job = job
        self.result = result


class ReportWritten(Message):
    """core.report.ReportFiles of a finished report."""

    def __init__(self, files) -> None:
        super().__init__()
        self.files = files


class Exported(Message):
    """core.data.export.ExportResult of a finished export."""

    def __init__(self, result) -> None:
        super().__init__()
        self.result = result


class HypothesesReady(Message):
    """The landing view (core.views.Landing: hypotheses, established concept shifts) without the
    `excluded` (marked) pairs."""

    def __init__(self, landing, excluded: frozenset[int]) -> None:
        super().__init__()
        self.landing = landing
        self.excluded = excluded


class HypothesisPairsReady(Message):
    """A hypothesis' driving pairs, and its Δ and rank over all pairs -> without the marked ones
    (core.views.HypothesisChange; None when it is not ranked)."""

    def __init__(self, pairs: HypothesisPairs, change=None) -> None:
        super().__init__()
        self.pairs = pairs
        self.change = change


class ConceptsReady(Message):
    def __init__(self, concepts: ConceptsView, excluded: frozenset[int]) -> None:
        super().__init__()
        self.concepts = concepts
        self.excluded = excluded


class ConceptFeaturesReady(Message):
    def __init__(self, features: ConceptFeatures) -> None:
        super().__init__()
        self.features = features


class PlanChoicesReady(Message):
    """What the plan dialog offers: each kind's default strength, the plan saved now (or None), and
    the concept (`target`: a tui.screens.dialogs.PlanTarget) it was asked for."""

    def __init__(self, kinds: dict[str, float], current, target) -> None:
        super().__init__()
        self.kinds = kinds
        self.current = current
        self.target = target


class PlanChanged(Message):
    """The workspace's intervention plan (core.train.interventions.Plan) was read or saved (None: none)."""

    def __init__(self, plan, saved: bool = False) -> None:
        super().__init__()
        self.plan = plan
        self.saved = saved


class EvidenceReady(Message):
    """A hypothesis' exemplar snippets (core.views.Snippet), for the driving pairs it was ranked with."""

    def __init__(self, key: tuple, snippets: tuple) -> None:
        super().__init__()
        self.key = key
        self.snippets = snippets


class Open(Message):
    """A screen asks the app to open another screen: `target` names it in the app's table of screens
    (tui.app.SCREENS), `args` and `kwargs` are its arguments. Screens never import each other."""

    def __init__(self, target: str, *args, **kwargs) -> None:
        super().__init__()
        self.target = target
        self.args = args
        self.kwargs = kwargs
