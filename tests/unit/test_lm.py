"""The fast residual reader must give exactly what a plain full forward pass gives."""

import torch
from transformers import AutoModelForCausalLM

from core.model.catalog import load_catalog
from core.model.lm import ResidualReader, plan_batches
from core.model.store import model_dir, pull_model
from tests.conftest import HH, short_pairs


def test_prefix_shared_truncated_read_matches_full_model_hidden_states():
    entry = load_catalog().model(None)
    pull_model(entry)
    reader = ResidualReader.from_entry(entry)
    full = AutoModelForCausalLM.from_pretrained(model_dir(entry), dtype=torch.float32).eval()
    pairs = short_pairs(HH, 4)
    toks = [reader.tokenize(p, 48) for p in pairs]
    reads = reader.read(toks)  # one padded batch of 4 pairs with different prompt lengths
    assert len({len(t.prompt_ids) for t in toks}) > 1, "the batch should exercise left padding"
    for t, (c, r) in zip(toks, reads):
        for ids, got in ((t.chosen_ids, c), (t.rejected_ids, r)):
            with torch.no_grad():
                hs = full(torch.tensor([t.prompt_ids + ids]), output_hidden_states=True).hidden_states
            want = hs[entry.layer + 1][0, len(t.prompt_ids):]
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=2e-3, rtol=1e-4), (got - want).abs().max()
    assert len(reader.model.layers) == entry.layer + 1


def test_plan_batches_respects_budget_and_keeps_every_pair():
    from core.model.lm import TokenizedPair

    items = [TokenizedPair(i, [1] * (5 + i % 7), [2] * (i % 5), [3] * (i % 3)) for i in range(50)]
    batches = plan_batches(items, 60)
    assert sorted(t.source_index for b in batches for t in b) == list(range(50))
    for b in batches:
        assert len(b) == 1 or max(t.cost for t in b) * len(b) <= 60


def test_sae_corpus_is_reply_tokens_read_after_their_prompts():
    """The SAE trains on what indexing encodes: each reply's tokens, read with its prompt in context."""
    from core.model.sae_train import collect_activations

    reader = ResidualReader.from_entry(load_catalog().model(None))
    pairs = short_pairs(HH, 3)
    toks = [reader.tokenize(p, 32) for p in pairs]
    n_reply = sum(len(t.chosen_ids) + len(t.rejected_ids) for t in toks)
    stats = {}
    acts = collect_activations(reader, pairs, max_tokens=32, token_budget=10_000, stats=stats)
    assert acts.shape == (n_reply, reader.d_model)
    # the very rows of the reader's reply activations, in batch order, not the prompt's
    read = {id(t): cr for b in plan_batches(toks, 4096) for t, cr in zip(b, reader.read(b))}
    want = torch.cat([x for b in plan_batches(toks, 4096) for t in b for x in read[id(t)]])
    assert torch.allclose(acts, want, atol=1e-4)
    # and each reply's rows are where stats says: pair i's chosen (or rejected) reply, whole
    assert stats["pairs_read"] == 3 and len(stats["replies"]) == 6
    for i, side, a, b in stats["replies"]:
        mine = read[id(toks[i])][0 if side == "chosen" else 1]
        assert torch.allclose(acts[a:b], mine, atol=1e-4)
    with_prompts = collect_activations(reader, pairs, max_tokens=32, token_budget=10_000, include_prompts=True)
    skip = reader.template_prefix_len()
    assert len(with_prompts) == n_reply + sum(len(t.prompt_ids) - skip for t in toks)
    # the budget stops at whole batches' worth of reply tokens, then cuts exactly
    assert len(collect_activations(reader, pairs, max_tokens=32, token_budget=20)) == 20


def test_whole_replies_fit_the_context_and_prompts_keep_their_tail():
    from core.model.lm import fit_pair

    p, c, r = list(range(400)), list(range(1000, 1300)), list(range(2000, 2040))
    whole = fit_pair(0, p, c, r, None, context=1000)  # everything fits: nothing cut
    assert (whole.prompt_ids, whole.chosen_ids, whole.rejected_ids) == (p, c, r)
    assert whole.prompt_dropped == whole.chosen_cut == whole.rejected_cut == 0
    tight = fit_pair(0, p, c, r, None, context=500)  # prompt + longer reply must fit in 500
    assert tight.chosen_ids == c and tight.rejected_ids == r  # replies whole, the prompt gives way
    assert tight.prompt_ids == p[-200:] and tight.prompt_dropped == 200
    tiny = fit_pair(0, p, c, r, None, context=200)  # the prompt keeps its last context // 4
    assert tiny.prompt_ids == p[-50:] and tiny.chosen_ids == c[:150] and tiny.chosen_cut == 150
    assert tiny.rejected_cut == 0 and all(len(tiny.prompt_ids) + len(x) <= 200 for x in (tiny.chosen_ids, tiny.rejected_ids))
    capped = fit_pair(0, p, c, r, 32, context=8192)  # an explicit cap: the rule before whole replies
    assert capped.chosen_ids == c[:32] and capped.rejected_ids == r[:32] and capped.prompt_ids == p[-64:]
    assert (capped.chosen_cut, capped.rejected_cut, capped.prompt_dropped) == (268, 8, 336)


def test_a_pair_longer_than_the_batch_budget_runs_alone():
    from core.model.lm import TokenizedPair

    items = [TokenizedPair(i, [1] * 10, [2] * 10, [3] * 5) for i in range(6)]
    items.append(TokenizedPair(99, [1] * 500, [2] * 900, [3] * 10))  # cost 2,300 > budget 200
    batches = plan_batches(items, 200)
    assert [99] in [[t.source_index for t in b] for b in batches]
    assert sorted(t.source_index for b in batches for t in b) == [*range(6), 99]
