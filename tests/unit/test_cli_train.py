"""`datadebug train-dpo` and `datadebug validate`: real SmolLM2, real DPO, real workspace.

One training run serves the file: started in a subprocess and stopped with Ctrl-C after its first
step, then resumed in-process to the end, on the workspace's dataset minus a marked pair."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from core.cli import app

runner = CliRunner()

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 2 pairs (3 minus the marked one), both in every step: 3 steps, the loss must fall
TRAIN_ARGS = ["--limit", "3", "--epochs", "3", "--batch-size", "2", "--max-length", "48", "--lr", "1e-4"]


@pytest.fixture(scope="module")
def marked_workspace(small_workspace, tmp_path_factory) -> Path:
    from core.data.marks import Marks
    from core.data.workspace import Workspace

    ws = tmp_path_factory.mktemp("marked") / "ws"
    shutil.copytree(small_workspace, ws)
    Marks(Workspace(ws)).mark([1], reason="test")
    return ws


@pytest.fixture(scope="module")
def interrupted(hh_small, marked_workspace, tmp_path_factory):
    """train-dpo in a subprocess, sent SIGINT once its first step is printed."""
    out = tmp_path_factory.mktemp("train") / "run"
    cmd = [
        sys.executable, "-c", "from core.cli import main; main()", "train-dpo", str(hh_small), "--out", str(out),
        "--exclude-marked", str(marked_workspace), *TRAIN_ARGS, "--threads", "1",
    ]
    env = {**os.environ, "DATADEBUG_PROGRESS": "lines"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    seen = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:
        seen.append(line)
        if re.search(r"\| 1/3 steps", line):
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(seen)
    stdout, stderr = proc.communicate(timeout=240)
    return out, proc.returncode, stdout, "".join(seen) + stderr


@pytest.mark.slow(67)  # 67 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_ctrl_c_saves_a_checkpoint(interrupted):
    out, code, stdout, stderr = interrupted
    assert code == 130, stderr
    assert "stopping: saving a checkpoint" in stderr
    # the signal lands during step 1's report or step 2; the step under way finishes first
    stopped = re.search(r"DPO cancelled at step (\d)/3; checkpoint in (\S+) ", stderr)
    assert stopped and int(stopped[1]) in (1, 2), stderr
    assert stopped[2] == str(out / "checkpoint") and stdout == ""
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == int(stopped[1]) and state["total_steps"] == 3
    assert not (out / "model").exists()


@pytest.fixture(scope="module")
def resumed(interrupted, hh_small, marked_workspace):
    out = interrupted[0]
    result = runner.invoke(
        app,
        ["train-dpo", str(hh_small), "--out", str(out), "--exclude-marked", str(marked_workspace),
         *TRAIN_ARGS, "--json"],
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@pytest.mark.slow(13)  # 13 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_rerun_resumes_and_marked_pairs_are_left_out(resumed):
    out, r = resumed
    assert set(r) >= {"out_dir", "model_dir", "n_pairs", "n_excluded", "n_heldout", "steps",
                      "total_steps", "loss", "first_loss", "reward_accuracy", "already_done"}
    assert r["steps"] == r["total_steps"] == 3 and not r["already_done"]
    assert r["n_pairs"] == 2 and r["n_excluded"] == 1
    rec = json.loads((out / "datadebug_train.json").read_text())
    assert rec["source_indices"] == [0, 2] and rec["excluded_marked"] == [1]
    assert [s["step"] for s in rec["history"]] == [1, 2, 3]  # the first run's steps kept
    assert r["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    losses = [s["loss"] for s in rec["history"]]
    assert losses[2] < losses[1] < losses[0]
    assert Path(r["model_dir"]) == out / "model"


@pytest.mark.slow(32)  # 32 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_validate_json_shape(resumed, small_workspace, tmp_path):
    out, _ = resumed
    plot = tmp_path / "scatter.png"
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps({"concepts": [{"id": f"c{i}", "features": list(range(i, i + 8))}
                                                 for i in range(0, 512, 8)]}))
    result = runner.invoke(
        app,
        ["validate", "-w", str(small_workspace), "--trained", str(out), "--n-prompts", "4",
         "--max-new-tokens", "6", "--top-k", "15", "--plot", str(plot), "--concepts", str(concepts),
         "--paper", "--samples", "2", "--json"],
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    for key in ("r2", "pearson_r2", "spearman", "n_features", "n_prompts", "plot", "significant",
                "top_k", "nonzero", "behaviour", "features", "actual_reliability",
                "predicted_reliability", "nonzero_reliability", "ceiling",
                "thresholded_features", "concepts", "concepts_mean_activation", "concepts_clear",
                "concepts_clear_mean_activation", "tau"):
        assert key in r
    assert r["n_prompts"] == 4 and r["n_pairs_predicted"] == 2 and r["plot"] == str(plot)
    assert r["match_length"] is False and 0 < r["reply_tokens"]["before"] <= 8 and 0 < r["reply_tokens"]["after"] <= 8
    assert r["n_replies"] == 8 and r["decoding"]["temperature"] == 1.0  # --paper: sampled
    assert r["n_concepts"] == 64 and r["concepts"]["points"][0]["id"] == "c0"
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert r["top_k"]["n_features"] == 15 and isinstance(r["top_k"]["spearman"], float)
    assert set(r["behaviour"]) == {"refusal", "url", "goblin"}
    assert not {0, 2} & set(r["prompt_source_indices"])


@pytest.mark.slow(16)  # 16 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_validate_text_summary(resumed, small_workspace, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me a joke.\nWhat is the capital of France?\nHow do plants grow?\n")
    result = runner.invoke(
        app,
        ["validate", "-w", str(small_workspace), "--trained", str(resumed[0]), "--prompts", str(prompts),
         "--max-new-tokens", "6", "--temperature", "0.8", "--samples", "2", "--match-length"],
    )
    assert result.exit_code == 0, result.output
    assert "R²" in result.stdout and "Spearman" in result.stdout and "goblin" in result.stdout
    assert "3 prompts x 2 replies" in result.stdout
    assert "reply length, mean tokens" in result.stdout and "(--match-length)" in result.stdout
    assert "noise ceiling on R²" in result.stdout
    assert "concepts" in result.stdout and "features (CI clear)" in result.stdout


@pytest.mark.slow(32)  # 32 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_validate_seeds_summarises_real_reports_and_refuses_what_does_not_compare(resumed, small_workspace,
                                                                                 tmp_path):
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps([list(range(i, i + 8)) for i in range(0, 512, 8)]))
    r = runner.invoke(app, ["validate", "-w", str(small_workspace), "--trained", str(resumed[0]), "--n-prompts",
                            "4", "--max-new-tokens", "6", "--paper", "--samples", "2", "--plot",
                            str(tmp_path / "s0.png"), "--concepts", str(concepts), "--json"])
    assert r.exit_code == 0, r.output
    real = json.loads((tmp_path / "s0.json").read_text())
    assert real["trained"] == str(resumed[0]) and real["concepts"] is not None
    # two more "seeds": the same report under other runs, their concept R² moved by known amounts
    paths = [tmp_path / "s0.json"]
    r2 = real["concepts"]["fit"]["r2"]
    for i, d in ((1, 0.1), (2, -0.1)):
        other = json.loads(json.dumps(real))
        other["trained"] = f"{real['trained']}-seed{i}"
        other["concepts"]["fit"]["r2"] = r2 + d
        paths.append(tmp_path / f"s{i}.json")
        paths[-1].write_text(json.dumps(other))
    r = runner.invoke(app, ["validate-seeds", *map(str, paths), "--json"])
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    c = s["metrics"]["concepts R² (fit)"]
    assert s["n_runs"] == 3 and c["n"] == 3 and c["mean"] == pytest.approx(r2) and c["sd"] == pytest.approx(0.1)
    assert c["min"] == pytest.approx(r2 - 0.1) and c["max"] == pytest.approx(r2 + 0.1)
    sp = s["metrics"]["features Spearman"]
    assert sp["sd"] == pytest.approx(0, abs=1e-12) or sp["n"] == 0  # unchanged across the copies
    text = runner.invoke(app, ["validate-seeds", *map(str, paths)])
    assert text.exit_code == 0 and "3 runs validated on" in text.stdout and "concepts R² (fit)" in text.stdout

    greedy = json.loads(paths[1].read_text())
    greedy["decoding"]["temperature"] = 0.0
    (tmp_path / "greedy.json").write_text(json.dumps(greedy))
    broken = tmp_path / "broken.json"
    broken.write_text('{"trained": "x",\n "concepts": oops}')
    for args, why in (([paths[0], tmp_path / "greedy.json"], "differ in decoding"),
                      ([paths[0], paths[0]], "given twice"),
                      ([paths[0]], "at least two"),
                      ([paths[0], broken], "broken.json:2: the validation report is not valid JSON"),
                      ([paths[0], tmp_path / "nothing"], "no validation report")):
        r = runner.invoke(app, ["validate-seeds", *map(str, args)])
        assert r.exit_code == 2 and why in r.stderr and "Traceback" not in r.output, r.output


def test_errors_are_one_line_with_status_2(resumed, small_workspace, tmp_path):
    r = runner.invoke(app, ["validate", "-w", str(small_workspace), "--trained", str(tmp_path), "--json"])
    assert r.exit_code == 2
    assert json.loads(r.stdout)["type"] == "ValidationError"
    broken = tmp_path / "concepts.json"
    broken.write_text("[[1, 2],\n [3,")
    r = runner.invoke(app, ["validate", "-w", str(small_workspace), "--trained", str(resumed[0]), "--concepts",
                            str(broken)])
    assert r.exit_code == 2 and "concepts.json:2: the concepts file is not valid JSON" in r.stderr
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["train-dpo", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "missing.jsonl" in r.stderr and "Traceback" not in r.output


def test_plan_is_saved_shown_and_cleared(small_workspace, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(small_workspace, ws)
    r = runner.invoke(app, ["plan", "-w", str(ws), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout) is None
    r = runner.invoke(app, ["plan", "-w", str(ws), "--kind", "shape", "--features", "3, 9", "--label",
                            "goblins", "--json"])
    assert r.exit_code == 0, r.output
    saved = json.loads(r.stdout)
    assert saved["kind"] == "shape" and saved["features"] == [3, 9] and saved["strength"] == 4.0
    r = runner.invoke(app, ["plan", "-w", str(ws)])
    assert "shape on goblins [3, 9]" in r.stdout and f"--plan {ws}" in r.stdout
    for bad, why in ((["--kind", "shape", "--features", "600"], "outside"),
                     (["--kind", "wish", "--features", "1"], "unknown intervention"),
                     (["--kind", "inoculate", "--features", "1"], "--text"),
                     (["--kind", "steer"], "--features")):
        r = runner.invoke(app, ["plan", "-w", str(ws), *bad])
        assert r.exit_code == 2 and why in r.stderr, r.output
    r = runner.invoke(app, ["plan", "-w", str(ws), "--clear"])
    assert r.exit_code == 0 and "removed" in r.stdout
    assert not (ws / "plan.json").exists()
