"""Per-reply summary cost against SAE width: the old dense path vs the sparse on-device one.

For random-weight TopK and JumpReLU SAEs on SmolLM2's d_model (576) at 2,048, 16,384 and 65,536
features, and a 256-token and a long reply (random activations), times

    encode   the SAE encode of the reply, sparse (`SparseAutoencoder.encode_sparse`): the work any
             path must do
    new      `core.index.summary.summarise_segments` on those sparse codes (what indexing runs now)
    old      the path before: dense encode -> `.cpu()` -> the dense `summarise_reply` (kept verbatim
             as `core.index.summary.summarise_reply`, the reference); its summary part is reported apart
             from its dense encode

and checks the two summaries agree. Target: at 65,536 features the new summary costs < 10% of the
encode. Best of --repeats runs (this machine is shared and noisy), in one process.

    .venv/bin/python tests/bench/bench_summary.py [--threads 1] [--long 1024] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from core.model.sae import SAEConfig, SparseAutoencoder
from core.index.summary import summarise_reply as old_summarise_reply  # unchanged since d20707a: the reference
from core.index.summary import summarise_segments


def random_sae(
    kind: str, d_in: int, d_sae: int, k: int, device: str, sample: torch.Tensor | None = None, seed: int = 0
) -> SparseAutoencoder:
    """A random-weight TopK SAE, or a JumpReLU one whose one threshold lets ~k features fire per token
    of `sample` (n, d_in) activations (default: standard normal ones; b_dec is their mean)."""
    g = torch.Generator().manual_seed(seed)
    W_enc = (torch.randn(d_in, d_sae, generator=g) / d_in**0.5).to(device)
    sample = (torch.randn(256, d_in, generator=g) if sample is None else sample[:256]).float().to(device)
    b_dec = sample.mean(0) if kind == "jumprelu" else torch.zeros(d_in, device=device)
    w = {"W_enc": W_enc, "W_dec": W_enc.T.contiguous(), "b_dec": b_dec, "b_enc": torch.zeros(d_sae, device=device)}
    if kind == "jumprelu":
        pre = ((sample - b_dec) @ W_enc).flatten()  # (256 * d_sae,)
        t = pre.kthvalue(int(len(pre) * (1 - k / d_sae))).values
        w["threshold"] = torch.full((d_sae,), float(t), device=device)
    cfg = SAEConfig(architecture=kind, d_in=d_in, d_sae=d_sae, k=k if kind == "topk" else 0)
    return SparseAutoencoder(cfg, w)


def timed(fn, repeats: int, device: str) -> tuple[float, object]:
    fn()  # warm-up
    times, out = [], None
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.min(times)), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--widths", type=int, nargs="+", default=[2048, 16_384, 65_536])
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help="reply lengths (default: 256 and --long)")
    ap.add_argument("--long", type=int, default=1024)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=576)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lengths = args.lengths or [256, args.long]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, d_model {args.d_model}, k ~{args.k}; "
          "milliseconds per reply (best of %d: the machine is shared)" % args.repeats)
    print(f"{'kind':>8} {'d_sae':>7} {'tokens':>6} | {'encode':>8} {'new summ':>8} {'new/enc':>7} | "
          f"{'old dense enc':>13} {'old summ':>8} {'old/enc':>7} | {'old total/new total':>18}")
    results = []
    for kind in ("topk", "jumprelu"):
        for d_sae in args.widths:
            sae = random_sae(kind, args.d_model, d_sae, args.k, args.device)
            for T in lengths:
                x = torch.randn(T, args.d_model, generator=torch.Generator().manual_seed(T)).to(args.device)
                seg, pos = torch.zeros(T, dtype=torch.long), torch.arange(T)
                t_enc, codes = timed(lambda: sae.encode_sparse(x), args.repeats, args.device)
                t_new, new = timed(lambda: summarise_segments(codes, seg, pos, [T], d_sae, 3)[0], args.repeats, args.device)
                t_dense, dense = timed(lambda: sae.encode(x).cpu(), args.repeats, args.device)
                t_old, old = timed(lambda: old_summarise_reply(dense, 3), args.repeats, "cpu")
                for key in ("feat", "freq", "tok_feat", "tok_pos", "tok_val"):
                    assert np.array_equal(new[key], old[key]), (kind, d_sae, T, key)
                assert np.allclose(new["mean"], old["mean"], rtol=1e-5, atol=1e-6)
                row = dict(kind=kind, d_sae=d_sae, tokens=T, encode_ms=t_enc * 1e3, new_summary_ms=t_new * 1e3,
                           old_dense_encode_ms=t_dense * 1e3, old_summary_ms=t_old * 1e3,
                           l0=len(codes.val) / T, new_over_encode=t_new / t_enc, old_over_encode=t_old / t_enc,
                           old_total_over_new_total=(t_dense + t_old) / (t_enc + t_new))
                results.append(row)
                print(f"{kind:>8} {d_sae:>7} {T:>6} | {row['encode_ms']:8.2f} {row['new_summary_ms']:8.2f} "
                      f"{row['new_over_encode']:7.1%} | {row['old_dense_encode_ms']:13.2f} {row['old_summary_ms']:8.2f} "
                      f"{row['old_over_encode']:7.1%} | {row['old_total_over_new_total']:17.2f}x", flush=True)
    print(json.dumps({"bench": "summary", "device": args.device, "threads": torch.get_num_threads(), "rows": results}))


if __name__ == "__main__":
    main()
