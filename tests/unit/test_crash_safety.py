"""Marks and export under real processes: concurrent writers, kill -9 at chosen moments.

Each kill is a real SIGKILL of a real `datadebug` process (python -m core.cli via runpy), at a
moment chosen by wrapping one of its own functions in that process: nothing is simulated in the
process under test but the timing of its death. After each: no loss, no duplicate, no partial file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.errors import ExportError, UsageError
from core.data.export import export_clean
from core.data.marks import Marks, replay
from core.data.workspace import Workspace, file_sha256
from tests.unit.test_shifts import build_workspace

ROOT = Path(__file__).resolve().parents[2]
N_SOURCE = 120  # source records; the workspace indexes the even ones (as after skipped records)


def triage_workspace(tmp_path: Path, crlf: bool = False) -> Workspace:
    """A workspace of 60 indexed pairs (source indices 0, 2, ..., 118) of a real 120-line JSONL file."""
    src = tmp_path / "data.jsonl"
    end = b"\r\n" if crlf else b"\n"
    src.write_bytes(b"".join(
        json.dumps({"prompt": f"question {i}", "chosen": f"good {i} caf\u00e9", "rejected": f"bad {i}"},
                   ensure_ascii=i % 2 == 0).encode() + end for i in range(N_SOURCE)))
    chosen = [{0: 1.0 + i / 100, 3: 0.5} for i in range(60)]
    rejected = [{0: 1.0, 5: 0.2 * (i % 3)} for i in range(60)]
    ws = build_workspace(tmp_path / "ws", chosen, rejected)
    ws.write_meta({"dataset": str(src), "dataset_sha256": file_sha256(src), "n_records": N_SOURCE})
    return ws


PROBE = """
import os, signal, sys, threading, time, runpy
moment, flag = sys.argv[1], sys.argv[2]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def wait_for(path):
    open(flag + ".holding", "w").close()
    while not os.path.exists(path):
        time.sleep(0.02)
import core.data.marks, core.data.export
if moment == "mark-mid-commit":
    # Kill the moment lance puts the op's first file on disk (a data fragment, a staging file, a
    # transaction), i.e. inside the commit and before its new version is published. Lance writes from
    # its own threads while the caller waits, so this thread sees the file appear within microseconds.
    orig = core.data.marks.Marks._write_row
    def patched(self, row):
        folder = self.ws.path / "marks.lance"
        def files():
            return {str(p) for sub in ("data", "_transactions", "_versions") if (folder / sub).is_dir()
                    for p in (folder / sub).iterdir()}
        before = files()
        stop = threading.Event()
        def watch():
            while not stop.is_set():
                new = files() - before
                if new:
                    with open(flag + ".seen", "w") as f:
                        f.write(" ".join(sorted(new)))
                    die()
        threading.Thread(target=watch, daemon=True).start()
        orig(self, row)
        stop.set()
        open(flag + ".committed", "w").close()  # the commit returned before the kill
        time.sleep(30)
    core.data.marks.Marks._write_row = patched
elif moment == "export-mid-manifest":
    # Kill after the first entry of the removed-pairs manifest reached its temporary file (flushed to
    # disk), the output's temporary file already whole: inside the manifest write.
    orig_write_tmp = core.data.export._write_tmp
    def write_tmp(path, write):
        if not path.name.endswith(".removed.jsonl"):
            return orig_write_tmp(path, write)
        class Dying:
            def __init__(self, f):
                self.f = f
            def write(self, b):
                self.f.write(b)
                self.f.flush()
                os.fsync(self.f.fileno())
                die()
        return orig_write_tmp(path, lambda f: write(Dying(f)))
    core.data.export._write_tmp = write_tmp
elif moment.startswith("mark"):
    orig = core.data.marks.Marks._write_row
    def patched(self, row):
        if moment == "mark-before-write":  # lock held, log caught up, nothing written; another waits
            wait_for(flag + ".go")
            die()
        orig(self, row)
        die()  # mark-after-write: committed, state and output not yet
    core.data.marks.Marks._write_row = patched
else:
    if moment == "export-mid-output":
        orig_writer = core.data.export._writer
        def writer(*a, **k):
            inner = orig_writer(*a, **k)
            def write(f):
                f.write(b'{"prompt": "half a rec')
                f.flush()
                die()
            return write
        core.data.export._writer = writer
    else:
        orig_publish = core.data.export._publish
        calls = []
        def publish(tmp, path, *a):
            if moment == "export-before-rename":
                die()
            orig_publish(tmp, path, *a)
            calls.append(path)
            die()  # export-between-renames: the manifest is in place, the output not yet
        core.data.export._publish = publish
sys.argv = ["datadebug", *sys.argv[3:]]
runpy.run_module("core.cli", run_name="__main__")
"""


def run_cli(*args, moment: str | None = None, flag: Path | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "core.cli", *args] if moment is None else \
        [sys.executable, "-c", PROBE, moment, str(flag), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def assert_log_is_a_sequence(ws_path: Path) -> list:
    ops = Marks(Workspace(ws_path)).history()
    assert [op.op_id for op in ops] == list(range(len(ops))), [op.op_id for op in ops]
    return ops


# -- marks ----------------------------------------------------------------------------------------


def test_marks_name_only_indexed_pairs(tmp_path):
    ws = triage_workspace(tmp_path)
    m = Marks(ws)
    for bad, why in (([99999], "99999: no such pair"), ([-5], "-5: no such pair"),
                     ([1], "1: in the source but not indexed"), ([], "no pairs to mark")):
        with pytest.raises(UsageError, match=why):
            m.mark(bad)
    with pytest.raises(UsageError, match="99999: no such pair"):
        m.unmark([99999])
    assert m.history() == [] and not ws.has("marks")  # nothing was logged
    assert m.mark([0, 2]).source_indices == (0, 2)


def test_cli_mark_refuses_what_it_cannot_mark(tmp_path):
    from click.testing import CliRunner
    import typer

    from core.cli import app

    ws = triage_workspace(tmp_path)
    runner, cmd = CliRunner(), typer.main.get_command(app)
    w = ["-w", str(ws.path)]
    for args, why in (
        (["mark", "99999"], "no such pair"), (["mark", *w, "--", "-5"], "no such pair"),
        (["unmark", "99999"], "no such pair"), (["mark", "1"], "not indexed"),
        (["mark", "--feature", "-1"], "feature -1 is outside 0..15"),
        (["mark", "--feature", "999999"], "outside 0..15"), (["mark", "--feature", "3", "--top", "-3"], "top -3"),
        (["mark", "--cluster", "1", "--by", "foo"], "unknown clustering 'foo'"),
        (["mark", "--cluster", "99", "--k", "3"], "no sae cluster 99"),
        (["trace", "--feature", "3", "--top", "-1"], "top -1"), (["shifts", "--top", "-1"], "top -1"),
        (["unmark", "--all"], "no pairs to unmark"),
    ):
        full = args if "--" in args else [*args, *w]
        r = runner.invoke(cmd, full)
        assert r.exit_code == 2, (args, r.output)
        assert len(r.stderr.splitlines()) == 1 and why in r.stderr, (args, r.stderr)
    assert not ws.has("marks")


def test_concurrent_mark_processes_get_unique_sequential_op_ids(tmp_path):
    ws = triage_workspace(tmp_path)
    start = time.time() + 4  # every process imports first, then all mark at the same moment
    script = (
        "import sys, time\nfrom core.data.marks import Marks\nfrom core.data.workspace import Workspace\n"
        "ws, me, start = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])\n"
        "m = Marks(Workspace(ws))\n"
        "time.sleep(max(0, start - time.time()))\n"
        "for j in range(4):\n    m.mark([2 * (me * 4 + j)], reason=f'p{me}')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(ws.path), str(i), str(start)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for i in range(4)]
    for p in procs:
        assert p.wait(timeout=180) == 0, p.stderr.read()
    ops = assert_log_is_a_sequence(ws.path)
    assert len(ops) == 16
    assert Marks(Workspace(ws.path)).marked_set() == {2 * i for i in range(16)}


# A kill inside the write is test_kill_9_inside_a_marks_commit_loses_and_duplicates_nothing: it proves
# where each kill landed. A timer-fired kill here ("mark-during-write") passed whether it landed in
# the write or after it, so it proved nothing and is gone.
@pytest.mark.parametrize("moment", ["mark-before-write", "mark-after-write"])
def test_kill_9_while_marking_loses_and_duplicates_nothing(tmp_path, moment):
    """Each moment is certain: before the write the victim waits, lock held, until it is told to
    die; after the write it dies the moment the commit returned (its op must then be there)."""
    ws = triage_workspace(tmp_path)
    Marks(ws).mark([0], reason="first")
    flag = tmp_path / "flag"
    w = ["-w", str(ws.path)]
    victim = run_cli("mark", "4", "6", *w, "--reason", "victim", moment=moment, flag=flag, wait=False)
    other = None
    if moment == "mark-before-write":
        # the victim holds the lock; a second process must wait for it, then go on after its death
        deadline = time.time() + 60
        while not Path(f"{flag}.holding").exists():
            assert time.time() < deadline and victim.poll() is None
            time.sleep(0.05)
        other = run_cli("mark", "8", *w, "--reason", "other", wait=False)
        time.sleep(3)
        Path(f"{flag}.go").touch()
    victim.communicate(timeout=120)
    assert victim.returncode == -9
    if other is not None:
        out, err = other.communicate(timeout=120)
        assert other.returncode == 0, err
    ops = assert_log_is_a_sequence(ws.path)
    victims = [op for op in ops if op.reason == "victim"]
    if moment == "mark-before-write":
        assert victims == [] and [op.reason for op in ops] == ["first", "other"]
    else:  # mark-after-write
        assert len(victims) == 1 and victims[0].source_indices == (4, 6)
    marks = Marks(Workspace(ws.path))
    assert marks.marked_set() == replay(ops).marked.keys()
    op = marks.mark([10])  # the log goes on where it stopped
    assert op.op_id == len(ops)
    assert_log_is_a_sequence(ws.path)


# -- export ---------------------------------------------------------------------------------------


def test_export_refuses_a_directory_and_another_format(tmp_path):
    ws = triage_workspace(tmp_path)
    (tmp_path / "outdir").mkdir()
    with pytest.raises(ExportError, match="is a directory"):
        export_clean(ws, tmp_path / "outdir", overwrite=True)
    with pytest.raises(ExportError, match="keeps the source's format"):
        export_clean(ws, tmp_path / "clean.parquet")
    (tmp_path / "x.jsonl.removed.jsonl").mkdir()
    with pytest.raises(ExportError, match="where the removed pairs go"):
        export_clean(ws, tmp_path / "x.jsonl")
    (tmp_path / "afile").write_text("")
    with pytest.raises(ExportError, match="cannot write"):
        export_clean(ws, tmp_path / "afile" / "clean.jsonl")


@pytest.mark.parametrize("crlf", [False, True])
def test_manifest_holds_the_removed_records_so_they_can_be_restored(tmp_path, crlf):
    ws = triage_workspace(tmp_path, crlf=crlf)
    Marks(ws).mark([2, 10, 64], reason="why \x1b[2J", features=[3])
    r = export_clean(ws, tmp_path / "clean.jsonl")
    entries = [json.loads(x) for x in r.manifest.read_text(encoding="utf-8").splitlines()]
    assert [e["source_index"] for e in entries] == [2, 10, 64] and entries[0]["line"] == 3
    assert entries[0]["reason"] == "why \x1b[2J" and entries[0]["features"] == [3]
    # restore: put each source_line back at its place; the source comes back byte for byte
    restored = r.out.read_bytes().split(b"\n")[:-1]  # lines as written: a CRLF line keeps its \r
    for e in entries:
        restored.insert(e["source_index"], e["source_line"].encode("utf-8", "surrogateescape"))
    assert b"\n".join(restored) + b"\n" == Path(ws.meta()["dataset"]).read_bytes()


@pytest.mark.parametrize("moment", ["export-mid-output", "export-before-rename", "export-between-renames"])
def test_kill_9_while_exporting_leaves_no_partial_file_and_the_next_export_cleans_up(tmp_path, moment):
    ws = triage_workspace(tmp_path)
    Marks(ws).mark([2, 4], reason="r")
    expected = export_clean(ws, tmp_path / "expected.jsonl")
    want_out, want_manifest = expected.out.read_bytes(), expected.manifest.read_bytes()
    out = tmp_path / "clean.jsonl"
    manifest = tmp_path / "clean.jsonl.removed.jsonl"
    code, _, err = run_cli("export", "-w", str(ws.path), "--out", str(out), moment=moment, flag=tmp_path / "f")
    assert code == -9, err
    temps = sorted(p.name for p in tmp_path.iterdir() if ".tmp-" in p.name)
    assert temps, "the killed export left no temporary file (the moment was missed)"
    # nothing partial under a final name: absent, or whole
    assert not out.exists() or out.read_bytes() == want_out
    assert not manifest.exists() or manifest.read_bytes() == want_manifest
    if moment == "export-between-renames":
        assert manifest.read_bytes() == want_manifest and not out.exists()
    else:
        assert not out.exists() and not manifest.exists()
    again = export_clean(Workspace(ws.path), out, overwrite=True)
    assert again.n_stale_removed == len(temps)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert out.read_bytes() == want_out and manifest.read_bytes() == want_manifest


def test_a_live_exports_temporary_file_is_left_alone(tmp_path):
    from core.data.export import remove_stale_temps

    out = tmp_path / "clean.jsonl"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".clean.jsonl.tmp-{sleeper.pid}"
        live.write_text("being written")
        dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                                  capture_output=True, text=True).stdout.strip()
        dead = tmp_path / f".clean.jsonl.tmp-{dead_pid}"
        dead.write_text("left by a kill")
        assert remove_stale_temps(out) == 1
        assert live.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_kill_9_inside_the_manifest_write_leaves_no_manifest_and_no_output(tmp_path):
    """The kill lands inside the manifest write: its temporary file holds exactly the first entry
    (a strict prefix of the whole manifest) and the output's temporary file is whole. Either is false
    when the kill came before or after, and the test fails."""
    ws = triage_workspace(tmp_path)
    Marks(ws).mark([2, 4, 6], reason="r")
    expected = export_clean(ws, tmp_path / "expected.jsonl")
    want_out, want_manifest = expected.out.read_bytes(), expected.manifest.read_bytes()
    source_before = Path(ws.meta()["dataset"]).read_bytes()
    out, manifest = tmp_path / "clean.jsonl", tmp_path / "clean.jsonl.removed.jsonl"
    code, _, err = run_cli("export", "-w", str(ws.path), "--out", str(out), moment="export-mid-manifest",
                           flag=tmp_path / "f")
    assert code == -9, err
    tmp_manifest = [p for p in tmp_path.iterdir() if p.name.startswith(".clean.jsonl.removed.jsonl.tmp-")]
    tmp_out = [p for p in tmp_path.iterdir() if p.name.startswith(".clean.jsonl.tmp-")]
    assert len(tmp_manifest) == 1 and len(tmp_out) == 1, sorted(p.name for p in tmp_path.iterdir())
    first_entry = want_manifest.split(b"\n")[0] + b"\n"
    assert tmp_manifest[0].read_bytes() == first_entry != want_manifest  # landed mid-manifest
    assert tmp_out[0].read_bytes() == want_out  # the output was written whole before it
    assert not out.exists() and not manifest.exists()  # nothing partial under a final name
    assert Path(ws.meta()["dataset"]).read_bytes() == source_before
    again = export_clean(Workspace(ws.path), out)
    assert again.n_stale_removed == 2
    assert out.read_bytes() == want_out and manifest.read_bytes() == want_manifest


def test_kill_9_inside_a_marks_commit_loses_and_duplicates_nothing(tmp_path):
    """The kill lands inside lance's commit of the op: after the op's first file appeared in the
    marks table, before the commit returned. An attempt whose commit returned first (the kill came
    too late) is not counted; the test fails unless one of five attempts landed inside."""
    ws = triage_workspace(tmp_path)
    Marks(ws).mark([0], reason="first")
    landed = 0
    for attempt in range(5):
        flag = tmp_path / f"flag{attempt}"
        code, _, err = run_cli("mark", "4", "6", "-w", str(ws.path), "--reason", f"victim{attempt}",
                               moment="mark-mid-commit", flag=flag)
        assert code == -9, err
        committed = Path(f"{flag}.committed").exists()
        assert Path(f"{flag}.seen").exists() or committed, "killed before the commit began"
        ops = assert_log_is_a_sequence(ws.path)
        victims = [op for op in ops if op.reason == f"victim{attempt}"]
        if committed:
            assert len(victims) == 1  # too late to prove anything, but still whole and once
            continue
        landed += 1
        assert len(victims) <= 1 and all(op.source_indices == (4, 6) for op in victims)  # whole or absent
        marks = Marks(Workspace(ws.path))
        assert marks.marked_set() == replay(ops).marked.keys()
        op = marks.mark([10 + 2 * attempt], reason="after")  # the log goes on where it stopped
        assert op.op_id == len(ops)
        if landed >= 2:
            break
    print(f"kills inside a marks commit: {landed} of {attempt + 1} attempts")
    assert landed, "no kill landed inside a commit in five attempts"
    assert_log_is_a_sequence(ws.path)
