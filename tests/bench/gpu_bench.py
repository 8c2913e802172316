"""GPU benchmark: an 8B-shape Llama + a 65,536-feature SAE, our read + summaries vs a plain forward loop.

Run from the repository root on a GPU box (no network, no sae_lens / lancedb needed):

    python3 tests/bench/gpu_bench.py [--peak 989e12] [--seconds 25] [--batch-tokens 32768]
    python3 tests/bench/gpu_bench.py --tiny        # a small shape on CPU in seconds, to test the script

What it does, in one process:
  1. Builds a random-weight Llama with Llama-3.1-8B's shape (32 layers, d_model 4096, 32 heads / 8 KV
     heads, FFN 14,336, vocab 128,256) straight on the device in bf16 (nothing materialised on the CPU).
  2. plain: `model(input_ids, attention_mask, output_hidden_states=True)` of the full 32-layer model
     over prompt+chosen and prompt+rejected rows, length-sorted batches under the same padded-token
     budget (a strong baseline: sorted rows pad little). The plain loop runs first; the model is then
     cut after block 19 (Goodfire's SAE layer) by `core.model.lm.ResidualReader`, so both use the same
     weights and the 32-layer model never shares the GPU with a second copy (bf16 weights: 16 GB).
  3. forward: the truncated, prompt-shared forward alone (`ResidualReader.forward`).
  4. ours-topk / ours-jumprelu: `core.index.readout.read_batch` (the same call indexing and Ray workers
     make): truncated forward, SAE encode (TF32 matmul, float32 weights) straight to sparse codes,
     per-reply and per-prompt summaries on the GPU, sparse results to the host, token strings.
     Random 65,536-feature SAEs: TopK (k=64) and JumpReLU (one threshold set so ~64 features fire
     per token on this model's activations).
  Each phase runs whole batches, in a seeded shuffled order, for --seconds, after a warm-up batch;
  torch.cuda.synchronize() closes every batch.

FLOP count (real tokens only, padding excluded; per layer; P = prompt, R = a reply, d_head x heads = d):
  linear:    2 x params-touched x tokens, params per block = d(d + 2 d_kv) + d^2 + 3 d ffn
             (q, k, v, o, gate, up, down); the LM head adds 2 d vocab per token (plain only)
  attention: 4 x d x keys per query token (QK^T and AV), causal: a row of n tokens has n(n+1)/2
             keys in all; a reply read after its cached prompt has R P + R(R+1)/2
  SAE:       2 x d x d_sae per encoded token (reported apart; it runs in TF32, not bf16)
  ours reads each prompt once (the KV cache serves both replies) through 20 blocks; plain reads it
  twice through 32 blocks and the head. Share of peak = model FLOP/s / --peak (default 989e12: H100
  SXM dense bf16; H200 has the same peak).

Dolci projection: 260,000 pairs / ours' pairs per second. Lengths are drawn per pair from
log-normals with means prompt 300, chosen 500, rejected 500 tokens (sigma 0.9 / 1.0 / 1.0, each
8..4,096) and fitted to an 8,192-token context as indexing does (`core.model.lm.fit_pair`). Why those:
our UltraFeedback sample measures (SmolLM2 tokenizer, chat template included) prompt 206, chosen
290, rejected 256 mean tokens, log-sd 0.95 / 1.49 / 1.33; Dolci-Instruct-DPO's replies come from
2025 models (Qwen3 family), which answer at more length, so ~500 is assumed. Time scales roughly
linearly with tokens per pair: rescale with --prompt-mean / --reply-mean. The writer stage of
indexing (MiniLM embeddings, LanceDB appends) runs in its own thread and is not timed here.

Prints one JSON summary line at the end.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script from a bare copy of the repo
sys.path.insert(1, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from bench_index import plain, sorted_row_batches  # noqa: E402
from bench_summary import random_sae  # noqa: E402
from core.model.lm import MAX_CONTEXT, ResidualReader, TokenizedPair, fit_pair, plan_batches  # noqa: E402
from core.index.readout import IndexSettings, read_batch  # noqa: E402


@dataclass(frozen=True)
class Shape:
    n_layers: int
    read_layer: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    vocab: int
    d_sae: int
    k: int


LLAMA_8B = Shape(32, 19, 4096, 32, 8, 14336, 128_256, 65_536, 64)
TINY = Shape(6, 3, 64, 4, 2, 172, 512, 1024, 16)


class StubTokenizer:
    """What the reader needs of a tokenizer when the ids are made up: pad id, per-token decode, and a
    chat template with a fixed 3-token opening (so the prompt-opening skip runs as it does for real)."""

    pad_token_id = 0
    chat_template = "stub"  # core.train.rollout.chat_prompt_ids takes the template path

    def decode(self, ids):
        return f"<{ids[0]}>"

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True):
        return [1, 2, 3, 10 + len(messages[-1]["content"])]


def build_model(shape: Shape, device: str, dtype: torch.dtype):
    """A random-weight LlamaForCausalLM of `shape`, created on `device` in `dtype`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.d_model, intermediate_size=shape.ffn,
        num_hidden_layers=shape.n_layers, num_attention_heads=shape.n_heads,
        num_key_value_heads=shape.n_kv_heads, max_position_embeddings=131_072,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def synthetic_pairs(n: int, shape: Shape, means: tuple[float, float, float], seed: int = 0) -> list[TokenizedPair]:
    """`n` pairs of random token ids, lengths from log-normals with the given means, fitted to the context."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    sigmas = (0.9, 1.0, 1.0)
    out = []
    for i in range(n):
        lens = [min(4096, max(8, int(rng.lognormvariate(_mu(m, s), s)))) for m, s in zip(means, sigmas)]
        ids = torch.randint(5, shape.vocab, (sum(lens),), generator=g).tolist()
        p, c, r = ids[: lens[0]], ids[lens[0] : lens[0] + lens[1]], ids[lens[0] + lens[1] :]
        out.append(fit_pair(i, [1, 2, 3] + p, c, r, None, MAX_CONTEXT))
    return out


def _mu(mean: float, sigma: float) -> float:
    import math

    return math.log(mean) - sigma**2 / 2


# -- FLOPs ------------------------------------------------------------------------------------------


def block_params(s: Shape) -> int:
    d_kv = s.d_model // s.n_heads * s.n_kv_heads
    return s.d_model * (s.d_model + 2 * d_kv) + s.d_model * s.d_model + 3 * s.d_model * s.ffn


def ours_flops(pairs: list[TokenizedPair], s: Shape) -> tuple[float, float]:
    """(model FLOPs, SAE encoder FLOPs) of reading `pairs` through blocks 0..read_layer, prompt once."""
    layers = s.read_layer + 1
    lin = tokens = keys = 0
    for t in pairs:
        p = len(t.prompt_ids)
        n = p + len(t.chosen_ids) + len(t.rejected_ids)
        tokens += n
        keys += p * (p + 1) // 2 + sum(R * p + R * (R + 1) // 2 for R in (len(t.chosen_ids), len(t.rejected_ids)))
    lin = 2 * block_params(s) * tokens * layers
    attn = 4 * s.d_model * keys * layers
    sae = 2 * s.d_model * s.d_sae * (tokens - 3 * len(pairs))  # the 3-token template opening is not encoded
    return float(lin + attn), float(sae)


def plain_flops(rows: list[tuple[list[int], list[int]]], s: Shape) -> float:
    """FLOPs of the full model + LM head over (prompt, reply) rows, each read as one sequence."""
    tokens = sum(len(p) + len(r) for p, r in rows)
    keys = sum((len(p) + len(r)) * (len(p) + len(r) + 1) // 2 for p, r in rows)
    return float(2 * block_params(s) * tokens * s.n_layers + 4 * s.d_model * keys * s.n_layers
                 + 2 * s.d_model * s.vocab * tokens)


# -- timing -----------------------------------------------------------------------------------------


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_for(seconds: float, batches: list, step, device: str) -> tuple[float, list]:
    """Run `step` over whole batches until `seconds` pass (after one warm-up batch); returns
    (elapsed, the batches done)."""
    step(batches[0])
    sync(device)
    done = []
    t0 = time.perf_counter()
    for b in batches[1:]:
        step(b)
        sync(device)
        done.append(b)
        if time.perf_counter() - t0 >= seconds:
            break
    return time.perf_counter() - t0, done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true", help="small shape on CPU, seconds")
    ap.add_argument("--peak", type=float, default=989e12, help="peak dense bf16 FLOP/s of the card")
    ap.add_argument("--seconds", type=float, default=None, help="per timed phase (default 25; tiny 2)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="padded tokens per batch (default 32768; tiny 2048)")
    ap.add_argument("--pool", type=int, default=None, help="synthetic pairs to draw batches from")
    ap.add_argument("--prompt-mean", type=float, default=300)
    ap.add_argument("--reply-mean", type=float, default=500)
    ap.add_argument("--dolci-pairs", type=int, default=260_000)
    ap.add_argument("--skip-plain", action="store_true")
    args = ap.parse_args()
    shape = TINY if args.tiny else LLAMA_8B
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    seconds = args.seconds or (2.0 if args.tiny else 25.0)
    budget = args.batch_tokens or (2048 if args.tiny else 32_768)
    means = (args.prompt_mean, args.reply_mean, args.reply_mean)
    if args.tiny:
        means = tuple(m / 10 for m in means)
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, {shape}, batch budget {budget} tokens, {seconds:.0f}s per phase",
          flush=True)

    t0 = time.perf_counter()
    pairs = synthetic_pairs(args.pool or (400 if args.tiny else 6000), shape, means)
    model = build_model(shape, device, dtype)
    sync(device)
    print(f"model built in {time.perf_counter() - t0:.1f}s", flush=True)
    summary: dict = {"device": name, "torch": torch.__version__, "dtype": str(dtype), "shape": shape.__dict__,
                     "batch_tokens": budget, "peak_flops": args.peak, "seconds_per_phase": seconds,
                     "length_means": dict(zip(("prompt", "chosen", "rejected"), means))}
    rng = random.Random(1)
    phases: dict = {}

    def record(label, elapsed, done_pairs, model_flops, sae_flops=0.0):
        n_tok = sum(t.n_tokens for t in done_pairs)
        phases[label] = {
            "seconds": elapsed, "pairs": len(done_pairs), "pair_tokens": n_tok,
            "pairs_per_s": len(done_pairs) / elapsed, "tokens_per_s": n_tok / elapsed,
            "model_tflops": model_flops / elapsed / 1e12, "share_of_peak": model_flops / elapsed / args.peak,
            "sae_tflops": sae_flops / elapsed / 1e12,
            "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        }
        print(f"{label:>14}: {len(done_pairs)} pairs in {elapsed:.1f}s, {n_tok / elapsed:,.0f} tok/s, "
              f"{model_flops / elapsed / 1e12:.1f} model TFLOP/s ({model_flops / elapsed / args.peak:.1%} of peak)"
              + (f", SAE {sae_flops / elapsed / 1e12:.1f} TFLOP/s" if sae_flops else ""), flush=True)

    if not args.skip_plain:
        rows = [(t.prompt_ids, ids) for t in pairs for ids in (t.chosen_ids, t.rejected_ids)]
        row_batches = sorted_row_batches(rows, budget)
        rng.shuffle(row_batches)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        elapsed, done = run_for(seconds, row_batches, lambda b, m=model: plain(m, [b], shape.read_layer, 0, device), device)
        done_rows = [r for b in done for r in b]
        fl = plain_flops(done_rows, shape)
        # Rows are a random sample of the pool's; two rows make a pair, whose prompt counts once.
        n_pairs, tok = len(done_rows) / 2, sum(len(p) / 2 + len(r) for p, r in done_rows)
        phases["plain"] = {
            "seconds": elapsed, "rows": len(done_rows), "pairs": n_pairs, "pair_tokens": tok,
            "pairs_per_s": n_pairs / elapsed, "tokens_per_s": tok / elapsed,
            "model_tflops": fl / elapsed / 1e12, "share_of_peak": fl / elapsed / args.peak,
            "max_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        }
        print(f"{'plain':>14}: {len(done_rows)} rows ({n_pairs:.0f} pairs) in {elapsed:.1f}s, {tok / elapsed:,.0f} "
              f"pair-tok/s, {fl / elapsed / 1e12:.1f} model TFLOP/s ({fl / elapsed / args.peak:.1%} of peak)", flush=True)

    reader = ResidualReader(model, StubTokenizer(), shape.read_layer)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    batches = plan_batches(pairs, budget)
    rng.shuffle(batches)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    elapsed, done = run_for(seconds / 2, batches, reader.forward, device)
    done_pairs = [t for b in done for t in b]
    record("forward", elapsed, done_pairs, ours_flops(done_pairs, shape)[0])

    sample = reader.forward(batches[0])
    sample = sample.replies[sample.reply_mask][:256]  # (256, d_model) activations at the read layer
    settings = IndexSettings(max_tokens=None, batch_tokens=budget)
    for kind in ("topk", "jumprelu"):
        sae = random_sae(kind, shape.d_model, shape.d_sae, shape.k, device, sample=sample)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        elapsed, done = run_for(seconds, batches, lambda b, e=sae: read_batch(reader, e, b, settings), device)
        done_pairs = [t for b in done for t in b]
        record(f"ours-{kind}", elapsed, done_pairs, *ours_flops(done_pairs, shape))
        rows = read_batch(reader, sae, batches[0][:8], settings)  # features per token: a reply's sum of freq
        phases[f"ours-{kind}"]["l0_per_token"] = sum(float(r["chosen"]["freq"].sum()) for r in rows) / len(rows)
        del sae

    mean_pair = sum(t.n_tokens for t in pairs) / len(pairs)
    summary["mean_pair_tokens_read"] = mean_pair
    summary["phases"] = phases
    for kind in ("topk", "jumprelu"):
        ours = phases[f"ours-{kind}"]
        summary[f"dolci_minutes_{kind}"] = args.dolci_pairs / ours["pairs_per_s"] / 60
        if "plain" in phases:
            summary[f"ratio_vs_plain_{kind}"] = ours["pairs_per_s"] / phases["plain"]["pairs_per_s"]
    if "plain" in phases:
        summary["dolci_minutes_plain"] = args.dolci_pairs / phases["plain"]["pairs_per_s"] / 60
    summary["dolci_pairs"] = args.dolci_pairs
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
