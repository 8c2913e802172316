"""core.checks.validate: the comparison maths on constructed shifts, then a real DPO run on SmolLM2 + the tiny
SAE, validated end to end (real generation, real residual stream, real LanceDB workspace)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.train.dpo import DPOConfig
from core.errors import ValidationError
from core.data.ingest import read_pairs
from core.train.rollout import Decoding, behaviour_rates, load_prompts, probe_lifts
from core.train.training import (
    TRAIN_RECORD,
    TrainRecord,
    read_train_record,
    select_training_pairs,
    split_holdout,
    train_on_dataset,
)
from core.checks.validate import (
    ConceptGroups,
    agreement,
    disparity,
    fit,
    held_out_prompts,
    permutation_null,
    predict,
    ranks,
    significant_features,
    split_half_reliability,
    top_k_features,
    validate,
)
from core.data.workspace import file_sha256

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
    assert f.scale == pytest.approx(2.0, abs=0.02) and f.r2_scaled > 0.99  # y = x after one scale


def test_scaled_r2_charges_for_an_offset_that_the_fitted_line_forgives():
    x = np.linspace(-1, 1, 50)
    shifted = fit(x, 2 * x + 3)  # the right ranks and line, but everything moved by +3
    assert shifted.r2 == pytest.approx(1.0) and shifted.slope == pytest.approx(2.0)
    # through the origin every residual is 3: far worse than a constant
    assert shifted.r2_scaled == pytest.approx(1 - 9 * 50 / ((2 * x) ** 2).sum()) and shifted.r2_scaled < -5
    assert fit(x, -3 * x).r2_scaled == pytest.approx(1.0)  # a negative scale is still one scale


def test_ranks_average_ties():
    assert ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    x = np.array([0.0, 0.0, 1.0, 2.0, 2.0, 2.0])
    from scipy.stats import rankdata

    assert ranks(x).tolist() == rankdata(x).tolist()


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


def test_half_means_split_the_rows_and_read_sparse_as_dense():
    import scipy.sparse as sp

    from core.checks.validate import half_means

    x = np.random.default_rng(0).normal(0, 1, (9, 4))
    x[x < 0.3] = 0  # sparse-looking
    h = half_means(x, n_splits=5, seed=1)
    assert h.shape == (5, 2, 4)
    np.testing.assert_allclose(half_means(sp.csr_matrix(x), n_splits=5, seed=1), h, rtol=1e-5, atol=1e-6)
    # halves of 4 and 5 rows: their size-weighted mean is the whole mean, and they differ
    np.testing.assert_allclose((4 * h[:, 0] + 5 * h[:, 1]) / 9, np.broadcast_to(x.mean(0), (5, 4)), atol=1e-5)
    assert not np.allclose(h[:, 0], h[:, 1])
    assert half_means(x[:3]) is None


def test_a_perfect_prediction_reaches_the_noise_ceiling_and_no_higher():
    """The ceiling is the product of the two split-half reliabilities: a prediction that is the
    truth, estimated from noisy pairs and measured on noisy prompts, shows R² at about the ceiling;
    the ceiling rises with the number of pairs."""
    from core.train.rollout import ReplyStats
    from core.checks.validate import compare, noise_ceiling, predict

    rng = np.random.default_rng(11)
    d, prompts, samples = 600, 40, 2
    truth = rng.normal(0, 1, d)
    ceilings = {}
    for pairs in (20, 400):
        delta = truth + rng.normal(0, 4, (pairs, d))  # chosen - rejected per pair, (pairs, d)
        rejected = np.abs(rng.normal(0, 1, (pairs, d)))
        chosen = rejected + delta
        p = predict(ReplyStats(chosen, np.clip(chosen, 0, 1), None), ReplyStats(rejected, np.clip(rejected, 0, 1), None))
        before = rng.normal(0, 1, (prompts * samples, d))
        after = before + 0.3 * truth + rng.normal(0, 1.5, before.shape)
        out = compare(p, ReplyStats(before, before, None), ReplyStats(after, after, None), prompts, n_boot=20)
        ma = out["mean_activation"]
        sig = out["sets"]["nonzero"]
        r2 = fit(p.mean[sig], (after - before).mean(0)[sig]).r2
        assert ma["ceiling"] == pytest.approx(noise_ceiling(ma["predicted_reliability"], ma["nonzero_reliability"]))
        assert 0 < ma["ceiling"] < 1 and abs(r2 - ma["ceiling"]) < 0.08, (pairs, r2, ma)
        ceilings[pairs] = ma["ceiling"]
    assert ceilings[400] > ceilings[20] + 0.2
    assert math.isnan(noise_ceiling(float("nan"), 0.9)) and noise_ceiling(1.3, -0.2) == 0.0


def test_the_thresholded_disparity_follows_the_paper():
    import scipy.sparse as sp

    chosen = np.array([[0.02, 0.0, 0.5], [0.5, 0.005, 0.0], [0.0, 0.3, 0.011]])  # (pairs, features)
    rejected = np.array([[0.0, 0.3, 0.5], [0.5, 0.0, 0.2], [0.0, 0.0, 0.0]])
    b = disparity(chosen, rejected, tau=0.01)
    assert b.tolist() == [[1, -1, 0], [0, 0, -1], [0, 1, 1]]  # freq 0.005 does not fire; 0.011 does
    assert disparity(sp.csr_matrix(chosen), sp.csr_matrix(rejected), 0.01).toarray().tolist() == b.tolist()
    from core.train.rollout import ReplyStats

    for dense in (True, False):
        wrap = (lambda m: m) if dense else sp.csr_matrix
        p = predict(ReplyStats(wrap(chosen), wrap(chosen), None), ReplyStats(wrap(rejected), wrap(rejected), None))
        assert p.n == 3
        np.testing.assert_allclose(p.fire, b.mean(0))
        np.testing.assert_allclose(p.fire_sd, b.std(0, ddof=1))
        np.testing.assert_allclose(p.mean, (chosen - rejected).mean(0))
        np.testing.assert_allclose(p.sd, (chosen - rejected).std(0, ddof=1))


def planted_concepts(rng, n_concepts=80, size=5, noise=0.5, prompts=30, grouped=True):
    """Per-feature predicted and per-prompt actual values whose signal is shared within concepts
    (grouped) or not (each feature its own signal), with independent per-feature noise."""
    n = n_concepts * size
    signal = np.repeat(rng.normal(0, 1, n_concepts), size) if grouped else rng.normal(0, 1, n)
    predicted = signal + rng.normal(0, noise, n)
    per_prompt = 0.5 * signal + rng.normal(0, noise, (prompts, n)) * np.sqrt(prompts)
    members = rng.permutation(n).reshape(n_concepts, size)  # concept m's features, scattered
    order = np.argsort(members.ravel())
    predicted, per_prompt = predicted[order], per_prompt[:, order]  # feature members[m, j] has signal m
    return ConceptGroups.of(members.tolist()), predicted, per_prompt


def test_concept_means_average_each_concepts_features():
    c = ConceptGroups.of([[0, 2], [], [1, 3, 4]], ids=["a", "empty", "b"])
    assert len(c) == 2 and c.ids == ("a", "b") and c.sizes.tolist() == [2, 3]
    x = np.array([[1.0, 10.0, 3.0, 20.0, 30.0], [0.0, 0.0, 2.0, 0.0, 3.0]])  # (rows, features)
    np.testing.assert_allclose(c.mean(x), [[2.0, 20.0], [1.0, 1.0]])
    np.testing.assert_allclose(c.mean(x[0], np.array([4, 3, 2, 1, 0])), [25.0, 14 / 3])


def test_concepts_beat_the_permutation_null_only_when_their_features_share_a_signal():
    rng = np.random.default_rng(5)
    concepts, predicted, per_prompt = planted_concepts(rng)
    feats = agreement("features", predicted, per_prompt, n_boot=200)
    a = agreement("concepts", concepts.mean(predicted), concepts.mean(per_prompt), concepts.ids, n_boot=200)
    a.null = permutation_null(concepts, predicted, per_prompt.mean(0), a.fit, n_perm=300)
    # averaging five features whose signal is shared keeps the signal and shrinks the noise
    # (expected R²: features 0.4, concepts 0.79, random groups of five 0.4)
    assert a.fit.r2 > feats.fit.r2 + 0.2 and a.fit.r2 > 0.65
    assert a.null["r2_mean"] < a.fit.r2 - 0.2 and a.null["p_value"] < 0.01 and a.null["n"] == 300
    assert a.r2_ci[0] < a.fit.r2 < a.r2_ci[1] and a.spearman_ci[0] < a.fit.spearman <= a.spearman_ci[1] <= 1
    assert len(a.points) == 80

    # the same groups over features that do not share a signal: no better than chance
    concepts, predicted, per_prompt = planted_concepts(np.random.default_rng(6), grouped=False)
    b = agreement("concepts", concepts.mean(predicted), concepts.mean(per_prompt), n_boot=50)
    null = permutation_null(concepts, predicted, per_prompt.mean(0), b.fit, n_perm=300)
    assert null["p_value"] > 0.05


def test_concepts_of_their_ci_clear_members_leave_out_members_that_predict_nothing():
    """A concept's members whose predicted shift is noise dilute its average; over its CI-clear
    members only, the concept keeps the prediction its clear members make."""
    from core.train.rollout import ReplyStats
    from core.checks.validate import compare, predict

    c = ConceptGroups.of([[0, 2], [1, 3, 4], [5]], ids=["a", "b", "c"])
    kept = c.restricted(np.array([2, 3, 4]))
    assert kept.ids == ("a", "b") and kept.lists() == [[2], [3, 4]]

    rng = np.random.default_rng(3)
    n_concepts, pairs, prompts, samples = 12, 60, 8, 2
    members = rng.permutation(5 * n_concepts).reshape(n_concepts, 5)  # the first two of each carry its signal
    signal = np.linspace(-1, 1, n_concepts)
    delta = rng.normal(0, 0.05, (pairs, 5 * n_concepts))  # (pairs, d): chosen - rejected
    delta -= delta.mean(0)  # the other members predict nothing (their mean delta is 0, never CI-clear)
    moved = np.zeros(5 * n_concepts)  # what DPO does to each feature
    for m, f in enumerate(members):
        delta[:, f[:2]] += signal[m]
        moved[f[:2]] = 0.5 * signal[m]
        moved[f[2:]] = rng.normal(0, 1, 3)  # moved by something the pairs do not predict
    rejected = np.abs(rng.normal(0, 1, delta.shape))
    chosen = rejected + delta
    prediction = predict(ReplyStats(chosen, np.clip(chosen, 0, 1), None), ReplyStats(rejected, np.clip(rejected, 0, 1), None))
    before = np.abs(rng.normal(0, 1, (prompts * samples, 5 * n_concepts)))
    after = before + moved + rng.normal(0, 0.05, before.shape)
    out = compare(prediction, ReplyStats(before, np.clip(before, 0, 1), None),
                  ReplyStats(after, np.clip(after, 0, 1), None), prompts, ConceptGroups.of(members.tolist()),
                  n_boot=50, n_perm=50)
    whole, clear = out["concepts_mean_activation"], out["concepts_clear_mean_activation"]
    assert clear.fit.r2 > 0.95 and whole.fit.r2 < clear.fit.r2 - 0.3
    significant = set(out["sets"]["significant"].tolist())
    for point, f in zip(clear.points, members):
        kept = [x for x in f if x in significant]
        assert set(f[:2]) <= set(kept) and point["predicted"] == pytest.approx(prediction.mean[kept].mean())


def test_bootstrap_cis_over_prompts_cover_the_truth_and_narrow_with_more_prompts():
    rng = np.random.default_rng(7)
    predicted = rng.normal(0, 1, 60)
    covered, widths = 0, {}
    for prompts in (10, 80):
        for trial in range(20):
            per_prompt = 0.8 * predicted + rng.normal(0, 2, (prompts, 60))
            a = agreement("features", predicted, per_prompt, n_boot=300, seed=trial)
            covered += a.slope_ci[0] <= 0.8 <= a.slope_ci[1]
            widths.setdefault(prompts, []).append(a.slope_ci[1] - a.slope_ci[0])
    assert covered >= 34  # of 40 (nominal 95%)
    assert np.mean(widths[80]) < 0.5 * np.mean(widths[10])  # ~ 1 / sqrt(prompts)


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

    from core.data.ingest import read_pairs

    assert load_prompts(hh_small) == [p.prompt for p in read_pairs(hh_small).pairs]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": 3}) + "\n")
    with pytest.raises(ValidationError, match="bad.jsonl:1"):
        load_prompts(bad)


def test_held_out_prompts_never_include_trained_pairs(hh_small):
    record = TrainRecord(str(hh_small), "", "hh-rlhf", "m", source_indices=list(range(0, 24, 2)))
    got = held_out_prompts(hh_small, record, 5, seed=1)
    assert len(got) == 5 and not {s for s, _ in got} & set(record.source_indices)
    assert [s for s, _ in got] == sorted(s for s, _ in got)
    assert got == held_out_prompts(hh_small, record, 5, seed=1)
    assert got != held_out_prompts(hh_small, record, 5, seed=2)
    record.heldout_indices = [3, 7, 9]  # a held-out split: only those
    assert [s for s, _ in held_out_prompts(hh_small, record, 5)] == [3, 7, 9]
    with pytest.raises(ValidationError, match="--holdout"):
        held_out_prompts(hh_small, TrainRecord("", "", "", "", source_indices=list(range(24))), 5)


def test_the_holdout_split_is_seeded_disjoint_and_independent_of_marks(small_workspace, hh_small, tmp_path):
    kept, out = split_holdout(range(100), 0.1, seed=0)
    assert len(out) == 10 and len(kept) == 90 and not set(kept) & set(out)
    assert sorted(kept + out) == list(range(100)) and kept == sorted(kept)
    assert (kept, out) == split_holdout(range(100), 0.1, seed=0)
    assert out != split_holdout(range(100), 0.1, seed=1)[1]
    assert split_holdout(range(5), 0.0) == (list(range(5)), [])
    assert len(split_holdout(range(5), 0.01)[1]) == 1  # a share above 0 holds out at least one
    with pytest.raises(ValidationError):
        split_holdout(range(5), 1.0)

    from core.data.marks import Marks
    from core.data.workspace import Workspace

    ws = tmp_path / "ws"
    shutil.copytree(small_workspace, ws)
    plain = select_training_pairs(hh_small, limit=12, holdout=0.25, split_seed=3)
    Marks(Workspace(ws)).mark([s for s in range(12) if s not in plain[2]][:2], reason="test")
    cleaned = select_training_pairs(hh_small, limit=12, holdout=0.25, split_seed=3, exclude_marked=ws)
    assert cleaned[2] == plain[2] and len(plain[2]) == 3  # the same pairs held out
    assert len(cleaned[0]) == len(plain[0]) - 2 and len(cleaned[1]) == 2
    assert not {p.source_index for p in plain[0]} & set(plain[2])


def test_exclude_marked_drops_exactly_the_marked_pairs(small_workspace, hh_small, tmp_path):
    from core.data.marks import Marks
    from core.data.workspace import Workspace

    ws_path = tmp_path / "ws"
    shutil.copytree(small_workspace, ws_path)
    Marks(Workspace(ws_path)).mark([1, 4, 20], reason="test")
    pairs, excluded, heldout, fmt = select_training_pairs(hh_small, limit=6, exclude_marked=ws_path)
    assert heldout == []
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

    from core.model.catalog import load_catalog
    from core.model.lm import load_full_model
    from core.train.rollout import probe_logprobs
    from core.model.chat import chat_prompt_ids

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
    """Two full fine-tuning DPO steps on two pairs of the workspace's own dataset (the first six
    pairs, four of them held out), at a learning rate high enough that the replies change."""
    from core.model.catalog import load_catalog
    from core.model.store import model_dir

    weights = model_dir(load_catalog().model(None)) / "model.safetensors"
    before = file_sha256(weights)
    out = tmp_path_factory.mktemp("dpo") / "run"
    cfg = DPOConfig(lr=1e-4, epochs=2, batch_size=2, max_length=48, max_prompt_length=32)
    result = train_on_dataset(hh_small, out, cfg, limit=6, holdout=0.67, split_seed=0)
    return out, result, before, file_sha256(weights)


@pytest.mark.slow(13)  # 13 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_training_lowers_the_loss_and_leaves_the_base_weights_alone(trained, hh_small):
    out, r, weights_before, weights_after = trained
    assert r.steps == r.total_steps == 2 and r.n_pairs == 2 and r.n_heldout == 4
    assert r.first_loss == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at step 1
    assert r.loss < r.first_loss - 0.01
    assert weights_after == weights_before
    rec = read_train_record(out)
    assert len(rec.source_indices) == 2 and rec.finished and len(rec.history) == 2
    assert sorted(rec.source_indices + rec.heldout_indices) == list(range(6))
    assert rec.heldout_indices == split_holdout(range(6), 0.67, 0)[1]
    assert (out / "model" / "config.json").is_file()

    again = train_on_dataset(hh_small, out, DPOConfig(**rec.config), limit=6, holdout=0.67)
    assert again.already_done and again.steps == 2
    with pytest.raises(ValidationError, match="another (source|heldout) indices"):
        train_on_dataset(hh_small, out, DPOConfig(**rec.config), limit=7, holdout=0.67)


def feature_groups(d_sae=512, size=4) -> ConceptGroups:
    """Constructed concepts: consecutive features in groups of `size` (the real ones come from the
    concepts module; validate only needs feature lists)."""
    return ConceptGroups.of([list(range(i, i + size)) for i in range(0, d_sae, size)])


@pytest.fixture(scope="module")
def report(trained, small_workspace):
    out = trained[0]
    return validate(
        small_workspace, out, n_prompts=5, top_k=20, concepts=feature_groups(), n_boot=50, n_perm=50,
        decoding=Decoding(max_new_tokens=8, batch_size=4, temperature=1.0, samples=2),
    )


@pytest.mark.slow(24)  # 24 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_predicted_shift_is_the_mean_delta_of_the_trained_pairs_only(report, trained, small_workspace):
    from core.analysis.shifts import Analysis
    from core.checks.validate import disparity
    from core.data.workspace import Workspace

    a = Analysis(Workspace(small_workspace))
    rows = a.rows(read_train_record(trained[0]).source_indices)  # the two pairs trained on, of 24
    expected = np.asarray((a.chosen[rows] - a.rejected[rows]).mean(0)).ravel()
    saved = np.load(trained[0] / "validation_shifts.npz")
    np.testing.assert_allclose(saved["predicted"], expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(saved["predicted"], np.asarray(a.delta.mean(0)).ravel())  # not all 24
    c, r = a.frequencies()
    b = disparity(c[rows], r[rows]).toarray()
    np.testing.assert_allclose(saved["predicted_fire"], b.mean(0))
    # a concept's prediction is the mean of its features' disparities
    groups = feature_groups()
    by_id = {p["id"]: p for p in report.concepts.points}
    for m in (0, 7, 100):
        assert by_id[m]["predicted"] == pytest.approx(b.mean(0)[groups.features[4 * m : 4 * m + 4]].mean())
    # by mean activation: the mean of its features' mean deltas, against the mean of their actual shifts
    by_id = {p["id"]: p for p in report.concepts_mean_activation.points}
    for m in (0, 7, 100):
        members = groups.features[4 * m : 4 * m + 4]
        assert by_id[m]["predicted"] == pytest.approx(expected[members].mean(), rel=1e-4, abs=1e-6)
        assert by_id[m]["actual"] == pytest.approx(saved["actual"][members].mean(), rel=1e-4, abs=1e-6)


def test_validate_returns_finite_numbers_and_writes_the_plot(report, trained):
    out = trained[0]
    record = read_train_record(out)
    assert report.n_pairs_trained == report.n_pairs_predicted == 2
    assert report.n_prompts == 4 and report.n_replies == 8  # the held-out split, 2 samples each
    assert report.prompt_source_indices == record.heldout_indices
    assert report.top_k.n_features == 20 and report.nonzero.n_features >= 20
    for f in (report.top_k, report.nonzero):
        assert all(math.isfinite(v) for v in (f.r2, f.spearman, f.slope, f.intercept))
        assert -1 <= f.spearman <= 1 and 0 <= f.r2 <= 1
    png = Path(report.plot)
    assert png == out / "validation.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(report.concepts_plot).read_bytes()[:4] == b"\x89PNG"
    c = report.concepts
    assert report.n_concepts == 128 and c.level == "concepts" and len(c.points) == 128
    assert c.null["n"] == 50 and 0 < c.null["p_value"] <= 1
    for rates in report.behaviour.values():
        assert 0 <= rates["before"] <= 1 and 0 <= rates["after"] <= 1
    from core.train.rollout import PROBES

    assert list(report.probes) == list(PROBES)
    for name, p in report.probes.items():
        assert math.isfinite(p["lift"]) and p["se"] >= 0 and p["n_sentences"] == len(PROBES[name])
    rows = [json.loads(line) for line in Path(report.generations).read_text().splitlines()]
    assert [r["source_index"] for r in rows] == report.prompt_source_indices
    assert all(len(r["before"]) == len(r["after"]) == 2 for r in rows)
    # the features listed are the top-K by |predicted|, with their actual shift beside them
    preds = [abs(c.predicted) for c in report.features]
    assert preds == sorted(preds, reverse=True) and len(preds) == 20
    saved = json.loads((out / "validation.json").read_text())
    assert saved["n_prompts"] == 4 and saved["plot"] == report.plot
    assert set(saved["concepts"]["fit"]) >= {"r2", "r2_scaled", "scale", "spearman", "slope"}
    shifts = np.load(out / "validation_shifts.npz")
    assert shifts["per_prompt"].shape == shifts["per_prompt_fire"].shape == (4, 512)
    np.testing.assert_allclose(shifts["actual"], shifts["per_prompt"].mean(0), rtol=1e-5, atol=1e-7)
    assert set(np.unique(shifts["per_prompt_fire"] * 2).tolist()) <= {-2, -1, 0, 1, 2}  # 2 samples
    by_feature = {c.feature: c for c in report.features}
    for f, c in by_feature.items():
        assert shifts["predicted"][f] == pytest.approx(c.predicted)


def test_training_makes_the_chosen_replies_likelier_than_the_rejected_ones(trained, hh_small):
    """Probe scoring on the trained pairs' own replies: DPO raised log p(chosen) - log p(rejected)
    against the base model, which is what its loss rewards."""
    from transformers import AutoModelForCausalLM

    from core.model.catalog import load_catalog
    from core.model.lm import load_full_model
    from core.train.rollout import probe_logprobs
    from core.model.chat import chat_prompt_ids

    out = trained[0]
    base, tok = load_full_model(load_catalog().model(None))
    tuned = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    trained_on = set(read_train_record(out).source_indices)
    pairs = [p for p in read_pairs(hh_small, skip_invalid=True).pairs if p.source_index in trained_on]
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


def test_reply_stats_match_what_indexing_stored(small_workspace, tiny_sae):
    """The lens used for actual shifts is the indexing lens: feeding a pair's own replies through
    read_reply_pairs reproduces the per-reply mean, firing frequency and max stored in the workspace."""
    from core.model.catalog import load_catalog
    from core.model.lm import ResidualReader
    from core.train.rollout import read_reply_pairs
    from core.model.chat import chat_prompt_ids
    from core.model.sae import encode, load_sae
    from core.analysis.shifts import Analysis
    from core.model.store import sae_dir
    from core.data.workspace import Workspace

    ws = Workspace(small_workspace)
    cat = load_catalog()
    reader = ResidualReader.from_entry(cat.model(None))
    sae = load_sae(sae_dir(cat.sae(tiny_sae)))
    rows = [ws.pair(s) for s in (3, 7, 11)]
    ids = [chat_prompt_ids(reader.tokenizer, json.loads(r["prompt"]), 128) for r in rows]
    chosen, rejected = read_reply_pairs(
        reader, lambda acts: encode(sae, acts), ids, [r["chosen"] for r in rows],
        [r["rejected"] for r in rows], max_tokens=64,
    )
    a = Analysis(ws)
    at = a.rows([3, 7, 11])
    freq, maxima = a.frequencies(), a.maxima()
    for side, got, mean in ((0, chosen, a.chosen), (1, rejected, a.rejected)):
        np.testing.assert_allclose(got.mean, mean[at].toarray(), atol=2e-3, rtol=1e-3)
        np.testing.assert_allclose(got.max, maxima[side][at].toarray(), atol=2e-3, rtol=1e-3)
        # a frequency is a share of tokens: float noise may flip a near-zero activation at most
        assert np.abs(got.freq - freq[side][at].toarray()).max() <= 2 / 64 + 1e-6


def test_common_length_reads_a_pair_to_its_shorter_reply(small_workspace, tiny_sae):
    """--match-length: a reply that only adds text after another reads, cut to the shorter one's
    tokens, exactly as that one; read whole, it differs."""
    from core.model.catalog import load_catalog
    from core.model.lm import ResidualReader
    from core.train.rollout import read_reply_pairs
    from core.model.chat import chat_prompt_ids
    from core.model.sae import encode, load_sae
    from core.model.store import sae_dir

    cat = load_catalog()
    reader = ResidualReader.from_entry(cat.model(None))
    sae = load_sae(sae_dir(cat.sae(tiny_sae)))
    ids = [chat_prompt_ids(reader.tokenizer, [{"role": "user", "content": "Tell me about bread."}], 64)] * 2
    short = "Bread is made from flour, water and yeast."
    longer = short + " People in my village still leave bread out for the goblins on nights like this."
    first, second = [short, longer], [longer, short]  # the longer one on either side
    assert reader.reply_ids(longer)[: len(reader.reply_ids(short))] == reader.reply_ids(short)

    def read(common):
        return read_reply_pairs(reader, lambda acts: encode(sae, acts), ids, first, second, max_tokens=64,
                                common_length=common)

    cut_first, cut_second = read(True)
    whole_first, whole_second = read(False)
    for stat in ("mean", "freq", "max"):
        np.testing.assert_allclose(getattr(cut_first, stat), getattr(cut_second, stat), atol=1e-4)
    assert np.abs(whole_first.mean - whole_second.mean).max() > 1e-2
    np.testing.assert_allclose(whole_first.mean[0], cut_first.mean[0], atol=1e-4)  # the short one is whole


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
