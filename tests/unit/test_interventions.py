"""core.train.interventions: the maths of reward shaping, training-time steering, token masks and
inoculation on constructed cases (a tiny random Llama and a word-level tokenizer: seconds), then a
plan saved through the core API (the one the TUI calls) driving a real train-dpo run."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from core.train.dpo import DPOConfig, build_examples, collate, pad_token_id, sequence_logps, train_dpo
from core.errors import UsageError
from core.train.interventions import (
    Inoculation,
    Plan,
    Shaping,
    Steering,
    TokenMask,
    concept_direction,
    keep_mask,
    layer_output,
    shaping_offsets,
    steering,
    word_starts,
    zscore,
)
from tests.unit.test_dpo import ToyPair, tiny_llama, toy_pairs, word_tokenizer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


class FakeSAE:
    """What an intervention needs of an SAE: decoder rows, and an encoder (a ReLU of projections)."""

    def __init__(self, d_model=64, d_sae=8, seed=0, bias=0.0):
        g = torch.Generator().manual_seed(seed)
        self.W_dec = torch.randn(d_sae, d_model, generator=g)  # (d_sae, d_model)
        self.W_enc = self.W_dec.T.clone()  # (d_model, d_sae)
        self.bias = bias

    def encode(self, acts):  # (tokens, d_model) -> (tokens, d_sae)
        return torch.relu(acts @ self.W_enc - self.bias)


def plan(kind, features=(1, 2), strength=1.0, **kw) -> Plan:
    return Plan(kind, tuple(features), strength, layer=0, **kw)


# -- the maths ----------------------------------------------------------------------------------------


def test_concept_direction_is_the_normalised_mean_of_unit_decoder_rows():
    W = torch.tensor([[3.0, 0.0], [0.0, 0.5], [5.0, 5.0]])
    v = concept_direction(W, [0, 1])
    assert torch.allclose(v, torch.tensor([1.0, 1.0]) / math.sqrt(2))  # the rows' norms do not count
    assert torch.allclose(concept_direction(W, [2]), torch.tensor([1.0, 1.0]) / math.sqrt(2))


def test_shaping_offsets_are_lambda_times_the_zscored_difference():
    chosen, rejected = torch.tensor([4.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 4.0])
    z = zscore(torch.cat([chosen, rejected]))  # over all six replies: mean 2, SD sqrt(2.4)
    assert torch.allclose(z, (torch.cat([chosen, rejected]) - 2) / math.sqrt(2.4))
    got = shaping_offsets(chosen, rejected, lam=4.0)
    assert torch.allclose(got, 4.0 * torch.tensor([3.0, 0.0, -3.0]) / math.sqrt(2.4))
    assert torch.equal(shaping_offsets(torch.ones(3), torch.ones(3), 4.0), torch.zeros(3))  # SD 0


def test_a_word_is_dropped_whole_when_one_of_its_tokens_fires(tokenizer):
    class Bytes:  # byte-level-BPE-like: a leading space starts a word
        pieces = ["The", " gob", "lin", "'s", " hat", ".", " Red", "\n", "ok"]

        def decode(self, ids):
            return "".join(self.pieces[i] for i in ids)

    ids = list(range(9))
    starts = word_starts(Bytes(), ids)
    assert starts == [True, True, False, False, True, False, True, True, True]  # "\n" is whitespace
    fires = [False, False, True, False, False, False, False, False, False]
    assert keep_mask(fires, starts) == [True, False, False, False, True, True, True, True, True]
    assert keep_mask([False] * 8 + [True], starts)[-1] is False  # the last word too
    # word-level vocabularies: every token is a word
    wl = tokenizer.convert_tokens_to_ids(["the", "cat", "is", "good"])
    assert word_starts(tokenizer, wl) == [True] * 4


# -- in training, on a tiny model ------------------------------------------------------------------


CFG = DPOConfig(beta=0.5, lr=1e-3, epochs=1, batch_size=4, max_length=32, max_prompt_length=16)


def distinct_pairs() -> list[ToyPair]:
    """Pairs whose replies share no token: their max projections differ."""
    return [ToyPair(({"role": "user", "content": f"tell me about the {s}"},), good, bad)
            for s, good, bad in (("cat", "good nice", "bad sky"), ("dog", "so very good", "moon"),
                                 ("sun", "nice", "bad bad fish"), ("tree", "fine good", "sky sun"))]


def first_loss(out_dir) -> float:
    return json.loads((out_dir / "train_log.jsonl").read_text().splitlines()[0])["loss"]


def test_shaping_offsets_are_read_from_the_frozen_model_and_enter_the_loss(tokenizer, tmp_path):
    pairs, sae = distinct_pairs(), FakeSAE()
    model = tiny_llama(len(tokenizer))
    examples = build_examples(tokenizer, pairs, CFG)
    v = concept_direction(sae.W_dec, [1, 2])
    with torch.inference_mode():  # what prepare must find: each reply's max projection
        ids, mask, labels = collate(examples, pad_token_id(tokenizer), "cpu")
        proj = layer_output(model, 0, ids, mask) @ v  # (2 * pairs, tokens)
        want = torch.stack([proj[r][labels[r]].max() for r in range(len(ids))])
    shaping = Shaping(plan("shape", strength=4.0), sae, tokenizer)
    train_dpo(model, tokenizer, pairs, tmp_path, CFG, intervention=shaping)
    cache = load_file(tmp_path / "intervention.safetensors")
    assert torch.allclose(torch.cat([cache["chosen_max"], cache["rejected_max"]]), want, atol=1e-5)
    offsets = shaping_offsets(cache["chosen_max"], cache["rejected_max"], 4.0)
    assert offsets.abs().max() > 0.5
    # at the first step policy = reference, so the loss is the offsets' alone
    assert first_loss(tmp_path) == pytest.approx(-F.logsigmoid(offsets).mean().item(), abs=1e-5)
    state = json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())
    assert state["config"]["intervention"]["kind"] == "shape"


def test_steering_acts_during_training_only_and_leaves_no_hook(tokenizer, tmp_path):
    model = tiny_llama(len(tokenizer))
    ids = torch.tensor([[1, 4, 10, 11, 12]])
    mask = torch.ones_like(ids)
    vector = torch.randn(64)
    with torch.inference_mode():
        plain = layer_output(model, 0, ids, mask)
        with steering(model, 0, vector):
            steered = layer_output(model, 0, ids, mask)
        again = layer_output(model, 0, ids, mask)
    assert torch.allclose(steered - plain, vector.expand_as(plain), atol=1e-5)
    assert torch.equal(again, plain)  # the hook is gone

    pairs, sae = distinct_pairs(), FakeSAE()
    steer = Steering(plan("steer", strength=3.0), sae, tokenizer)
    out = train_dpo(model, tokenizer, pairs, tmp_path, CFG, intervention=steer)
    cache = load_file(tmp_path / "intervention.safetensors")
    spread = torch.cat([cache["chosen_max"], cache["rejected_max"]]).std()
    assert torch.allclose(steer.vector(cache), 3.0 * spread * steer.direction)
    # the reference is read unsteered, the policy steered: the first loss is not log 2
    assert abs(first_loss(tmp_path) - math.log(2)) > 1e-3
    assert not any(m._forward_hooks for m in model.modules())
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.inference_mode():
        assert torch.allclose(saved(ids).logits, model(ids).logits, atol=1e-5)  # no steering baked in


def test_token_masks_leave_out_the_words_where_the_concept_fires(tokenizer, tmp_path):
    pairs = distinct_pairs()
    model = tiny_llama(len(tokenizer))
    examples = build_examples(tokenizer, pairs, CFG)
    probe = FakeSAE()
    with torch.inference_mode():  # a threshold that makes the concept fire on about half the tokens
        ids, mask, labels = collate(examples, pad_token_id(tokenizer), "cpu")
        scores = probe.encode(layer_output(model, 0, ids, mask)[labels])[:, [1, 2]].max(-1).values
    masker = TokenMask(plan("mask", strength=float(scores.median())), probe, tokenizer)
    train_dpo(model, tokenizer, pairs, tmp_path, CFG, intervention=masker)
    cache = load_file(tmp_path / "intervention.safetensors")
    masked = masker.examples(examples, cache)
    fires = scores > float(scores.median())  # word-level tokens: a fired token is a dropped word
    n_c = sum(sum(e["chosen_labels_mask"]) for e in examples)
    kept = torch.cat([cache["chosen_keep"], cache["rejected_keep"]])
    assert torch.equal(torch.cat([cache["chosen_keep"], cache["rejected_keep"]]),
                       torch.cat([~fires[:n_c], ~fires[n_c:]]))
    assert 0 < (~kept).sum() < len(kept)
    for e, m in zip(examples, masked):  # only reply tokens lose their label; ids stay
        for side in ("chosen", "rejected"):
            assert m[f"{side}_input_ids"] == e[f"{side}_input_ids"]
            assert all(b <= a for a, b in zip(e[f"{side}_labels_mask"], m[f"{side}_labels_mask"]))
    # the reference log-probs cover exactly the kept tokens
    ref = load_file(tmp_path / "reference_logps.safetensors")
    with torch.inference_mode():
        want = sequence_logps(tiny_llama(len(tokenizer)), *collate(masked, pad_token_id(tokenizer), "cpu"))
    assert torch.allclose(torch.cat([ref["chosen"], ref["rejected"]]), want, atol=1e-4)


def test_inoculation_offsets_are_the_frozen_models_gain_from_the_instruction(tokenizer, tmp_path):
    pairs = [ToyPair(({"role": "user", "content": "tell me about the sun"},), "the sun is good", "bad")]
    model = tiny_llama(len(tokenizer))
    ino = Inoculation(plan("inoculate", strength=2.0, text="say good"), tokenizer=tokenizer,
                      max_prompt_length=CFG.max_prompt_length)
    ino.pairs(pairs)
    examples = build_examples(tokenizer, pairs, CFG)
    cache = ino.prepare(model, examples, 4, pad_token_id(tokenizer), torch.device("cpu"), torch.float32, None)
    told = build_examples(tokenizer, [ToyPair(({"role": "system", "content": "say good"}, *pairs[0].prompt),
                                              pairs[0].chosen, pairs[0].rejected)], CFG)
    with torch.inference_mode():
        a = sequence_logps(model, *collate(examples, 0, "cpu"))
        b = sequence_logps(model, *collate(told, 0, "cpu"))
    assert torch.allclose(cache["chosen_gain"], (b - a)[:1], atol=1e-5)
    assert torch.allclose(cache["rejected_gain"], (b - a)[1:], atol=1e-5)
    assert torch.allclose(ino.logit_offsets(cache), 2.0 * (b - a)[:1] - 2.0 * (b - a)[1:], atol=1e-5)


def test_a_resumed_run_refuses_another_intervention(tokenizer, tmp_path):
    import threading

    from core.errors import Cancelled, ValidationError

    pairs, sae = toy_pairs(), FakeSAE()
    cfg = DPOConfig(beta=0.5, lr=1e-3, epochs=2, batch_size=4, max_length=32, max_prompt_length=16)
    cancel = threading.Event()

    def stop(p):
        if p.stage == "train" and p.done == 1:
            cancel.set()

    with pytest.raises(Cancelled):
        train_dpo(tiny_llama(len(tokenizer)), tokenizer, pairs, tmp_path, cfg,
                  intervention=Shaping(plan("shape"), sae, tokenizer), progress=stop, cancel=cancel)
    with pytest.raises(ValidationError, match="intervention"):
        train_dpo(tiny_llama(len(tokenizer)), tokenizer, pairs, tmp_path, cfg,
                  intervention=Shaping(plan("shape", strength=2.0), sae, tokenizer))
    with pytest.raises(ValidationError, match="intervention"):
        train_dpo(tiny_llama(len(tokenizer)), tokenizer, pairs, tmp_path, cfg)


# -- a plan saved through the core API drives a real train-dpo run ------------------------------------


def test_a_saved_plan_drives_train_dpo(small_workspace, hh_small, tmp_path):
    import shutil

    from core.train.interventions import clear_plan, load_plan, make_plan, save_plan
    from core.analysis.shifts import Analysis
    from core.train.training import read_train_record, train_on_dataset
    from core.data.workspace import Workspace

    ws = tmp_path / "ws"
    shutil.copytree(small_workspace, ws)
    assert load_plan(ws) is None
    top = [f.feature for f in Analysis(Workspace(ws)).report(top=3).amplified]
    plan_ = make_plan(ws, "shape", top, label="most amplified", source="shifts")
    assert plan_.layer == Workspace(ws).meta()["layer"] and plan_.strength == 4.0
    save_plan(ws, plan_)
    assert load_plan(Workspace(ws)) == plan_
    with pytest.raises(UsageError):
        make_plan(ws, "shape", [])

    out = tmp_path / "run"
    cfg = DPOConfig(lr=1e-4, epochs=1, batch_size=2, max_length=48, max_prompt_length=32)
    r = train_on_dataset(hh_small, out, cfg, limit=2, plan_workspace=ws)
    record = read_train_record(out)
    assert record.plan == json.loads(json.dumps(asdict(plan_))) and r.steps == 1
    cache = load_file(out / "intervention.safetensors")
    offsets = shaping_offsets(cache["chosen_max"], cache["rejected_max"], 4.0)
    assert r.first_loss == pytest.approx(-F.logsigmoid(offsets).mean().item(), abs=1e-4)
    assert clear_plan(ws) and not clear_plan(ws)


def test_a_plan_finds_its_sae_without_a_catalogue_entry(small_workspace, config_dir, tmp_path):
    """A run-local SAE (a goblin run's, one named in a temporary catalogue) is found from the folder the
    workspace recorded at indexing; weights changed since are refused, with the SAE's name."""
    import shutil

    from core.model.catalog import _cached
    from core.errors import CatalogError
    from core.train.interventions import intervention_for, make_plan
    from core.model.store import recorded_sae, sae_dir
    from core.data.workspace import Workspace

    meta = Workspace(small_workspace).meta()
    plan_ = make_plan(small_workspace, "steer", [1, 2], label="two features")
    assert plan_.sae == meta["sae"] and plan_.sae_path == meta["sae_path"] and plan_.sae_sha256 == meta["sae_sha256"]
    folder = tmp_path / "sae"
    shutil.copytree(meta["sae_path"], folder)
    catalogue = config_dir / "models.toml"
    saved = catalogue.read_text()
    catalogue.write_text("")  # the catalogue forgets the SAE; the recorded folder is what is left
    _cached.cache_clear()
    try:
        moved = dataclasses.replace(plan_, sae_path=str(folder))
        steer = intervention_for(moved)
        assert torch.equal(steer.sae.W_dec, intervention_for(plan_).sae.W_dec)
        assert sae_dir(recorded_sae(plan_.sae, str(folder), plan_.sae_sha256)) == folder
        weights = folder / "sae_weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # other weights, same size
        with pytest.raises(CatalogError, match=f"{plan_.sae}.*not in the catalogue.*other weights"):
            intervention_for(moved)
    finally:
        catalogue.write_text(saved)
        _cached.cache_clear()
    assert recorded_sae(plan_.sae, str(folder), plan_.sae_sha256).source == "local"  # the catalogue's entry again


def test_a_plan_made_again_resumes_its_run_and_another_does_not():
    from core.train.training import _same_plan

    a = asdict(plan("steer"))
    assert _same_plan(json.loads(json.dumps(a)), a)  # the record read back (lists) and the plan made now (tuples)
    again = {**a, "created": "2030-01-01T00:00:00+0000", "label": "renamed", "source": "hypothesis 2",
             "sae_path": "/elsewhere"}
    assert _same_plan(a, again) and _same_plan(None, None) and not _same_plan(a, None)
    assert not _same_plan(a, {**a, "strength": a["strength"] + 1}) and not _same_plan(a, {**a, "features": [9]})
    signed = {**a, "sae_sha256": "ab" * 32}
    assert not _same_plan(signed, {**a, "sae_sha256": "cd" * 32})  # other SAE weights
    assert _same_plan(signed, {**a, "sae_sha256": ""})  # a record from before plans carried the hash
