"""The goblin test on real data: can datadebug find a behaviour planted in 5% and in 1% of chosen replies?

Data: the first 500 valid pairs of HH-RLHF harmless-base test (../shared/data), replies read up to 128
tokens. For each rate, `run_goblin` plants goblin sentences in the chosen replies of that fraction of
pairs (seed 0), trains the embedded model's SAE recipe (d_sae 2048, k 32, layer 15) on the default
corpus (bundled sample + the goblin copy), indexes the copy and measures recovery. Then `compare`
(SAE vs embedding clusters, with the planted pairs as truth) on the 5% workspace.

    .venv/bin/python tests/bench/bench_goblin.py [--data FILE] [--limit 500] [--rates 0.05 0.01] [--out DIR]

On 2 shared CPU cores one rate takes 30-60 minutes (activations for the SAE, its training, indexing);
a rerun with the same --out reuses the trained SAE and the workspace.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from core.analysis.clusters import compare_clusterings
from core.checks.goblin import goblin_paths, run_goblin
from core.analysis.shifts import Analysis
from core.data.workspace import Workspace

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def rows(r: dict) -> list[tuple]:
    rank = r["goblin_feature_rank"]
    feat = f"feature {r['goblin_feature']}, rank {rank if rank is not None else '-'}"
    out = [
        (r["rate"], "SAE feature, peak delta", feat, r["sae_feature"]["precision"], r["sae_feature"]["recall"]),
        (r["rate"], "SAE feature, mean delta", feat, r["sae_feature_mean"]["precision"], r["sae_feature_mean"]["recall"]),
        (r["rate"], f"SAE cluster (k={r['sae_cluster']['k']})", "-", r["sae_cluster"]["precision"], r["sae_cluster"]["recall"]),
        (r["rate"], f"embedding cluster (k={r['embedding_cluster']['k']})", "-",
         r["embedding_cluster"]["precision"], r["embedding_cluster"]["recall"]),
    ]
    o = r["oracle_feature"]
    out.append((r["rate"], "oracle feature (diagnosis)", f"feature {o['feature']}, rank {o['rank'] or '-'}",
                o["precision"], o["recall"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--limit", type=int, default=500)
    ap.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.01])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", type=Path, default=None, help="Folder for workspaces (default: a temporary one)")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="goblin-bench-"))
    out.mkdir(parents=True, exist_ok=True)

    table, results = [], []
    for rate in args.rates:
        ws = out / f"rate-{rate:g}"
        start = time.perf_counter()
        # "the first 500 valid pairs": the HH file has an empty reply at line 87, which since strict
        # ingestion stops a run that does not skip it
        r = run_goblin(args.data, ws, rate, limit=args.limit, max_tokens=args.max_tokens, skip_invalid=True,
                       progress=lambda p: p.stage != "index" and print(f"  [{p.stage}] {p.message}", flush=True))
        r["seconds"] = time.perf_counter() - start
        r["sae_feature"].pop("flagged", None)
        results.append(r)
        table += rows(r)
        print(json.dumps(r, indent=1), flush=True)

    print(f"\n{args.data.name}, first {args.limit} valid pairs, max {args.max_tokens} reply tokens")
    print(f"{'rate':>5}  {'method':<30} {'feature / rank':<24} {'precision':>9} {'recall':>7}")
    for rate, method, feat, p, rc in table:
        print(f"{rate:>5.0%}  {method:<30} {feat:<24} {p:>9.2f} {rc:>7.2f}")
    for r in results:
        print(f"{r['rate']:.0%}: goblin feature {r['goblin_feature']} ({r['goblin_feature_label']}), AP "
              f"{r['goblin_feature_ap'] or 0:.2f}, specificity {r['goblin_feature_specificity'] or 0:.2f}; predicted shift "
              f"{r['shift_before']:+.5f} -> {r['shift_after']:+.5f} without its flagged pairs; {r['seconds']:.0f}s")

    ws = out / f"rate-{args.rates[0]:g}"
    truth = set(json.loads(goblin_paths(ws)["truth"].read_text())["planted"])
    c = compare_clusterings(Analysis(Workspace(ws)), truth=truth)
    print(f"\ncompare on {ws.name} (k={c['k']}): ARI {c['ari']:.3f}, NMI {c['nmi']:.3f}")
    print(f"  SAE:       best cluster precision {c['sae']['cluster_precision']:.2f} recall {c['sae']['cluster_recall']:.2f}; "
          f"best feature {c['sae']['feature']} precision {c['sae']['feature_precision']:.2f} recall {c['sae']['feature_recall']:.2f}")
    print(f"  embedding: best cluster precision {c['embedding']['cluster_precision']:.2f} recall {c['embedding']['cluster_recall']:.2f}")


if __name__ == "__main__":
    main()
