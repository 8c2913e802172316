"""Benchmark: does the prediction hold when DPO is run for real? Run on demand; prints its numbers.

    .venv/bin/python tests/bench/bench_validate.py [--work DIR] [--pairs 128] [--epochs 3] ...

Data: the first `--pairs` short real HH-RLHF pairs (../shared/data, prompt + both replies under
`--max-chars` characters), with goblin sentences planted by `core.checks.goblin.inject_goblins` in `--rate`
(5%) of the chosen replies. The copy is indexed with the catalogue SAE of the embedded model
(SmolLM2-135M, layer 15; trained on first use, reused from the store).

Experiment 1, R² of predicted vs actual: DPO (full fine-tuning) on the cleaned set (every pair
but those datadebug flags), then `core.checks.validate.validate` on `--heldout` held-out HH prompts (pairs
after the training ones, never trained on) and, for comparison, on the training prompts themselves
and with seeded sampling instead of greedy decoding.

Experiment 2, the goblin loop: the goblin feature and the pairs it flags come from
`core.checks.goblin.evaluate_goblins` (no ground truth used) and are reported; `--mark flagged` marks those
pairs, `--mark injected` (default) the planted ones. DPO
on the poisoned set (all pairs) and on the cleaned set (`exclude_marked`), same settings; the goblin
mention rate is measured in replies to `--unrelated` UltraFeedback prompts, greedy and sampled, and
so is the probe lift (how much likelier each run makes goblin sentences than the base model does,
against goblin-free control sentences; `core.checks.validate.PROBES`).

Every stage is kept in --work and skipped (or resumed) when run again. Results: --work/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"
HH = DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
UF = DATA / "ultrafeedback-1k.jsonl"


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def short(pairs, max_chars: int):
    return [p for p in pairs if len(p.prompt_text) + len(p.chosen) + len(p.rejected) < max_chars]


def build_data(work: Path, args) -> dict:
    """The poisoned training copy, held-out HH prompts, unrelated UltraFeedback prompts."""
    from core.checks.goblin import inject_goblins
    from core.data.ingest import raw_records, read_pairs

    out = {"train": work / "hh-goblin.jsonl", "heldout": work / "hh-heldout.jsonl",
           "unrelated": work / "uf-prompts.jsonl", "truth": work / "goblin-truth.json"}
    if all(p.exists() for p in out.values()):
        return out
    pairs = short(read_pairs(HH, skip_invalid=True).pairs, args.max_chars)
    train, heldout = pairs[: args.pairs], pairs[args.pairs : args.pairs + args.heldout]
    raw = raw_records(HH)
    subset = work / "hh-train-clean.jsonl"
    subset.write_bytes(b"".join(raw[p.source_index] + b"\n" for p in train))
    out["heldout"].write_bytes(b"".join(raw[p.source_index] + b"\n" for p in heldout))
    gd = inject_goblins(subset, out["train"], args.rate, seed=args.seed)
    out["truth"].write_text(json.dumps({"injected": gd.injected, "rate": args.rate}))
    uf = short(read_pairs(UF, skip_invalid=True).pairs, 4000)[: args.unrelated]
    out["unrelated"].write_text("".join(json.dumps({"prompt": list(p.prompt)}) + "\n" for p in uf))
    return out


def train(data: Path, out: Path, args, exclude_marked: Path | None = None):
    from core.train.dpo import DPOConfig
    from core.checks.validate import train_on_dataset

    cfg = DPOConfig(
        beta=args.beta, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
        max_length=args.max_length, max_prompt_length=args.max_length // 2, save_every=10,
    )
    start = time.perf_counter()

    def progress(s):
        if s.step % 5 == 0 or s.step == s.total_steps:
            log(f"  {out.name} step {s.step}/{s.total_steps} loss {s.loss:.4f} acc {s.reward_accuracy:.2f} "
                f"margin {s.reward_margin:+.3f} ({time.perf_counter() - start:.0f}s)")

    r = train_on_dataset(data, out, cfg, exclude_marked=exclude_marked, progress=progress)
    log(f"trained {out.name}: {r.n_pairs} pairs, {r.steps} steps, loss {r.first_loss} -> {r.loss}, "
        f"reward acc {r.reward_accuracy}, {r.seconds:.0f}s")
    return r


def run_validation(ws: Path, trained: Path, name: str, prompts: Path, n: int, args, **decoding):
    from core.checks.validate import Decoding, ValidationReport, validate

    plot = trained / f"{name}.png"
    cached = plot.with_suffix(".json")
    if cached.exists():
        return json.loads(cached.read_text())
    d = Decoding(max_new_tokens=args.max_new_tokens, seed=args.seed, **decoding)
    report: ValidationReport = validate(ws, trained, prompts=prompts, n_prompts=n, decoding=d,
                                        top_k=args.top_k, plot=plot)
    return report.to_json()


def summary(r: dict) -> dict:
    keep = ("r2", "spearman", "n_features", "n_prompts", "n_replies", "actual_reliability", "plot")
    out = {k: r[k] for k in keep}
    out["top_k"] = {k: r["top_k"][k] for k in ("n_features", "r2", "spearman", "slope")}
    out["nonzero"] = {k: r["nonzero"][k] for k in ("n_features", "r2", "spearman")}
    out["behaviour"] = r["behaviour"]
    out["probes"] = {k: round(v["lift"], 3) for k, v in r.get("probes", {}).items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/datadebug-bench-validate"))
    ap.add_argument("--pairs", type=int, default=128, help="training pairs (before cleaning)")
    ap.add_argument("--heldout", type=int, default=96, help="held-out HH prompts")
    ap.add_argument("--unrelated", type=int, default=64, help="UltraFeedback prompts for goblin rates")
    ap.add_argument("--max-chars", type=int, default=1200)
    ap.add_argument("--rate", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--index-max-tokens", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy box)")
    ap.add_argument("--only", choices=("clean", "poisoned"), default=None, help="train one run only")
    ap.add_argument("--mark", choices=("injected", "flagged"), default="injected",
                    help="which pairs the cleaned run leaves out")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from core.model.catalog import load_catalog
    from core.checks.goblin import evaluate_goblins
    from core.index.build import IndexSettings, index_dataset
    from core.data.marks import Marks
    from core.analysis.shifts import Analysis
    from core.model.store import sae_dir, sae_ready
    from core.data.workspace import Workspace

    cat = load_catalog()
    sae_entry = cat.sae(None, cat.model(None))
    if not sae_ready(sae_entry):
        sys.exit(f"the catalogue SAE {sae_entry.name} is not trained yet: run `datadebug demo` first")
    quality = json.loads((sae_dir(sae_entry) / "quality.json").read_text())
    args.work.mkdir(parents=True, exist_ok=True)
    results_path = args.work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results["sae"] = {"name": sae_entry.name, **{k: quality[k] for k in ("fvu", "l0", "dead_fraction", "d_sae")}}

    def save():
        results_path.write_text(json.dumps(results, indent=1))

    files = build_data(args.work, args)
    injected = set(json.loads(files["truth"].read_text())["injected"])
    ws = args.work / "ws"
    t = time.perf_counter()
    r = index_dataset(files["train"], ws, settings=IndexSettings(max_tokens=args.index_max_tokens))
    log(f"indexed {r.n_pairs} pairs ({r.n_new} new) in {time.perf_counter() - t:.0f}s")

    # Experiment 2, step 1: what datadebug flags (no ground truth used), then the marks: the flagged
    # pairs with --mark flagged, the injected ones with --mark injected (the default: the catalogue
    # SAE never saw a goblin, and its "goblin feature" may flag nothing of use; see the results).
    analysis = Analysis(Workspace(ws))
    goblin = evaluate_goblins(analysis, injected, seed=args.seed)
    flagged = goblin["sae_feature"].get("flagged", [])
    marks = Marks(Workspace(ws))
    wanted = set(flagged if args.mark == "flagged" else injected)
    if marks.marked_set() != wanted:
        if marks.marked_set():
            marks.unmark(marks.marked_set(), reason="bench: reset")
        marks.mark(wanted, reason=f"bench: {args.mark}", scope=f"feature {goblin['goblin_feature']}",
                   features=[goblin["goblin_feature"]] if goblin["goblin_feature"] is not None else [])
    results["goblin_detection"] = {
        "n_pairs": analysis.n, "n_injected": len(injected), "goblin_feature": goblin["goblin_feature"],
        "label": goblin["goblin_feature_label"], "rank": goblin["goblin_feature_rank"],
        "flagged": flagged, "precision": goblin["sae_feature"]["precision"],
        "recall": goblin["sae_feature"]["recall"], "marked": sorted(marks.marked_set()),
    }
    log("goblin detection:", json.dumps({k: v for k, v in results["goblin_detection"].items() if k != "flagged"}))
    save()

    runs = {"clean": ws, "poisoned": None}
    for name in ("clean", "poisoned"):
        if args.only and name != args.only:
            continue
        out = args.work / f"run-{name}"
        tr = train(files["train"], out, args, exclude_marked=runs[name])
        results.setdefault("runs", {})[name] = {"train": asdict(tr)}
        save()
        res = results["runs"][name]
        log(f"validating {name}")
        res["heldout_greedy"] = summary(run_validation(ws, out, "heldout_greedy", files["heldout"], args.heldout, args))
        log(f"  {name} held-out greedy: {json.dumps(res['heldout_greedy'])}")
        save()
        res["unrelated_greedy"] = summary(run_validation(ws, out, "unrelated_greedy", files["unrelated"], args.unrelated, args))
        log(f"  {name} unrelated greedy: {json.dumps(res['unrelated_greedy'])}")
        save()
        res["unrelated_sampled"] = summary(run_validation(
            ws, out, "unrelated_sampled", files["unrelated"], args.unrelated, args, temperature=1.0, samples=4))
        log(f"  {name} unrelated sampled x4: {json.dumps(res['unrelated_sampled'])}")
        save()
        if name == "clean":
            res["heldout_sampled"] = summary(run_validation(
                ws, out, "heldout_sampled", files["heldout"], args.heldout, args, temperature=1.0, samples=4))
            log(f"  {name} held-out sampled x4: {json.dumps(res['heldout_sampled'])}")
            res["train_prompts_greedy"] = summary(run_validation(
                ws, out, "train_prompts_greedy", files["train"], args.pairs, args))
            log(f"  {name} training prompts greedy: {json.dumps(res['train_prompts_greedy'])}")
            save()
    log("results:", results_path)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
