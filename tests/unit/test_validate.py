"""core.validate: the comparison maths on constructed shifts, then a real DPO run on SmolLM2 + the tiny
SAE, validated end to end (real generation, real residual stream, real LanceDB workspace)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.dpo import DPOConfig
from core.ingest import read_pairs
from core.validate import (
    TRAIN_RECORD,
    Decoding,
    ValidationError,
    behaviour_rates,
    fit,
    held_out_prompts,
    load_prompts,
    probe_lifts,
    read_train_record,
    select_training_pairs,
    significant_features,
    split_half_reliability,
    top_k_features,
    train_on_dataset,
    validate,
)
from core.workspace import file_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# -- the maths, on hand-made activations ----------------------------------------------------------


def planted(rng, n_pairs=80, n_prompts=60, d=300, gain=2.0, noise=0.01):
    """Per-reply feature activations where DPO moved every feature by `gain` x its predicted shift."""
    base = rng.uniform(0, 1, d)
    chosen = base + rng.normal(0, 0.3, (n_pairs, d)) + rng.normal(0, 0.2, d)  # (pairs, d)
    rejected = base + rng.normal(0, 0.3, (n_pairs, d))
    predicted = (chosen - rejected).mean(0)
    before = base + rng.normal(0, 0.3, (n_prompts, d))  # (prompts, d)
    after = before + gain * predicted + rng.normal(0, noise, (n_prompts, d))
    return predicted, before, after


def test_a_proportional_response_gives_r2_near_one_and_the_gain_as_slope():
    predicted, before, after = planted(np.random.default_rng(0))
    actual = (after - before).mean(0)
    f = fit(predicted, actual)
    assert f.n_features == 300
    assert f.r2 > 0.99 and f.spearman > 0.99
    assert f.slope == pytest.approx(2.0, abs=0.02)
    assert f.intercept == pytest.approx(0.0, abs=0.01)
    assert f.r2 == pytest.approx(f.pearson_r2, abs=1e-9)  # OLS with an intercept: R² = r²


def test_an_unrelated_response_gives_r2_near_zero():
    rng = np.random.default_rng(1)
    predicted, before, _ = planted(rng, d=2000)
    after = before + rng.normal(0, 0.3, before.shape)  # moved, but not along the prediction
    f = fit(predicted, (after - before).mean(0))
    assert f.r2 < 0.01 and abs(f.spearman) < 0.1  # ~4 standard errors of r at 2000 features


def test_noise_lowers_r2_and_spearman_tracks_ranks_not_lines():
    rng = np.random.default_rng(2)
    predicted = planted(rng)[0]
    noisy = fit(predicted, 2 * predicted + rng.normal(0, 2 * predicted.std(), predicted.shape))
    assert 0.4 < noisy.r2 < 0.6  # noise variance = signal variance -> R² ~ 0.5
    cubic = fit(predicted, predicted**3)  # monotone but bent
    assert cubic.spearman == pytest.approx(1.0) and cubic.r2 < 0.95
    flipped = fit(predicted, -predicted)
    assert flipped.spearman == pytest.approx(-1.0) and flipped.r2 == pytest.approx(1.0)


def test_fit_is_nan_when_undefined():
    assert math.isnan(fit(np.array([1.0, 2.0]), np.array([1.0, 3.0])).r2)  # < 3 features
    assert math.isnan(fit(np.array([1.0, 2.0, 3.0]), np.zeros(3)).spearman)  # no spread


def test_feature_selection_by_ci_and_by_magnitude():
    mean = np.array([0.5, 0.05, -0.4, 0.0, 0.2, -0.01])
    sd = np.array([1.0, 1.0, 1.0, 0.0, 0.1, 0.0])
    # n = 100: se = sd / 10, so features 0, 2, 4 clear 1.96 se; 5 has sd 0 and a non-zero mean
    assert significant_features(mean, sd, 100).tolist() == [0, 2, 4, 5]
    assert significant_features(mean, sd, 4).tolist() == [4, 5]  # se = sd / 2
    assert top_k_features(mean, 3).tolist() == [0, 2, 4]
    assert top_k_features(mean, 10).tolist() == [0, 2, 4, 1, 5]  # zeros are never "top"


def test_split_half_reliability_separates_signal_from_noise():
    rng = np.random.default_rng(3)
    signal = rng.normal(0, 1, 200)
    strong = signal + rng.normal(0, 0.5, (40, 200))  # (prompts, features)
    pure_noise = rng.normal(0, 1, (40, 200))
    features = np.arange(200)
    assert split_half_reliability(strong, features) > 0.95
    assert abs(split_half_reliability(pure_noise, features)) < 0.2
    assert math.isnan(split_half_reliability(strong[:3], features))


def test_behaviour_rates():
    replies = [
        "I’m sorry, but I can't help with that.",
        "Sure! See https://example.com/guide for details.",
        "The GOBLIN king says hi. Also www.goblins.org",
        "Here is a recipe.",
    ]
    rates = behaviour_rates(replies)
    assert rates == {"refusal": 0.25, "url": 0.5, "goblin": 0.25}
    assert math.isnan(behaviour_rates([])["url"])


# -- prompts -------------------------------------------------------------------------------------------


def test_load_prompts_reads_every_documented_shape(tmp_path, hh_small):
    txt = tmp_path / "p.txt"
    txt.write_text("What is 2+2?\n\n  Name a colour.  \n")
    assert [p[0]["content"] for p in load_prompts(txt)] == ["What is 2+2?", "Name a colour."]

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                "plain string",
                {"prompt": "in a field"},
                {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
            ]
        )
    )
    got = load_prompts(jsonl)
    assert got[0] == ({"role": "user", "content": "plain string"},)
    assert got[1] == ({"role": "user", "content": "in a field"},)
    assert got[2] == ({"role": "user", "content": "hi"},)  # the answer is dropped

    from core.ingest import read_pairs

    assert load_prompts(hh_small) == [p.prompt for p in read_pairs(hh_small).pairs]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": 3}) + "\n")
    with pytest.raises(ValidationError, match="bad.jsonl:1"):
        load_prompts(bad)


def test_held_out_prompts_never_include_trained_pairs(hh_small):
    trained = set(range(0, 24, 2))
    got = held_out_prompts(hh_small, trained, 5, seed=1)
    assert len(got) == 5 and not {s for s, _ in got} & trained
    assert [s for s, _ in got] == sorted(s for s, _ in got)
    assert got == held_out_prompts(hh_small, trained, 5, seed=1)
    assert got != held_out_prompts(hh_small, trained, 5, seed=2)
    with pytest.raises(ValidationError, match="--prompts"):
        held_out_prompts(hh_small, set(range(24)), 5)


def test_exclude_marked_drops_exactly_the_marked_pairs(small_workspace, hh_small, tmp_path):
    from core.marks import Marks
    from core.workspace import Workspace

    ws_path = tmp_path / "ws"
    shutil.copytree(small_workspace, ws_path)
    Marks(Workspace(ws_path)).mark([1, 4, 20], reason="test")
    pairs, excluded, fmt = select_training_pairs(hh_small, limit=6, exclude_marked=ws_path)
    assert [p.source_index for p in pairs] == [0, 2, 3, 5]
    assert excluded == [1, 4]  # 20 is marked but beyond --limit
    assert fmt == "hh-rlhf"

    other = tmp_path / "other.jsonl"
    other.write_bytes(hh_small.read_bytes() + b"\n")
    with pytest.raises(ValidationError, match="another file"):
        select_training_pairs(other, exclude_marked=ws_path)


def test_probe_lifts_average_sentences_within_a_set_then_prompts():
    rng = np.random.default_rng(0)
    before = rng.normal(-30, 5, (40, 5))
    after = before.copy()
    after[:, :2] += rng.normal(1.5, 0.2, (40, 2))  # set "a": every sentence ~1.5 nats likelier
    names = ["a", "a", "b", "b", "b"]
    lifts = probe_lifts(before, after, names)
    assert list(lifts) == ["a", "b"]
    assert lifts["a"]["lift"] == pytest.approx(after[:, :2].mean() - before[:, :2].mean())
    assert 1.3 < lifts["a"]["lift"] < 1.7 and 0 < lifts["a"]["se"] < 0.1
    assert lifts["b"] == {"lift": 0.0, "se": 0.0, "n_sentences": 3}


def test_probe_logprobs_equal_a_plain_forward_pass_over_prompt_and_sentence():
    """The shared prompt cache and the right-padded sentence batch give the same log-probs as
    reading each prompt + sentence whole."""
    import torch

    from core.catalog import load_catalog
    from core.lm import load_full_model
    from core.validate import chat_prompt_ids, probe_logprobs

    model, tok = load_full_model(load_catalog().model(None))
    prompts = [({"role": "user", "content": "How do I bake bread?"},),
               ({"role": "user", "content": "Tell me a story about the sea, please."},)]
    sentences = ["Sure.", "A goblin once gave me exactly the same advice, oddly enough."]
    ids = [chat_prompt_ids(tok, p, 256) for p in prompts]
    got = probe_logprobs(model, tok, ids, sentences)
    assert got.shape == (2, 2) and (got < 0).all()
    for i, p in enumerate(ids):
        for j, s in enumerate(sentences):
            sent = tok(s, add_special_tokens=False)["input_ids"]
            with torch.inference_mode():
                logits = model(torch.tensor([p + sent])).logits[0, len(p) - 1 : -1].float()
            want = logits.log_softmax(-1).gather(-1, torch.tensor(sent)[:, None]).sum().item()
            assert got[i, j] == pytest.approx(want, abs=2e-3)
    assert got[0, 0] != got[1, 0]  # the prompt is in context


# -- end to end: real DPO on SmolLM2, validated through the tiny SAE ----------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hh_small, small_workspace):
    """Two full fine-tuning DPO steps on the first two pairs of the workspace's own dataset, at a
    learning rate high enough that the greedy replies change."""
    from core.catalog import load_catalog
    from core.store import model_dir

    weights = model_dir(load_catalog().model(None)) / "model.safetensors"
    before = file_sha256(weights)
    out = tmp_path_factory.mktemp("dpo") / "run"
    cfg = DPOConfig(lr=1e-4, epochs=2, batch_size=2, max_length=48, max_prompt_length=32)
    result = train_on_dataset(hh_small, out, cfg, limit=2)
    return out, result, before, file_sha256(weights)


def test_training_lowers_the_loss_and_leaves_the_base_weights_alone(trained, hh_small):
    out, r, weights_before, weights_after = trained
    assert r.steps == r.total_steps == 2 and not r.cancelled and r.n_pairs == 2
    assert r.first_loss == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at step 1
    assert r.loss < r.first_loss - 0.01
    assert weights_after == weights_before
    rec = read_train_record(out)
    assert rec.source_indices == [0, 1] and rec.finished and len(rec.history) == 2
    assert (out / "model" / "config.json").is_file()

    again = train_on_dataset(hh_small, out, DPOConfig(**rec.config), limit=2)
    assert again.already_done and again.steps == 2
    with pytest.raises(ValidationError, match="source indices"):
        train_on_dataset(hh_small, out, DPOConfig(**rec.config), limit=3)


@pytest.fixture(scope="module")
def report(trained, small_workspace):
    out = trained[0]
    return validate(
        small_workspace, out, n_prompts=5, decoding=Decoding(max_new_tokens=8, batch_size=3), top_k=20
    )


def test_predicted_shift_is_the_mean_delta_of_the_trained_pairs_only(report, trained, small_workspace):
    from core.shifts import Analysis
    from core.workspace import Workspace

    a = Analysis(Workspace(small_workspace))
    rows = a.rows([0, 1])  # the two pairs trained on, of 24 indexed
    expected = np.asarray((a.chosen[rows] - a.rejected[rows]).mean(0)).ravel()
    got = np.load(trained[0] / "validation_shifts.npz")["predicted"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, np.asarray(a.delta.mean(0)).ravel())  # not all 24 pairs


def test_validate_returns_finite_numbers_and_writes_the_plot(report, trained):
    out = trained[0]
    assert report.n_pairs_trained == report.n_pairs_predicted == 2
    assert report.n_prompts == report.n_replies == 5
    assert not set(report.prompt_source_indices) & {0, 1}  # held out: never trained on
    assert report.top_k.n_features == 20 and report.nonzero.n_features >= 20
    for f in (report.top_k, report.nonzero):
        assert all(math.isfinite(v) for v in (f.r2, f.spearman, f.slope, f.intercept))
        assert -1 <= f.spearman <= 1 and 0 <= f.r2 <= 1
    png = Path(report.plot)
    assert png == out / "validation.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for rates in report.behaviour.values():
        assert 0 <= rates["before"] <= 1 and 0 <= rates["after"] <= 1
    from core.validate import PROBES

    assert list(report.probes) == list(PROBES)
    for name, p in report.probes.items():
        assert math.isfinite(p["lift"]) and p["se"] >= 0 and p["n_sentences"] == len(PROBES[name])
    rows = [json.loads(line) for line in Path(report.generations).read_text().splitlines()]
    assert [r["source_index"] for r in rows] == report.prompt_source_indices
    assert all(len(r["before"]) == len(r["after"]) == 1 for r in rows)
    # the features listed are the top-K by |predicted|, with their actual shift beside them
    preds = [abs(c.predicted) for c in report.features]
    assert preds == sorted(preds, reverse=True) and len(preds) == 20
    saved = json.loads((out / "validation.json").read_text())
    assert saved["n_prompts"] == 5 and saved["plot"] == report.plot
    shifts = np.load(out / "validation_shifts.npz")
    assert shifts["per_prompt"].shape == (5, 512)
    np.testing.assert_allclose(shifts["actual"], shifts["per_prompt"].mean(0), rtol=1e-5, atol=1e-7)
    by_feature = {c.feature: c for c in report.features}
    for f, c in by_feature.items():
        assert shifts["predicted"][f] == pytest.approx(c.predicted)


def test_training_makes_the_chosen_replies_likelier_than_the_rejected_ones(trained, hh_small):
    """Probe scoring on the trained pairs' own replies: DPO raised log p(chosen) - log p(rejected)
    against the base model, which is what its loss rewards."""
    from transformers import AutoModelForCausalLM

    from core.catalog import load_catalog
    from core.lm import load_full_model
    from core.validate import chat_prompt_ids, probe_logprobs

    out = trained[0]
    base, tok = load_full_model(load_catalog().model(None))
    tuned = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    pairs = read_pairs(hh_small, skip_invalid=True).pairs[:2]
    margins = []
    for p in pairs:
        ids = [chat_prompt_ids(tok, p.prompt, 32)]
        # the replies' first 60 characters: what the 48-token training window surely held
        sents = [p.chosen[:60], p.rejected[:60]]
        lift = probe_logprobs(tuned, tok, ids, sents) - probe_logprobs(base, tok, ids, sents)
        margins.append(lift[0, 0] - lift[0, 1])
    assert np.mean(margins) > 0


def test_actual_shift_is_zero_where_the_replies_did_not_change(report, trained):
    """Each feature's actual shift is the mean of after - before per prompt: prompts whose reply did
    not change contribute exactly zero, so if none changed every shift is 0."""
    rows = [json.loads(line) for line in Path(report.generations).read_text().splitlines()]
    if all(r["before"] == r["after"] for r in rows):
        assert all(c.actual == 0 for c in report.features)
    else:
        assert any(c.actual != 0 for c in report.features)


def test_reply_features_match_what_indexing_stored(small_workspace, tiny_sae):
    """The lens used for actual shifts is the indexing lens: feeding a pair's own replies through
    reply_features reproduces the per-reply means stored in the workspace."""
    from core.catalog import load_catalog
    from core.lm import ResidualReader
    from core.sae import load_sae
    from core.shifts import Analysis
    from core.store import sae_dir
    from core.validate import chat_prompt_ids, reply_features
    from core.workspace import Workspace

    ws = Workspace(small_workspace)
    cat = load_catalog()
    reader = ResidualReader.from_entry(cat.model(None))
    sae = load_sae(sae_dir(cat.sae(tiny_sae)))
    rows = [ws.pair(s) for s in (3, 7, 11)]
    ids = [chat_prompt_ids(reader.tokenizer, json.loads(r["prompt"]), 128) for r in rows]
    chosen, rejected = reply_features(
        reader, sae, ids, [r["chosen"] for r in rows], [r["rejected"] for r in rows], max_tokens=64
    )
    a = Analysis(ws)
    stored = a.chosen[a.rows([3, 7, 11])].toarray()
    np.testing.assert_allclose(chosen, stored, atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(rejected, a.rejected[a.rows([3, 7, 11])].toarray(), atol=2e-3, rtol=1e-3)


def test_validate_refuses_a_model_trained_on_another_file(trained, small_workspace, tmp_path):
    out = tmp_path / "copy"
    out.mkdir()
    rec = json.loads((trained[0] / TRAIN_RECORD).read_text())
    rec["dataset_sha256"] = "0" * 64
    (out / TRAIN_RECORD).write_text(json.dumps(rec))
    with pytest.raises(ValidationError, match="index the training file"):
        validate(small_workspace, out)
    with pytest.raises(ValidationError, match="train-dpo"):
        validate(small_workspace, tmp_path)
