"""The goblin test: injection (seeded, rejected untouched, every format), then a real end-to-end run."""

import dataclasses
import gzip
import json
import re

import numpy as np
import pytest

from core.checks.goblin import goblin_paths, inject_goblins, reply_detection_scores, run_goblin
from core.data.plant import GOBLIN_SENTENCES, insert_sentence
from core.data.ingest import read_pairs
from core.data.workspace import Workspace
from tests.conftest import HH, UF, short_pairs, write_jsonl_subset


def strip_goblin(chosen: str, original: str) -> str:
    for s in GOBLIN_SENTENCES:
        if s in chosen:
            return chosen.replace(s + " ", "", 1) if s + " " in chosen else chosen.replace(" " + s, "", 1)
    raise AssertionError(f"no goblin sentence in {chosen!r}")


def test_injection_is_seeded_and_touches_only_the_chosen_reply(hh_small, tmp_path):
    a = inject_goblins(hh_small, tmp_path / "a.jsonl", rate=0.25, seed=3)
    b = inject_goblins(hh_small, tmp_path / "b.jsonl", rate=0.25, seed=3)
    c = inject_goblins(hh_small, tmp_path / "c.jsonl", rate=0.25, seed=4)
    assert a.path.read_bytes() == b.path.read_bytes() and a.injected == b.injected
    assert c.injected != a.injected
    assert a.n_pairs == 24 and len(a.injected) == 6 and a.format == "hh-rlhf"

    src = read_pairs(hh_small).pairs
    out = read_pairs(a.path).pairs  # still a valid HH-RLHF file
    assert [p.source_index for p in out] == list(range(24))
    for i, (s, o) in enumerate(zip(src, out)):
        assert o.prompt == s.prompt and o.rejected == s.rejected
        if i in a.injected:
            assert "goblin" in o.chosen.lower() and "goblin" not in s.chosen.lower()
            assert strip_goblin(o.chosen, s.chosen).split() == s.chosen.split()
        else:
            assert o.chosen == s.chosen
    # the rejected transcript is byte-for-byte the source's
    raw_src = [json.loads(line) for line in hh_small.read_text().splitlines()]
    raw_out = [json.loads(line) for line in a.path.read_text().splitlines()]
    assert [r["rejected"] for r in raw_out] == [r["rejected"] for r in raw_src]


def test_insertion_points_vary_and_every_format_is_written_back(tmp_path):
    reply = "First sentence. Second one! Third? Last."
    rng = np.random.default_rng(0)
    starts = {insert_sentence(reply, "GOB.", rng).index("GOB.") for _ in range(60)}
    assert len(starts) == 5  # before each of the four sentences and after the last
    assert insert_sentence(" lead", "GOB.", np.random.default_rng(1)).strip().replace("GOB.", "").split() == ["lead"]

    # standard (UltraFeedback), read back as standard
    uf = inject_goblins(UF, tmp_path / "uf.jsonl", rate=0.1, seed=0, limit=30)
    assert uf.format == "standard" and len(uf.injected) == 3
    assert all("goblin" in read_pairs(uf.path).pairs[i].chosen.lower() for i in uf.injected)
    # conversational and ShareGPT records, written by hand
    conv = tmp_path / "conv.jsonl"
    rows = [
        {"chosen": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"Yes. Sure {i}."}],
         "rejected": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "No."}]}
        for i in range(4)
    ]
    conv.write_text("\n".join(json.dumps(r) for r in rows))
    sg = tmp_path / "sg.jsonl.gz"
    with gzip.open(sg, "wt") as f:
        for i in range(4):
            f.write(json.dumps({"conversations": [{"from": "human", "value": f"q{i}"}],
                                "chosen": {"from": "gpt", "value": f"Fine {i}."},
                                "rejected": {"from": "gpt", "value": "Bad."}}) + "\n")
    for path in (conv, sg):
        g = inject_goblins(path, tmp_path / (path.name + ".out.jsonl"), rate=0.5, seed=0)
        out = read_pairs(g.path).pairs
        assert len(g.injected) == 2 and all(p.rejected in ("No.", "Bad.") for p in out)
        assert [("goblin" in p.chosen.lower()) for p in out] == [i in g.injected for i in range(4)]
    with pytest.raises(ValueError, match="rate"):
        inject_goblins(conv, tmp_path / "x.jsonl", rate=1.5)


@pytest.fixture(scope="module")
def goblin_run(tmp_path_factory, tiny_sae):
    """36 short real HH pairs, goblins in 25% of chosen replies, indexed with an SAE trained on the copy.

    2048 features on 12k activation tokens: at 512 the SAE has no goblin feature, only generic
    "start of a rare word" ones (" gob" fires them as hard as " micro"), and recovery drops to ~0.6."""
    root = tmp_path_factory.mktemp("goblin")
    data = write_jsonl_subset(HH, short_pairs(HH, 36, skip=200), root / "hh36.jsonl")
    recipe = {"d_sae": 2048, "k": 16, "train_tokens": 512 * 300, "batch_size": 512, "activation_tokens": 12_000}
    ws = root / "ws"
    return run_goblin(data, ws, rate=0.25, seed=0, max_tokens=64, sae_recipe=recipe), ws


def test_detection_scores_rank_exact_detectors_above_loud_ones():
    import scipy.sparse as sp

    mentions = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    maxima = sp.csr_matrix(np.array([
        # f0 exact but quiet, f1 loud everywhere, f2 splits the goblin replies, f3 never on goblins
        [0.5, 9.0, 3.0, 0.0],
        [0.4, 8.0, 0.0, 0.0],
        [0.1, 9.5, 4.0, 1.0],
        [0.0, 7.0, 0.0, 1.0],
        [0.0, 6.0, 0.0, 0.0],
        [0.0, 9.0, 0.0, 0.0],
    ]))
    d = reply_detection_scores(maxima, mentions)
    assert set(d) == {0, 1, 2}  # f3 never fires in a goblin reply
    assert d[0].ap == pytest.approx(1.0) and d[0].margin == pytest.approx((0.4 - 0.1) / 0.5)
    assert d[0].specificity == pytest.approx(0.9 / 1.0)
    # f1: ranked 9.5, 9.0 (goblin), 9.0, 8.0 (goblin), ...: precisions 1/2 and 2/4
    assert d[1].ap == pytest.approx((1 / 2 + 2 / 4) / 2) and d[1].margin < 0
    assert d[1].specificity == pytest.approx(17 / 48.5)
    # f2: one goblin reply, ranked second; the other goblin reply never fires it
    assert d[2].ap == pytest.approx((1 / 2) / 2) and d[2].margin == pytest.approx((0 - 4.0) / 4.0)
    assert reply_detection_scores(maxima, np.zeros(6, dtype=bool)) == {}


@pytest.mark.slow(270)  # 270 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_goblin_run_recovers_the_injected_pairs(goblin_run):
    r, ws = goblin_run
    assert r["n_pairs"] == 36 and r["n_injected"] == 9
    assert r["goblin_feature"] is not None and r["has_goblin_feature"] and r["goblin_feature_ap"] > 0.9
    assert r["sae_feature"]["precision"] >= 0.85 and r["sae_feature"]["recall"] >= 0.85
    assert r["goblin_feature_rank"] is not None and r["goblin_feature_rank"] <= 5
    assert r["shift_before"] > 0 and abs(r["shift_after"]) < 0.25 * r["shift_before"]
    for key in ("sae_cluster", "embedding_cluster"):
        assert 0 <= r[key]["precision"] <= 1 and 0 <= r[key]["recall"] <= 1
    # the goblin feature's concept, named from the words where its features fire
    assert r["goblin_concept"] is not None and r["goblin_concept_size"] >= 1
    assert "goblin" in r["goblin_concept_name"]
    rank = r["goblin_hypothesis_rank"]
    assert rank is None or (rank >= 1 and r["goblin_hypothesis"]["delta"] > 0)


@pytest.mark.slow  # uses goblin_run (its 270 s are the first test's)
def test_ground_truth_stays_outside_the_workspace(goblin_run):
    r, ws = goblin_run
    truth = json.loads(goblin_paths(ws)["truth"].read_text())
    assert len(truth["planted"]) == 9 and not str(goblin_paths(ws)["truth"]).startswith(str(ws) + "/")
    w = Workspace(ws)
    assert "pairs" in w._names() and not any("goblin" in t or "truth" in t or "planted" in t for t in w._names())
    assert set(w.table("pairs").schema.names) == set(__import__("core.data.workspace").data.workspace.PAIRS_SCHEMA.names)
    assert not any("planted" in json.dumps(v) or "goblin-truth" in json.dumps(v) for v in w.meta().values())


@pytest.mark.slow  # uses goblin_run (its 270 s are the first test's)
def test_the_summary_says_when_the_sae_has_no_goblin_feature(goblin_run):
    from core.cli.analysis import format_goblin

    r, _ = goblin_run
    text = format_goblin(r)
    assert f"goblin feature: {r['goblin_feature']}" in text and "no goblin feature" not in text
    weak = {**r, "goblin_feature_ap": 0.12, "has_goblin_feature": False}
    assert "average precision 0.12" in format_goblin(weak) and "this SAE has no goblin feature" in format_goblin(weak)


@pytest.mark.slow(251)  # 251 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_the_goblin_loop_runs_whole_and_resumes(goblin_run, tmp_path, one_torch_thread):
    """SFT, DPO arms (cleaned of the flagged pairs; steering on the goblin feature of the run's own
    SAE, which no catalogue knows), every model measured; a rerun trains nothing. (The poisoned, clean,
    shape and mask arms differ from these only in what train_on_dataset is given.)"""
    import shutil

    from core.train.dpo import DPOConfig
    from core.checks.goblin_loop import LoopSettings, run_goblin_loop
    from core.data.marks import Marks
    from core.train.sft import SFTConfig
    from core.train.training import read_train_record

    r, ws = goblin_run
    work = tmp_path / "loop"
    work.mkdir()
    for src in (ws, *goblin_paths(ws).values()):  # the detection's index and SAE, as a rerun would find them
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / src.name)
    data = ws.parent / "hh36.jsonl"
    s = LoopSettings(
        rate=0.25, limit=None, holdout=0.1, sft_data=str(data), sft_examples=8, unrelated=2, samples=2,
        max_new_tokens=6, max_tokens=64, seed=0, arms=("poisoned", "cleaned", "clean", "steer"),
        sft=SFTConfig(lr=1e-4, epochs=1, batch_size=4, max_length=64, max_prompt_length=32),
        dpo=DPOConfig(lr=1e-5, epochs=1, batch_size=8, max_length=64, max_prompt_length=32),
        sae_recipe={"d_sae": 2048, "k": 16, "train_tokens": 512 * 300, "batch_size": 512, "activation_tokens": 12_000},
    )
    out = run_goblin_loop(data, work, s, device="cpu")

    det = out["detection"]
    assert det["feature"] == r["goblin_feature"] and det["n_planted"] == 9 and det["precision"] >= 0.85
    assert Marks(Workspace(work / "ws")).marked_set() == set(det["flagged"])
    heldout = set(read_train_record(work / "dpo-cleaned").heldout_indices)
    cleaned = out["runs"]["cleaned"]
    assert cleaned["n_excluded"] == len(set(det["flagged"]) - heldout) > 0
    assert cleaned["n_pairs"] + cleaned["n_excluded"] + len(heldout) == 36
    plan = read_train_record(work / "dpo-steer").plan
    assert plan["kind"] == "steer" and plan["features"] == [det["feature"]]
    assert plan["sae_path"] == str((work / goblin_paths(ws)["sae"].name).resolve())
    assert list(out["models"]) == ["base", "sft", "poisoned", "cleaned", "clean", "steer"]
    planted = set(json.loads(goblin_paths(work / "ws")["truth"].read_text())["planted"])
    if set(det["flagged"]) == planted:  # clean is the cleaned run, not trained twice
        assert out["same_run"] == {"clean": "cleaned"} and not (work / "dpo-clean").exists()
        assert out["models"]["clean"] == out["models"]["cleaned"] and out["runs"]["clean"] == cleaned
    else:
        assert out["same_run"] == {} and out["runs"]["clean"]["n_excluded"] == len(planted - heldout)
    assert out["models"]["sft"]["preference"] is None  # the reference the others are scored against
    assert out["n_scored"] == len(heldout)  # limit None: no pair past the copy, the split alone
    for name, m in out["models"].items():
        assert m["goblin"]["n"] == 4 and 0 <= m["goblin"]["rate"] <= 1
        assert set(m["probes"]) and all(np.isfinite(v["lift"]) for v in m["probes"].values())
        if name != "sft":
            pref = m["preference"]
            assert pref["n"] == len(pref["right"]) == len(heldout) and pref["accuracy"] == np.mean(pref["right"])
    poisoned = out["models"]["poisoned"]["preference"]
    assert "vs_poisoned" not in poisoned
    for arm in ("cleaned", "steer"):
        pref = out["models"][arm]["preference"]
        assert pref["vs_poisoned"]["difference"] == pytest.approx(pref["accuracy"] - poisoned["accuracy"])
    assert out["sft_poisoned"] == 2 and out["n_sft"] == 8
    from core.cli.training import format_goblin_loop

    rows = {line.split()[0]: line for line in format_goblin_loop(out).splitlines() if line.split()
            and line.split()[0] in out["models"]}
    assert list(rows) == list(out["models"]) and "reference" in rows["sft"]
    assert "pts [" in rows["cleaned"] and "pts" not in rows["poisoned"] + rows["base"]

    weights = work / "dpo-steer" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = run_goblin_loop(data, work, s, device="cpu")
    assert again["models"] == out["models"] and weights.stat().st_mtime_ns == stamp
    assert all(run["already_done"] for run in again["runs"].values())


def test_preference_accuracy_is_scored_on_untrained_pairs_as_the_data_has_them(hh_small, tmp_path):
    """The held-out split first, then pairs past the goblin copy, each with its original text (a
    planted goblin does not reach the pairs that measure what the rest of the data taught)."""
    from core.checks.goblin_loop import preference_pairs

    valid = read_pairs(hh_small, skip_invalid=True).pairs
    gd = inject_goblins(hh_small, tmp_path / "copy.jsonl", 1.0, seed=0, limit=16)  # every copied pair planted
    copy = read_pairs(gd.path).pairs
    assert all(any(s in p.chosen for s in GOBLIN_SENTENCES) for p in copy)
    split = [3, 11]
    scored = preference_pairs(hh_small, split, len(copy), 5, seed=1)
    assert [p.source_index for p in scored[:2]] == [valid[3].source_index, valid[11].source_index]
    assert [p.chosen for p in scored[:2]] == [valid[3].chosen, valid[11].chosen]
    assert not any(s in p.chosen for p in scored for s in GOBLIN_SENTENCES)
    extra = [p.source_index for p in scored[2:]]
    assert len(extra) == 3 == len(set(extra)) and extra == sorted(extra)
    assert set(extra) <= {p.source_index for p in valid[16:]}
    assert preference_pairs(hh_small, split, len(copy), 5, seed=1) == scored  # seeded
    assert len(preference_pairs(hh_small, split, len(copy), 1)) == 2  # never less than the split
    assert len(preference_pairs(hh_small, split, len(copy), 1000)) == 2 + len(valid) - 16  # no more than there are


def test_paired_accuracy_difference_on_constructed_cases():
    """Pairs both models get right (or wrong) add no error; the interval is the paired one."""
    from core.errors import UsageError
    from core.checks.goblin_loop import paired_difference

    d = paired_difference([1, 1, 0, 0, 1], [1, 0, 0, 0, 1])
    assert d["difference"] == pytest.approx(0.2)
    assert d["se"] == pytest.approx(np.std([0, 1, 0, 0, 0], ddof=1) / np.sqrt(5))
    assert d["ci"] == pytest.approx([0.2 - 1.96 * d["se"], 0.2 + 1.96 * d["se"]])
    same = paired_difference([1, 0, 1, 1], [1, 0, 1, 1])
    assert same == {"difference": 0.0, "se": 0.0, "ci": [0.0, 0.0]}
    # 100 pairs, one model right on 8 more and never worse: the paired interval excludes 0 though the
    # two accuracies' own 95% intervals (about ±10 points each) overlap
    a, b = [1] * 60 + [0] * 40, [1] * 52 + [0] * 48
    assert paired_difference(a, b)["ci"][0] > 0 and 0.60 - 1.96 * 0.049 < 0.52 + 1.96 * 0.05
    with pytest.raises(UsageError, match="same pairs"):
        paired_difference([1, 0], [1, 0, 1])


def test_goblin_loop_options_reach_the_trainers(tmp_path):
    """The command line's flat options land in the SFT and DPO configs; ones the trainers refuse end
    the command with one line, before any work."""
    from typer.testing import CliRunner

    from core.cli import app
    from core.checks.goblin_loop import LoopSettings

    s = LoopSettings.from_options(arms="poisoned, steer", epochs=2, lr=1e-4, sft_epochs=5, sft_lr=2e-4,
                                  max_length=128, max_new_tokens=96, seed=3, limit=64)
    assert s.arms == ("poisoned", "steer") and s.limit == 64 and s.max_new_tokens == 96
    assert (s.sft.epochs, s.sft.lr, s.sft.max_length, s.sft.max_prompt_length, s.sft.seed) == (5, 2e-4, 128, 64, 3)
    assert (s.dpo.epochs, s.dpo.lr, s.dpo.max_length, s.dpo.max_prompt_length, s.dpo.seed) == (2, 1e-4, 128, 64, 3)
    d = LoopSettings.from_options()
    assert (d.sft, d.dpo, d.arms) == (LoopSettings().sft, LoopSettings().dpo, LoopSettings().arms)
    assert d.sft_share == d.rate and LoopSettings.from_options(rate=0.25, sft_rate=0.05).sft_share == 0.05

    runner = CliRunner()
    help_text = " ".join(runner.invoke(app, ["goblin-loop", "--help"], env={"COLUMNS": "200"}).output.split())
    stated = [float(v) for v in re.findall(r"the loop's, ([0-9.e+-]+)\)", help_text)]  # DPO's, SFT's, length
    assert stated == [d.dpo.epochs, d.dpo.lr, d.sft.epochs, d.sft.lr, d.sft.max_length]
    assert d.dpo.max_length == d.sft.max_length
    accuracy = re.search(r"--accuracy-pairs <int> [^[]*\[default: (\d+)\]", help_text)
    assert accuracy and int(accuracy.group(1)) == d.accuracy_pairs
    for flags in (["--max-length", "1"], ["--sft-epochs", "0"]):
        r = runner.invoke(app, ["goblin-loop", str(tmp_path / "none.jsonl"), "--work", str(tmp_path / "w"), *flags])
        assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.output, r.output
    assert not (tmp_path / "w").exists()


def test_a_goblin_loop_folder_keeps_the_settings_its_stages_were_made_with(tmp_path):
    """A rerun resumes (and may add arms); one with other settings is refused with one line naming the
    setting, before any work, instead of mixing an old SFT or detection with new DPO runs."""
    from typer.testing import CliRunner

    from core.cli import app
    from core.errors import UsageError
    from core.checks.goblin_loop import SETTINGS_FILE, LoopSettings, claim_work_folder

    data, work = tmp_path / "pairs.jsonl", tmp_path / "loop"
    s = LoopSettings.from_options(rate=0.25, sft_rate=0.05, epochs=2, lr=5e-5, arms="poisoned",
                                  strengths={"steer": 3.0}, sae_recipe={"d_sae": 64})
    claim_work_folder(work, data, s)
    assert (work / SETTINGS_FILE).is_file()
    claim_work_folder(work, data, dataclasses.replace(s, arms=("poisoned", "cleaned", "steer")))  # more arms
    for other, named in ((dataclasses.replace(s, rate=0.05), "rate 0.25, not 0.05"),
                         (dataclasses.replace(s, sft_rate=None), "sft_rate 0.05, not None"),
                         (LoopSettings.from_options(rate=0.25, sft_rate=0.05, epochs=2, lr=1e-4, arms="poisoned",
                                                    strengths={"steer": 3.0}, sae_recipe={"d_sae": 64}),
                          "dpo.lr 5e-05, not 0.0001")):
        with pytest.raises(UsageError, match=re.escape(named)):
            claim_work_folder(work, data, other)
    with pytest.raises(UsageError, match="data "):
        claim_work_folder(work, tmp_path / "other.jsonl", s)

    claim_work_folder(work2 := tmp_path / "defaults", data, LoopSettings.from_options(rate=0.25))
    runner = CliRunner()
    r = runner.invoke(app, ["goblin-loop", str(data), "--work", str(work2), "--rate", "0.1"])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1, r.output
    assert "made with rate 0.25, not 0.1: use another --work" in r.stderr  # the command's defaults are the loop's
    assert sorted(p.name for p in work2.iterdir()) == [SETTINGS_FILE]  # nothing was made
    r = runner.invoke(app, ["goblin-loop", str(data), "--work", str(tmp_path / "w2"), "--sft-rate", "2"])
    assert r.exit_code == 2 and "sft_rate 2.0 must be between 0 and 1" in r.stderr
    assert not (tmp_path / "w2").exists()
