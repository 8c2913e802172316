"""The report from the TUI: R on the main app writes the same report as `datadebug report`."""

from __future__ import annotations

import pytest

from tests.tui.conftest import landed, make_app, settle, wait_until

pytestmark = pytest.mark.anyio


async def test_r_writes_the_report_beside_the_workspace(workspace):
    out = workspace.parent / f"{workspace.name}-report"
    app = make_app(workspace)
    async with app.run_test(size=(120, 40)) as pilot:
        await landed(pilot)
        assert not out.exists()
        await pilot.press("R")
        await settle(pilot)
        await wait_until(pilot, lambda: (out / "report.html").exists(), timeout=120, what="the report")
        await settle(pilot)
        assert app.note == "report written"
    md = (out / "report.md").read_text()
    assert md.startswith(f"# datadebug report\\: {workspace.name}")
    assert (out / "plots" / "concepts.png").is_file() and "](plots/concepts.png)" in md
