"""Indexing throughput with whole replies against a plain forward pass, in one run on the same pairs.

    plain         `model(input_ids, attention_mask, output_hidden_states=True)` of the full model over
                  prompt+chosen and prompt+rejected rows, --plain-batch pairs per batch in file order,
                  right-padded (what one would write first)
    plain-sorted  the same, but batches of length-sorted rows under the same padded-token budget as
                  ours (a stronger baseline)
    engine        `core.index.readout.read_batch` over length-sorted batches: truncated forward, prompt
                  shared by both replies, sparse SAE encode, per-reply and prompt summaries, token
                  strings (what a Ray worker runs)
    index         `core.index.build.index_dataset` end to end into a fresh workspace: tokenising thread,
                  engine, MiniLM embeddings + LanceDB appends in the writer thread; its own tok/s
                  (the CLI's number: the model/SAE load is not in it, MiniLM's load in the writer is)

Tokens are counted the same for all (prompt once + both replies, as read), so the ratios are time
ratios. The SAE is a random-weight TopK SAE of the embedded recipe's shape (2,048 features, k=32)
written in sae-lens format to a temporary folder and named in a temporary catalogue.

    .venv/bin/python tests/bench/bench_index.py [--pairs 32] [--data ../shared/data/ultrafeedback-1k.jsonl]

`--index-only --max-tokens 256` times only `index_dataset` with a reply cap; it uses nothing newer
than `index_dataset(..., settings=IndexSettings(max_tokens=...))`, so running it with
PYTHONPATH pointing at an older checkout times that checkout's indexing on the same pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def write_random_topk_sae(folder: Path, d_in: int, d_sae: int = 2048, k: int = 32) -> Path:
    """A random-weight TopK SAE in sae-lens's folder format (what `core.model.sae.load_sae` and sae-lens load)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in**0.5
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"W_enc": W_enc.contiguous(), "W_dec": W_enc.T.contiguous(), "b_enc": torch.zeros(d_sae),
               "b_dec": torch.zeros(d_in)}, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": "topk", "d_in": d_in, "d_sae": d_sae, "k": k, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "rescale_acts_by_decoder_norm": False,
           "reshape_activations": "none", "metadata": {"sae_lens_version": "6.0.0"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def subset(data: Path, n: int, out: Path) -> Path:
    """The first `n` valid pairs of `data`, their source lines copied unchanged."""
    from core.data.ingest import raw_records, read_pairs

    pairs = read_pairs(data, skip_invalid=True, limit=n).pairs
    raw = raw_records(data)
    out.write_bytes(b"".join(raw[p.source_index] + b"\n" for p in pairs))
    return out


def catalogue_with(sae_folder: Path, config_dir: Path) -> str:
    """Name of a local catalogue SAE entry for `sae_folder` on the default model (a temporary user file)."""
    from core.model.catalog import load_catalog

    model = load_catalog().model(None)
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "models.toml").write_text(
        f'[saes.bench-topk]\nmodel = "{model.name}"\nlayer = {model.layer}\nsource = "local"\npath = "{sae_folder}"\n'
    )
    import core.model.catalog

    core.model.catalog._cached.cache_clear()
    return "bench-topk"


def time_index(data: Path, ws: Path, sae: str, max_tokens: int | None) -> dict:
    from core.index.build import IndexSettings, index_dataset

    t0 = time.perf_counter()
    r = index_dataset(data, ws, sae=sae, settings=IndexSettings(max_tokens=max_tokens))
    return {"wall_s": time.perf_counter() - t0, "loop_s": r.seconds, "tokens": r.tokens, "pairs": r.n_new,
            "tok_per_s": r.tokens / r.seconds if r.seconds else 0.0}


@torch.inference_mode()
def plain(model, rows_batches, layer: int, pad: int, device: str = "cpu") -> int:
    """The plain loop: one padded batch of (prompt, reply) rows at a time; returns reply tokens read."""
    n = 0
    for rows in rows_batches:
        L = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((len(rows), L), pad)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for i, (p, r) in enumerate(rows):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            mask[i, : len(p) + len(r)] = 1
        out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        hs = out.hidden_states[layer + 1]  # (rows, L, d_model)
        n += sum(len(hs[i, len(p) : len(p) + len(r)]) for i, (p, r) in enumerate(rows))
    return n


def sorted_row_batches(rows: list, budget: int) -> list[list]:
    rows = sorted(rows, key=lambda pr: len(pr[0]) + len(pr[1]))
    out, cur = [], []
    for row in rows:
        if cur and (len(cur) + 1) * (len(row[0]) + len(row[1])) > budget:
            out.append(cur)
            cur = []
        cur.append(row)
    return out + [cur] if cur else out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--data", default=str(DATA / "ultrafeedback-1k.jsonl"))
    ap.add_argument("--max-tokens", type=int, default=None, help="reply cap (default: whole replies)")
    ap.add_argument("--plain-batch", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--index-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-index-"))
    os.environ["DATADEBUG_CONFIG_DIR"] = str(tmp / "config")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from core.model.catalog import load_catalog
    from core.model.store import pull_model

    entry = load_catalog().model(None)
    pull_model(entry)
    data = subset(Path(args.data), args.pairs, tmp / "pairs.jsonl")
    sae_folder = write_random_topk_sae(tmp / "sae", d_in=576)
    sae = catalogue_with(sae_folder, tmp / "config")
    if args.index_only:
        time_index(subset(Path(args.data), 2, tmp / "warm.jsonl"), tmp / "warm", sae, args.max_tokens)  # imports, caches
        r = time_index(data, tmp / "ws", sae, args.max_tokens)
        print(f"index_dataset, {r['pairs']} pairs of {Path(args.data).name}, max_tokens {args.max_tokens}: "
              f"{r['tokens']:,} tokens, loop {r['loop_s']:.1f}s ({r['tok_per_s']:.0f} tok/s), call {r['wall_s']:.1f}s")
        print(json.dumps({"bench": "index-only", "max_tokens": args.max_tokens, **r}))
        return

    from transformers import AutoModelForCausalLM

    from core.model.lm import ResidualReader, plan_batches
    from core.index.readout import IndexSettings, read_batch
    from core.model.sae import load_sae
    from core.model.store import model_dir

    reader = ResidualReader.from_entry(entry)
    full = AutoModelForCausalLM.from_pretrained(model_dir(entry), dtype=torch.float32).eval()
    sae_model = load_sae(sae_folder)
    settings = IndexSettings(max_tokens=args.max_tokens, batch_tokens=args.batch_tokens)
    from core.data.ingest import read_pairs

    pairs = read_pairs(data).pairs
    toks = [reader.tokenize(p, args.max_tokens) for p in pairs]
    n_tok = sum(t.n_tokens for t in toks)
    n_reply = sum(len(t.chosen_ids) + len(t.rejected_ids) for t in toks)
    longest = max(max(len(t.chosen_ids), len(t.rejected_ids)) for t in toks)
    print(f"{len(pairs)} pairs of {Path(args.data).name}, whole replies' longest {longest} tokens; {n_tok:,} tokens "
          f"(prompt once + both replies), {n_reply:,} reply tokens; torch threads {torch.get_num_threads()}")
    rows = [(t.prompt_ids, ids) for t in toks for ids in (t.chosen_ids, t.rejected_ids)]
    file_order = [rows[s : s + 2 * args.plain_batch] for s in range(0, len(rows), 2 * args.plain_batch)]
    by_length = sorted_row_batches(rows, args.batch_tokens)
    batches = plan_batches(toks, args.batch_tokens)

    # warm-up every path on a few pairs
    plain(full, [rows[:4]], entry.layer, reader.pad_id)
    read_batch(reader, sae_model, toks[:2], settings)
    time_index(subset(Path(args.data), 2, tmp / "warm.jsonl"), tmp / "warm", sae, args.max_tokens)

    times = {}
    t0 = time.perf_counter()
    assert plain(full, file_order, entry.layer, reader.pad_id) == n_reply
    times["plain"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches:
        read_batch(reader, sae_model, b, settings)
    times["engine"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert plain(full, by_length, entry.layer, reader.pad_id) == n_reply
    times["plain-sorted"] = time.perf_counter() - t0
    idx = time_index(data, tmp / "ws", sae, args.max_tokens)
    assert idx["tokens"] == n_tok
    times["index"] = idx["loop_s"]

    for name, t in times.items():
        print(f"{name:>13}: {t:7.1f}s  {n_tok / t:7.0f} tok/s   plain / {name}: {times['plain'] / t:5.2f}x"
              f"   plain-sorted / {name}: {times['plain-sorted'] / t:5.2f}x")
    print(f"(index_dataset call, model + SAE load included: {idx['wall_s']:.1f}s)")
    print(json.dumps({"bench": "index", "pairs": len(pairs), "data": Path(args.data).name, "tokens": n_tok,
                      "max_tokens": args.max_tokens, "threads": torch.get_num_threads(), "seconds": times,
                      "index_call_s": idx["wall_s"]}))


if __name__ == "__main__":
    main()
