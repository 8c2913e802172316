"""core/ is a library: importing it (and its CLI) must not pull in the TUI or heavy optional modules."""

import subprocess
import sys


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, timeout=120,
    ).stdout
    return set(out.split())


def test_core_never_imports_the_ui():
    mods = _modules_after(
        "import core.model.catalog, core.model.store, core.data.ingest, core.data.workspace, core.analysis.shifts, core.index.build, core.cli, core.train.dpo"
    )
    assert not {m for m in mods if m == "textual" or m.startswith("textual.") or m == "tui" or m.startswith("tui.")}


def test_slow_imports_stay_lazy():
    # sae_lens (~9 s) and sentence_transformers (~8 s) load only when a job needs them.
    mods = _modules_after("import core.cli, core.index.build, core.analysis.shifts")
    assert "sae_lens" not in mods and "sentence_transformers" not in mods


def test_the_cli_starts_without_lance_torch_or_scipy():
    """Every command's bad input fails in well under a second, before any heavy library loads, and
    lance's Rust logger is configured (core.cli.app.QUIET_ENV) before lance is first imported: a
    start-up import of lance printed its WARN lines into logs."""
    mods = _modules_after("import core.cli, core.views, core.jobs")
    assert not {"lancedb", "torch", "scipy", "pyarrow"} & mods, sorted({"lancedb", "torch", "scipy", "pyarrow"} & mods)
