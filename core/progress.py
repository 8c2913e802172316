"""The one way a long job reports progress and is cancelled.

A long job in core takes `progress: ProgressFn | None` and `cancel: threading.Event | None`. It calls
`progress(Progress(...))` now and then, calls `check_cancel(cancel, what)` between units of work, and
when cancelled raises `Cancelled` after saving what it can (an index keeps its written chunks, a DPO
run its checkpoint). It never knows who displays the progress: the CLI renders it as a line, the TUI
as a progress bar.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from core.errors import Cancelled


@dataclass(frozen=True)
class Progress:
    """One report from a long job.

    stage:   what it is doing: "load", "sae", "index", "labels", "train", "generate", "encode", ...
    message: a line for a person ("" when the numbers say it all)
    done, total: units of this stage done and expected (total 0: unknown)
    unit:    what is counted: "pairs", "steps", "replies", "tokens", ...
    rate:    throughput in `rate_unit` (0: unknown)
    eta_s:   seconds left in this stage, None when unknown
    metrics: numbers a stage reports as it goes (a DPO step's loss and reward margin, ...)
    """

    stage: str
    message: str = ""
    done: int = 0
    total: int = 0
    unit: str = ""
    rate: float = 0.0
    rate_unit: str = ""
    eta_s: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float | None:
        """done / total in [0, 1], None when the total is unknown."""
        return min(1.0, self.done / self.total) if self.total else None

    def line(self) -> str:
        """A one-line rendering: `stage: message | done/total unit | rate | ETA`."""
        parts = [f"{self.stage}: {self.message}" if self.message else self.stage]
        if self.total:
            parts.append(f"{self.done:,}/{self.total:,} {self.unit}".rstrip())
        elif self.done:
            parts.append(f"{self.done:,} {self.unit}".rstrip())
        if self.rate:
            parts.append(f"{self.rate:,.0f} {self.rate_unit}".rstrip())
        if self.metrics:
            parts.append(" ".join(f"{k} {v:.3g}" for k, v in self.metrics.items()))
        if self.eta_s is not None:
            parts.append(f"ETA {format_seconds(self.eta_s)}")
        return " | ".join(parts)


ProgressFn = Callable[[Progress], None]


def quiet(_: Progress) -> None:
    """A ProgressFn that shows nothing."""


def reporter(progress: ProgressFn | None) -> ProgressFn:
    """`progress`, or `quiet` when None."""
    return progress or quiet


def messages(progress: ProgressFn | None, stage: str) -> Callable[[str], None]:
    """A `str -> None` callback that reports each string as a Progress message of `stage`."""
    emit = reporter(progress)
    return lambda msg: emit(Progress(stage, msg))


def check_cancel(cancel: threading.Event | None, what: str) -> None:
    """Raise Cancelled("<what> cancelled") when `cancel` is set."""
    if cancel is not None and cancel.is_set():
        raise Cancelled(f"{what} cancelled")


def format_seconds(seconds: float) -> str:
    """'42s', '3m05s', '2h07m'."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
