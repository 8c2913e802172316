"""Messages that carry results from thread workers back to the UI thread.

Workers never touch widgets or reactives: they post one of these and a handler on the UI thread
applies it. Frequent progress messages replace an unprocessed earlier one (`can_replace`), so a fast
job cannot flood the queue.
"""

from __future__ import annotations

from textual.message import Message

from tui.services import (
    CatalogChoices,
    ClusteringView,
    CompareView,
    FeaturePairs,
    MarkRequest,
    ModelsView,
    PairRow,
    PairView,
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
    """A screen asks for a mark change (UI thread to app; the app applies changes in order)."""

    def __init__(self, request: MarkRequest) -> None:
        super().__init__()
        self.request = request


class TriageChanged(Message):
    """Marks changed (and are on disk); `note` says what happened."""

    def __init__(self, triage: TriageState, note: str) -> None:
        super().__init__()
        self.triage = triage
        self.note = note


class ReportReady(Message):
    """A ranking of features (core.shifts.ShiftReport)."""

    def __init__(self, report, without_marked: bool) -> None:
        super().__init__()
        self.report = report
        self.without_marked = without_marked


class FeaturePairsReady(Message):
    def __init__(self, pairs: FeaturePairs) -> None:
        super().__init__()
        self.pairs = pairs


class PairRowsReady(Message):
    def __init__(self, rows: tuple[PairRow, ...]) -> None:
        super().__init__()
        self.rows = rows


class TopPairsFound(Message):
    """The top pairs of a feature, found so they can be marked."""

    def __init__(self, feature: int, source_indices: tuple[int, ...], reason: str) -> None:
        super().__init__()
        self.feature = feature
        self.source_indices = source_indices
        self.reason = reason


class PairReady(Message):
    def __init__(self, pair: PairView) -> None:
        super().__init__()
        self.pair = pair


class ClustersReady(Message):
    def __init__(self, clustering: ClusteringView) -> None:
        super().__init__()
        self.clustering = clustering


class CompareReady(Message):
    def __init__(self, compare: CompareView) -> None:
        super().__init__()
        self.compare = compare


class ModelsListed(Message):
    def __init__(self, models: ModelsView) -> None:
        super().__init__()
        self.models = models


class JobProgress(Message):
    """A line of progress from a long job (pull, train, goblin test); the latest one wins."""

    def __init__(self, job: str, text: str, fraction: float | None = None) -> None:
        super().__init__()
        self.job = job
        self.text = text
        self.fraction = fraction

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, JobProgress) and message.job == self.job


class JobDone(Message):
    """A long job finished; `text` is its one-line result."""

    def __init__(self, job: str, text: str) -> None:
        super().__init__()
        self.job = job
        self.text = text


class CatalogRead(Message):
    def __init__(self, choices: CatalogChoices) -> None:
        super().__init__()
        self.choices = choices


class IndexProgressed(Message):
    """A core.progress.Progress of an index run; the latest one wins."""

    def __init__(self, progress) -> None:
        super().__init__()
        self.progress = progress

    def can_replace(self, message: Message) -> bool:
        return (
            isinstance(message, IndexProgressed) and message.progress.stage == self.progress.stage
        )


class IndexFinished(Message):
    """An index run ended (core.index.IndexResult; a cancelled run raises Cancelled instead)."""

    def __init__(self, result, workspace) -> None:
        super().__init__()
        self.result = result
        self.workspace = workspace


class GoblinDone(Message):
    def __init__(self, result: dict) -> None:
        super().__init__()
        self.result = result


class Exported(Message):
    """core.export.ExportResult of a finished export."""

    def __init__(self, result) -> None:
        super().__init__()
        self.result = result
