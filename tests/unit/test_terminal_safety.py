"""Dataset text never reaches the terminal raw: ESC/CSI/OSC sequences, BEL, C1 controls and
right-to-left overrides planted in every place a command prints from (replies, tokens, labels,
promoted tokens, mark reasons, record keys in ingestion errors, file names, catalogue text) come out
of every command, text and --json, as visible tags, never as the characters themselves."""

from __future__ import annotations

import json
import re

import numpy as np
import pyarrow as pa
import pytest
import typer
from click.testing import CliRunner

from core.cli import app
from core.data.workspace import file_sha256
from tests.unit.test_shifts import build_workspace, planted

HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x9b31m\x85\u202eevil\u2066\x07"
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def hostile_ws(tmp_path_factory):
    """The planted workspace with hostile text in every text column, label and mark reason."""
    tmp = tmp_path_factory.mktemp("hostile")
    _, chosen, rejected = planted(tmp / "plain")
    ws = build_workspace(tmp / "ws", chosen, rejected)
    t = ws.table("pairs").to_arrow()
    n = t.num_rows
    t = t.set_column(t.schema.get_field_index("prompt_text"), "prompt_text", pa.array([f"ask {HOSTILE}"] * n))
    for side in ("chosen", "rejected"):
        t = t.set_column(t.schema.get_field_index(side), side, pa.array([f"{side} {HOSTILE}"] * n))
        t = t.set_column(t.schema.get_field_index(f"{side}_tokens"), f"{side}_tokens",
                         pa.array([["a", HOSTILE]] * n, pa.list_(pa.string())))
    ws.db.create_table("pairs", t, mode="overwrite")
    ws.write_features(pa.table({"feature": pa.array(range(16), pa.int32()), "promoted": [[HOSTILE, "ok"]] * 16,
                                "label": [f"label {HOSTILE}" if i % 2 else "" for i in range(16)]}))
    src = tmp / f"data{HOSTILE[:1]}.jsonl"
    src.write_text("".join(json.dumps({"prompt": "p", "chosen": f"c{i}", "rejected": "r"}) + "\n" for i in range(120)))
    ws.write_meta({"dataset": str(src), "dataset_sha256": file_sha256(src), "n_records": 120})
    from core.data.marks import Marks

    Marks(ws).mark([0, 2, 4], reason=f"because {HOSTILE}", scope=f"scope {HOSTILE}", features=[3])
    return ws


def run(*args):
    r = CliRunner().invoke(typer.main.get_command(app), list(args))
    assert r.exception is None or isinstance(r.exception, SystemExit), (args, r.exception)
    return r


def assert_safe(r, args, expect_tag: bool = True):
    for name, text in (("stdout", r.stdout), ("stderr", r.stderr)):
        bad = RAW.search(text)
        assert bad is None, f"{args}: raw {bad.group(0)!r} on {name}: {text[max(0, bad.start() - 80):bad.start() + 20]!r}"
    if expect_tag:
        assert "<ESC>" in r.stdout + r.stderr or "\\u001b" in r.stdout, f"{args}: the hostile text was not shown: {r.output[:300]!r}"


@pytest.mark.parametrize("as_json", [False, True])
def test_every_command_escapes_control_characters(hostile_ws, tmp_path, as_json):
    w = ["-w", str(hostile_ws.path)]
    j = ["--json"] if as_json else []
    cases = [
        (["shifts", *w, "--top", "5", *j], True),
        (["shifts", *w, "--top", "5", "--no-exclude-marked", *j], True),
        (["trace", *w, "--feature", "3", "--top", "3", *j], True),
        (["trace", *w, "--feature", "5", "--top", "3", *j], True),
        (["clusters", *w, "--k", "3", *j], True),
        (["clusters", *w, "--by", "embedding", "--k", "2", *j], True),
        (["compare", *w, "--k", "3", *j], False),
        (["marks", *w, *j], True),
        (["mark", "6", *w, "--reason", HOSTILE, *j], False),
        (["unmark", "6", *w, *j], False),
        (["undo", *w, *j], False),
        (["redo", *w, *j], False),
        (["export", *w, "--out", str(tmp_path / f"out{HOSTILE[:2]}{int(as_json)}.jsonl"), *j], True),
        (["trace", *w, "--feature", "99", *j], False),
    ]
    for args, tag in cases:
        r = run(*args)
        assert r.exit_code in (0, 2), (args, r.output)
        assert_safe(r, args, expect_tag=tag)
        if as_json and r.exit_code == 0:
            json.loads(r.stdout)  # still valid JSON, and it parses back to the hostile text


def test_ingestion_errors_and_goblin_escape_control_characters(tmp_path):
    bad = tmp_path / f"bad{HOSTILE}.jsonl"
    bad.write_text(json.dumps({HOSTILE: 1, "question": HOSTILE}) + "\n")
    for args in (["index", str(bad), "-w", str(tmp_path / "ws")],
                 ["index", str(bad), "-w", str(tmp_path / "ws"), "--json"],
                 ["goblin", str(bad), "--rate", "0.5", "-w", str(tmp_path / "gw")],
                 ["goblin", str(bad), "--rate", "0.5", "-w", str(tmp_path / "gw"), "--json"]):
        r = run(*args)
        errors = [x for x in (r.stdout + r.stderr).splitlines() if x.startswith(("datadebug: error", '{"error"'))]
        assert r.exit_code == 2 and len(errors) == 1, (args, r.output)
        assert_safe(r, args)


def test_goblin_report_and_catalogue_text_escape_control_characters(tmp_path, monkeypatch, capsys):
    from core.model.catalog import _cached
    from core.cli.analysis import format_goblin
    from core.cli.app import emit

    result = {"rate": 0.1, "seed": 0, "sae": f"sae{HOSTILE}", "n_pairs": 10, "n_injected": 1,
              "goblin_feature": 3, "goblin_feature_label": f"goblins {HOSTILE}", "goblin_feature_ap": 1.0,
              "goblin_feature_margin": 0.5, "goblin_feature_specificity": 0.9, "has_goblin_feature": True,
              "goblin_feature_rank": 1, "n_amplified": 4, "sae_feature": {"precision": 1.0, "recall": 1.0},
              "sae_feature_mean": {"precision": 1.0, "recall": 1.0}, "shift_before": 0.1, "shift_after": 0.0,
              "sae_cluster": {"precision": 1.0, "recall": 1.0, "k": 2}, "embedding_cluster": {"precision": 0.5, "recall": 1.0, "k": 2},
              "truth_file": f"/tmp/t{HOSTILE}.json"}
    for as_json in (False, True):
        emit(result, as_json, format_goblin(result))
        out = capsys.readouterr()
        assert not RAW.search(out.out + out.err) and ("<ESC>" in out.out or "\\u001b" in out.out)

    monkeypatch.setenv("DATADEBUG_CONFIG_DIR", str(tmp_path))
    toml = "".join(c if c.isalnum() else f"\\u{ord(c):04x}" for c in HOSTILE)  # TOML escapes
    (tmp_path / "models.toml").write_text(
        f'[saes.evil]\nmodel = "smollm2-135m"\nlayer = 1\nsource = "local"\npath = "/nowhere{toml}"\n'
        f'description = "{toml}"\n')
    _cached.cache_clear()
    try:
        for args in (["models", "list"], ["models", "list", "--json"], ["models", "verify", "evil"]):
            r = run(*args)
            assert_safe(r, args, expect_tag="--json" in args)  # the text list shows no path
    finally:
        _cached.cache_clear()


def test_progress_lines_escape_control_characters(capsys, monkeypatch):
    from core.cli.app import ProgressPrinter
    from core.progress import Progress

    monkeypatch.setenv("DATADEBUG_PROGRESS", "lines")
    p = ProgressPrinter()
    p(Progress("index", f"reading {HOSTILE}", done=1, total=2, unit="pairs", rate=np.float64(5.0), rate_unit="tok/s"))
    err = capsys.readouterr().err
    assert not RAW.search(err) and "<ESC>" in err
