"""What-if keypress speed on the TUI's own path: keypress -> marks written -> what-if -> tables refilled
-> a frame drawn, on a synthetic 260k-pair workspace (65,536-feature SAE) with 10% of its pairs marked.

The real App runs headless under a Pilot; a headless app computes every frame but sends it nowhere,
so each frame is also rendered to terminal bytes here (what a terminal would receive). Timed:

    y      in the preview that `m` opened on Hypotheses (the landing screen): mark the hypothesis'
           driving pairs; timed to the first frame that shows the ranking re-done without them
    u      undo (on Hypotheses), to the re-ranked frame
    m      on a feature's pairs list: mark the pair under the cursor (no dialog)
    y      in the mark preview that `t` opened on Shifts: mark the feature's next top pairs; Shifts
           redraws every before -> after cell
    u      undo (on Shifts)

Each is timed from just before the key is sent to the first frame drawn after the app applied the
new marks, and broken down into: marks write (the log append, persisted before the state is shown),
what-if (Analysis.shifts_without), triage (the session's new state: marks snapshot + what-if),
screens (every mounted screen redrawing its marks: tables, captions, status line) and frame (the
compositor's update rendered to bytes); on Hypotheses also rank (Session.hypotheses: the engine's
incremental what-if and the ranking, in a worker) and the preview (m -> the dialog with the hypothesis'
Δ, score and rank before -> after). The first open fits the workspace's structure (concepts, data
clusters, names) and caches it; its time is printed.

    .venv/bin/python -m tests.bench.bench_tui_whatif [--pairs 260000] [--marked 0.1] [--ops 260]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tests.bench.synthetic import finish_index, synthetic_workspace

TIMES: dict[str, list[float]] = defaultdict(list)  # component -> seconds of each call
FRAMES: list[tuple[float, float]] = []  # (perf_counter(), UI thread's CPU time) of each frame drawn
APPLIED: list[float] = []  # perf_counter() of each triage state the app applied
RANKED: list[tuple[float, frozenset]] = []  # (perf_counter(), marks left out) of each ranking shown


def timed(owner, name: str, component: str) -> None:
    """Wrap `owner.name` so each call's duration lands in TIMES[component]."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return original(*args, **kwargs)
        finally:
            TIMES[component].append(time.perf_counter() - start)
            TIMES[f"{component} cpu"].append(time.thread_time() - cpu)

    setattr(owner, name, wrapper)


STAMPS: dict[str, list[float]] = defaultdict(list)  # event -> perf_counter() of each


def stamp(owner, name: str, event: str) -> None:
    """Wrap `owner.name` so each call's start time lands in STAMPS[event]."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        STAMPS[event].append(time.perf_counter())
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def instrument(app) -> None:
    from rich.console import Console

    from core.data.marks import Marks
    from core.analysis.shifts import Analysis
    from tui.screens.base import DataScreen

    try:
        from core.session import Session
    except ImportError:  # the TUI before core/session.py (a baseline run)
        from tui.services import Services as Session

    from textual.screen import Screen

    from tui.services import Services

    timed(Marks, "_append", "marks write")
    timed(Analysis, "shifts_without" if hasattr(Analysis, "shifts_without") else "what_if", "what-if")
    timed(Session, "triage" if hasattr(Session, "triage") else "triage_state", "triage")
    timed(Services, "apply", "apply")
    timed(Session, "hypotheses", "rank")
    timed(Session, "preview", "preview")
    timed(DataScreen, "_triage_watch", "screens")
    timed(Screen, "_refresh_layout", "layout")
    timed(Screen, "_compositor_refresh", "compose")
    stamp(Services, "take_ticket", "handled")
    stamp(Services, "apply", "worker")
    console = Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=120)
    display = app._display

    def draw(screen, renderable):
        if renderable is not None:
            start = time.perf_counter()
            console.file = io.StringIO()
            console.file.write(renderable.render_segments(console))
            TIMES["frame"].append(time.perf_counter() - start)
            FRAMES.append((time.perf_counter(), time.thread_time()))
        return display(screen, renderable)

    app._display = draw

    from tui.screens.hypotheses import HypothesesScreen

    fill = HypothesesScreen._fill  # (the @on handler is bound at class creation: wrap what it calls)

    def ranked(screen):
        result = fill(screen)
        RANKED.append((time.perf_counter(), screen._ranked_without))
        return result

    HypothesesScreen._fill = ranked


def watch_triage(app) -> None:
    """Note when the app applies a new triage state (watchers run as the reactive is set)."""
    app.watch(app, "triage", lambda _: APPLIED.append(time.perf_counter()), init=False)


def build(path: Path, n: int, marked: float, ops: int, seed: int = 0, d_sae: int = 65_536):
    """The synthetic workspace with its features table (the app opens only a complete index) and
    `marked` of its pairs marked in `ops` operations."""
    from core.data.marks import Marks

    t = time.perf_counter()
    ws = finish_index(synthetic_workspace(path, n, d_sae=d_sae))
    print(f"built {n:,} pairs ({d_sae:,}-feature SAE) in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=int(n * marked), replace=False)
    marks = Marks(ws)
    for part in np.array_split(chosen, ops):
        marks.mark(part.tolist(), reason="bench", scope="pairs")
    print(f"marked {len(chosen):,} pairs in {ops} operations in {time.perf_counter() - t:.1f}s")
    return ws


@contextmanager
def window(label: str, rows: list):
    """Collect what the components spent between entering and leaving (one keypress)."""
    before = {k: len(v) for k, v in TIMES.items()}
    start, cpu = time.perf_counter(), time.thread_time()
    applied_before = len(APPLIED)
    result = {}
    yield result
    first_applied = APPLIED[applied_before] if len(APPLIED) > applied_before else None
    frame, frame_cpu = next(
        ((f, c) for f, c in FRAMES if first_applied is not None and f >= first_applied), (None, None)
    )
    result["total"] = (frame - start) if frame else float("nan")
    result["UI cpu"] = (frame_cpu - cpu) if frame else float("nan")
    for event, stamps in STAMPS.items():
        later = [x for x in stamps if x >= start]
        result[f"@{event}"] = (later[0] - start) if later else float("nan")
    result["@applied"] = (first_applied - start) if first_applied else float("nan")
    for k, v in TIMES.items():
        result[k] = sum(v[before.get(k, 0):])
    rows.append((label, result))


async def until(pilot, condition, timeout: float = 300.0) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("the app did not get there in time")
        await asyncio.sleep(0.002)


async def press_and_wait_frame(pilot, key: str, label: str, rows: list) -> None:
    app = pilot.app
    with window(label, rows):
        n_applied = len(APPLIED)
        await pilot.press(key)
        await until(pilot, lambda: len(APPLIED) > n_applied)
        await until(pilot, lambda: FRAMES and FRAMES[-1][0] >= APPLIED[n_applied])
    await app.workers.wait_for_complete()
    await pilot.pause()


async def press_and_wait_ranked(pilot, key: str, label: str, rows: list) -> None:
    """Press `key` on Hypotheses; done at the first frame drawn after the ranking without the marks
    the key left was shown."""
    app = pilot.app
    with window(label, rows) as result:
        start, n_applied = time.perf_counter(), len(APPLIED)
        await pilot.press(key)
        await until(pilot, lambda: len(APPLIED) > n_applied)
        marked = app.session.marked()
        await until(pilot, lambda: any(t >= start and ex == marked for t, ex in RANKED))
        shown = next(t for t, ex in RANKED if t >= start and ex == marked)
        await until(pilot, lambda: FRAMES and FRAMES[-1][0] >= shown)
        frame = next(f for f, _ in FRAMES if f >= shown)
    result["total"] = frame - start  # to the re-ranked frame, not the first frame after the marks
    await app.workers.wait_for_complete()
    await pilot.pause()


async def open_preview(pilot, key: str, name: str) -> None:
    """Press `key`, wait for the mark preview; its time lands in TIMES[name]."""
    from tui.screens.dialogs import MarkDialog

    t = time.perf_counter()
    await pilot.press(key)
    await until(pilot, lambda: isinstance(pilot.app.screen, MarkDialog))
    await pilot.pause()
    TIMES[name].append(time.perf_counter() - t)


async def drive(workspace: Path, presses: int, freeze: bool = False) -> list:
    from tui.app import DataDebugApp
    from tui.screens.hypotheses import HypothesesScreen
    from tui.screens.pairs import PairsScreen
    from tui.screens.shifts import ShiftsScreen
    from tui.services import Services

    app = DataDebugApp(Services(workspace))
    instrument(app)
    rows: list = []
    async with app.run_test(size=(120, 40)) as pilot:
        t = time.perf_counter()
        await until(pilot, lambda: isinstance(app.screen, HypothesesScreen) and app.screen.report is not None,
                    timeout=3600)
        await app.workers.wait_for_complete()
        watch_triage(app)
        print(f"app open, structure fitted (first open) and Hypotheses ranked in {time.perf_counter() - t:.1f}s")
        await pilot.pause()
        for i in range(presses):
            await open_preview(pilot, "m", "hypothesis preview (m -> dialog)")
            await press_and_wait_ranked(pilot, "y", "y: mark drivers on Hypotheses", rows)
            await press_and_wait_ranked(pilot, "u", "u: undo on Hypotheses", rows)
            await press_and_wait_ranked(pilot, "ctrl+r", "ctrl+r: redo on Hypotheses", rows)
            await pilot.press("j")
        t = time.perf_counter()
        await pilot.press("4")
        await until(pilot, lambda: isinstance(app.screen, ShiftsScreen) and app.screen.report is not None)
        await app.workers.wait_for_complete()
        if freeze:
            import gc

            gc.collect()
            gc.freeze()
        print(f"Shifts ranked in {time.perf_counter() - t:.1f}s "
              f"({app.triage.n_marked:,} of {app.triage.n_total:,} pairs marked)")
        await pilot.pause()
        for i in range(presses):
            await open_preview(pilot, "t", "preview (t -> dialog)")
            await press_and_wait_frame(pilot, "y", "y: mark top pairs on Shifts", rows)
            await press_and_wait_frame(pilot, "u", "u: undo on Shifts", rows)
            await press_and_wait_frame(pilot, "ctrl+r", "ctrl+r: redo on Shifts", rows)
            await pilot.press("j")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, PairsScreen) and app.screen.rows)
        await pilot.pause()
        for i in range(presses):
            await pilot.press("j")
            await pilot.pause()
            await press_and_wait_frame(pilot, "m", "m: mark a pair on Pairs", rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=260_000)
    ap.add_argument("--d-sae", type=int, default=65_536)
    ap.add_argument("--marked", type=float, default=0.1, help="share of pairs marked before the keypresses")
    ap.add_argument("--ops", type=int, default=260, help="mark operations that marked them (log length)")
    ap.add_argument("--presses", type=int, default=5, help="presses of each key")
    ap.add_argument("--freeze", action="store_true", help="gc.freeze() once the workspace is open")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = build(Path(tmp) / "ws", args.pairs, args.marked, args.ops, d_sae=args.d_sae)
        rows = asyncio.run(drive(ws.path, args.presses, args.freeze))
    parts = ["UI cpu", "apply cpu", "marks write", "what-if", "triage", "apply", "rank", "screens",
             "compose", "frame", "@applied"]
    print(f"\nkeypress -> frame drawn, median of {args.presses} (ms); components overlap: triage "
          "includes what-if, the keypress total includes all and the event loop")
    print(f"{'key':<32}{'total':>8}" + "".join(f"{p:>12}" for p in parts))
    by_key: dict[str, list[dict]] = defaultdict(list)
    for label, r in rows:
        by_key[label].append(r)
    for label, rs in by_key.items():
        med = {k: 1e3 * statistics.median(r.get(k, 0.0) for r in rs) for k in ["total", *parts]}
        worst = 1e3 * max(r["total"] for r in rs)
        print(f"{label:<32}{med['total']:>8.1f}" + "".join(f"{med[p]:>12.1f}" for p in parts)
              + f"   (worst {worst:.1f})")
    import resource

    print(f"peak memory {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
    for name, what in (("hypothesis preview (m -> dialog)", "m on Hypotheses -> the dialog with the"
                        " drivers and the hypothesis' Δ, score, rank before->after"),
                       ("preview (t -> dialog)", "t on Shifts -> the dialog with counts, examples,"
                        " shift before->after")):
        if TIMES.get(name):
            print(f"preview ({what}): median {1e3 * statistics.median(TIMES[name]):.0f} ms")


if __name__ == "__main__":
    main()
