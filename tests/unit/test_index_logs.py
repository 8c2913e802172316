"""`datadebug index` as a `nohup ... 2>log` run sees it: killed while loading the model (the moment
before any pair is written), then resumed with stderr going to a file. The log must hold progress
lines (pairs saved, tok/s, ETA) and nothing else: no library warnings, bars or lance WARN lines."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.data.ingest import read_pairs
from core.data.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow(18)  # 18 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_kill_9_while_loading_the_model_then_a_logged_resume(tmp_path, hh_small, tiny_sae):
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "core.cli", "index", str(hh_small), "-w", str(ws), "--sae", tiny_sae,
           "--max-tokens", "32", "--chunk-pairs", "4", "--limit", "8"]
    env = {k: v for k, v in os.environ.items() if k not in ("LANCEDB_LOG", "TQDM_DISABLE", "TRANSFORMERS_VERBOSITY")}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (ws / "meta.lance").exists():  # meta is written just before the model loads
        assert proc.poll() is None and time.time() < deadline, "index ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not Workspace(ws).has("pairs")  # killed before the first chunk
    from typer.testing import CliRunner

    from core.cli import app

    for args in (["shifts"], ["clusters"], ["mark", "0"], ["trace", "--feature", "1"]):  # used to be KeyError: 'd_sae'
        r = CliRunner().invoke(app, [*args, "-w", str(ws)])
        assert r.exit_code == 2 and "holds no indexed pairs yet" in r.stderr, (args, r.output)

    log = tmp_path / "index.log"
    with open(log, "wb") as err:  # not a terminal: the line renderer, as under nohup
        r = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, env=env, timeout=600)
    text = log.read_text()
    assert r.returncode == 0, text
    final = Workspace(ws).indexed_source_indices().tolist()
    assert sorted(final) == [p.source_index for p in read_pairs(hh_small, limit=8).pairs]  # none lost, none twice

    lines = text.splitlines()
    progress = [x for x in lines if x.startswith("index | ")]
    assert progress and re.search(r"index \| 8/8 pairs saved \| [\d,]+ tok/s \| ETA 0s$", progress[-1]), text
    assert all(re.match(r"^(load|labels|index|sae)\b", x) for x in lines), text  # nothing but our own lines
    assert "\x1b" not in text and "\r" not in text
    for noise in ("WARN", "Warning", "Loading weights", "it/s]", "past_key_values"):
        assert noise not in text, f"{noise!r} in the log:\n{text}"
