"""Smoke test: the installed `datadebug-tui WS` in a real terminal (tmux, 80x24, 256 colours), driven by keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"
)


def _command(workspace: Path) -> list[str]:
    script = Path(sys.executable).parent / "datadebug-tui"
    if script.exists():
        return [str(script), str(workspace)]
    return [sys.executable, "-m", "tui.app", str(workspace)]


class Tmux:
    def __init__(self, name: str):
        self.name = name

    def run(self, *args: str) -> str:
        return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", self.name)

    def keys(self, *keys: str) -> None:
        for key in keys:  # one at a time: an Escape followed at once by a key would read as alt+key
            self.run("send-keys", "-t", self.name, key)
            time.sleep(0.3)

    def wait_for(self, text: str, timeout: float = 90) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            shown = self.screen()
            if text in shown:
                return shown
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never appeared; the screen was:\n{self.screen()}")

    def left_the_screen(self, text: str, timeout: float = 60) -> None:
        """Wait until the app's screen (showing `text`) is gone: the quit as a person sees it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if text not in self.screen():
                return
            time.sleep(0.3)
        raise AssertionError(f"the app still showed {text!r} {timeout:.0f} s after the quit:\n{self.screen()}")

    def ended(self, timeout: float = 60, reaped_within: float = 60) -> str:
        """How the app's process ended ("exit 0", "signal 11"; the pane stays: remain-on-exit). Fails
        when it still runs `timeout` s after the call. A process that has ended but that tmux has not
        reaped yet (a zombie: under load 7 one stayed so past 20 s) counts as ended, and its status is
        awaited `reaped_within` s more; "ended" when tmux never gives it."""
        pid = self.run("list-panes", "-t", self.name, "-F", "#{pane_pid}").strip()
        end, exited_at = time.monotonic() + timeout, None
        while True:
            dead, status, sig = self.run(
                "list-panes", "-t", self.name, "-F", "#{pane_dead}:#{pane_dead_status}:#{pane_dead_signal}"
            ).strip().split(":")
            # tmux may mark the pane dead (its terminal closed) a moment before it reaps the process
            if dead == "1" and (status or sig):
                return f"exit {status}" if status else f"signal {sig}"
            now = time.monotonic()
            if exited_at is None and _process_state(pid) in ("Z", "X", None):
                exited_at = now
            if exited_at is not None and now > exited_at + reaped_within:
                return "ended"
            if exited_at is None and now > end:
                raise AssertionError(f"the app was still running {timeout:.0f} s later (state "
                                     f"{_process_state(pid)}); the screen was:\n{self.screen()}")
            time.sleep(0.3)


def _process_state(pid: str) -> str | None:
    """The state letter of /proc/PID/stat (R, S, D, Z, ...), None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.fixture
def tmux(workspace, tmp_path):
    name = f"datadebug-smoke-{os.getpid()}-{tmp_path.name}"
    env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": ""}
    cmd = " ".join(f"'{c}'" for c in _command(workspace))
    subprocess.run(
        [
            "tmux",
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "80",
            "-y",
            "24",
            f"cd '{Path.cwd()}' && {cmd}",
        ],
        check=True,
        env=env,
    )
    # keep the pane when the app ends, so a test can read whether and how it ended
    subprocess.run(["tmux", "set-window-option", "-t", name, "remain-on-exit", "on"], check=True, capture_output=True)
    session = Tmux(name)
    yield session
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True, check=False)


@pytest.mark.slow(67)  # 67 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_browse_mark_and_quit_in_a_real_terminal(tmux, workspace):
    from core.data.marks import Marks
    from core.data.workspace import Workspace

    tmux.wait_for("kept 24 · marked 0 · total 24")
    landing = tmux.wait_for("ranked on all 24 pairs")  # it lands on Hypotheses, ranked
    assert "Hypotheses" in landing and "✓" in landing
    tmux.keys("4")  # Shifts, the per-feature ranking
    shifts = tmux.wait_for("top pairs:")  # the ranking is in
    assert "AMPLIFIED" in shifts and "l: suppressed" in shifts  # 80 columns: one side at a time
    tmux.keys("l")
    tmux.wait_for("SUPPRESSED")
    tmux.keys("h")
    tmux.wait_for("AMPLIFIED")
    tmux.keys("Enter")
    tmux.wait_for("pushing it hardest")  # the feature's pairs are listed
    tmux.keys("Enter")
    pair = tmux.wait_for("REJECTED")
    assert "PROMPT" in pair and "CHOSEN" in pair
    tmux.keys("m")
    marked = tmux.wait_for("kept 23 · marked 1 · total 24")
    assert "MARKED" in marked
    tmux.keys("Escape")
    tmux.wait_for("pushing it hardest")
    tmux.keys("q")
    # the quit must really happen (the process ends, cleanly) before the mark is read back from disk:
    # a check while the app still ran would pass without it
    tmux.left_the_screen("pushing it hardest")
    # The process ends within seconds of its screen: computations still running are dropped, only
    # saves and jobs are waited for (tui.quit; it outlived its screen by over 60 s before).
    assert tmux.ended(timeout=20) in ("exit 0", "ended"), tmux.screen()
    assert len(Marks(Workspace(workspace)).marked_set()) == 1
