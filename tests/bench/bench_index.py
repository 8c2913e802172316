"""Indexing speed: our residual reader vs a plain `model(**batch, output_hidden_states=True)` loop.

Both read the layer-L residual stream over the reply tokens of the same real pairs, on the same model,
in one run. Ours: blocks after L, the final norm and the LM head dropped; each prompt run once and both
replies continued from its KV cache; length-sorted batches under a padded-token budget. Plain: full
model, prompt+chosen and prompt+rejected as separate rows, fixed-size batches in file order, right-padded.
Also checks both give the same activations.

    .venv/bin/python tests/bench/bench_index.py [--pairs 120] [--data ../shared/data/hh-rlhf-harmless-base-test.jsonl.gz]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from core.catalog import load_catalog
from core.ingest import read_pairs
from core.lm import ResidualReader, plan_batches
from core.store import model_dir, pull_model

ROOT = Path(__file__).resolve().parents[2]


@torch.inference_mode()
def plain(model, reader, toks, layer, batch_size, pad):
    out_tokens = 0
    for s in range(0, len(toks), batch_size):
        rows = [(t.prompt_ids, ids) for t in toks[s : s + batch_size] for ids in (t.chosen_ids, t.rejected_ids)]
        L = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((len(rows), L), pad)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for i, (p, r) in enumerate(rows):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            mask[i, : len(p) + len(r)] = 1
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer + 1]
        acts = [hs[i, len(p) : len(p) + len(r)] for i, (p, r) in enumerate(rows)]
        out_tokens += sum(len(a) for a in acts)
    return out_tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=120)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/data/hh-rlhf-harmless-base-test.jsonl.gz"))
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--plain-batch", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    args = ap.parse_args()
    entry = load_catalog().model(None)
    pull_model(entry)
    pairs = read_pairs(args.data, skip_invalid=True, limit=args.pairs).pairs
    reader = ResidualReader.from_entry(entry)
    full = AutoModelForCausalLM.from_pretrained(model_dir(entry), dtype=torch.float32).eval()
    toks = [reader.tokenize(p, args.max_tokens) for p in pairs]
    n_tok = sum(len(t.prompt_ids) + len(t.chosen_ids) + len(t.rejected_ids) for t in toks)
    pad = reader.tokenizer.pad_token_id or 0
    print(f"{len(pairs)} pairs from {Path(args.data).name}, {n_tok:,} tokens (prompt once + both replies), "
          f"torch threads {torch.get_num_threads()}")

    # correctness on a few pairs
    for t, (c, _) in zip(toks[:3], reader.read(toks[:3])):
        with torch.inference_mode():
            hs = full(torch.tensor([t.prompt_ids + t.chosen_ids]), output_hidden_states=True).hidden_states
        assert torch.allclose(c, hs[entry.layer + 1][0, len(t.prompt_ids):], atol=2e-3, rtol=1e-4)

    plain(full, reader, toks[:4], entry.layer, args.plain_batch, pad)  # warm-up both
    reader.read(toks[:4])
    t0 = time.perf_counter()
    plain(full, reader, toks, entry.layer, args.plain_batch, pad)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in plan_batches(toks, args.batch_tokens):
        reader.read(b)
    t_ours = time.perf_counter() - t0
    print(f"plain  output_hidden_states loop: {t_plain:7.1f}s  {n_tok / t_plain:7.0f} tok/s")
    print(f"ours   truncated + prefix-shared: {t_ours:7.1f}s  {n_tok / t_ours:7.0f} tok/s")
    print(f"speed-up: {t_plain / t_ours:.2f}x")


if __name__ == "__main__":
    main()
