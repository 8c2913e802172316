"""The large-scale validation, as one script: prepared here, run on a lent GPU, one JSON back.

    # here (needs sae-lens and lancedb): the inputs, in two folders that fit 64 MiB each
    .venv/bin/python tests/bench/gpu_validate.py prepare --inputs gpu-inputs
    # on the GPU (torch + transformers; gguf and platformdirs travel in gpu-inputs/a/site)
    PYTHONPATH=gpu-inputs/a/site python tests/bench/gpu_validate.py run --inputs gpu-inputs --out $OUT
    # both on this CPU in a few minutes, the same code path (what tests/unit/test_gpu_validate.py runs)
    .venv/bin/python tests/bench/gpu_validate.py tiny --work /tmp/gpu-tiny

Data: HH-RLHF harmless (../shared/data, all valid pairs) with goblin sentences planted in 5% of
the chosen replies (`core.checks.goblin.inject_goblins`); an SAE of the embedded recipe trained here on
that copy (so it has a goblin feature); the copy's first `--index-limit` pairs indexed here, from
which come the concepts (`core.analysis.structure.load_concepts`, grouped concepts only), the goblin feature
(`core.checks.goblin.goblin_detection`) and its flagging threshold (`core.checks.goblin_loop.flag_goblin_pairs`).
A seeded 10% of the pairs is held out (`core.train.training.split_holdout`). UltraFeedback gives the SFT
corpus (5% of its replies with a goblin sentence) and the unrelated prompts (`sft_and_unrelated`).

On the GPU (`run`), everything the prediction needs is recomputed from the pairs at full size with
a torch-only TopK encoder of the same SAE (`TopKSAE`; the CPU prediction of the indexed subset comes
along as a check), then:

  r2      for each data-order seed: DPO (full fine-tuning, bf16 autocast) on the training split,
          sampled replies (T = 1, common random numbers) before and after on the held-out prompts
          and on the unrelated prompts, read through the original model and the SAE, compared
          (`core.checks.validate.compare`): concepts and features, R² fitted and after one global scale,
          Spearman and slope with bootstrap CIs over prompts, the permutation null; mean and spread
          over seeds. Ablations on seed 0: greedy instead of sampled replies, and a quarter of the data.
  goblin  SFT on the goblin corpus, then DPO from the SFT model for each arm (poisoned, cleaned =
          minus the pairs flagged from the data, clean = minus the planted pairs, shape, steer,
          mask on the goblin feature); per model the goblin rate of sampled replies to unrelated
          prompts, probe lifts against the SFT model, held-out preference accuracy.

Results go to OUT/results.json after every unit of work (a timeout keeps what was done), with the
device, the settings and the seconds each phase took. `--budget-s` skips what would not finish.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
try:
    import tomllib  # noqa: F401
except ImportError:  # Python 3.10: core.model.catalog imports it, but the GPU run reads no catalogue
    import types

    sys.modules["tomllib"] = types.ModuleType("tomllib")
DATA = ROOT.parent / "shared" / "data"
HH = DATA / "hh-rlhf-harmless-base-test.jsonl.gz"
UF = DATA / "ultrafeedback-1k.jsonl"
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "chat_template.jinja", "special_tokens_map.json")
PART_A_GGUF_BYTES = 44 * 2**20  # the GGUF's first part rides with the SAE and the site packages
RESOLUTIONS = (1.0, 10.0, 30.0)  # Leiden resolutions of the concepts compared (1: the product's)


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)


# -- the SAE without sae-lens -------------------------------------------------------------------------


class TopKSAE:
    """An sae-lens TopK SAE folder (cfg.json + sae_weights.safetensors) read with torch alone:
    encode(x) = TopK_k(((x - b_dec) W_enc + b_enc) * |W_dec rows| if rescaled), ReLU'd, exactly
    as sae-lens's TopKSAE.encode for normalize_activations "none"."""

    def __init__(self, folder: Path, device="cpu"):
        import torch
        from safetensors.torch import load_file

        cfg = json.loads((Path(folder) / "cfg.json").read_text())
        if cfg.get("architecture") != "topk" or cfg.get("normalize_activations", "none") != "none":
            raise ValueError(f"{folder}: only TopK SAEs without activation normalisation are supported")
        w = load_file(str(Path(folder) / "sae_weights.safetensors"), device=str(device))
        self.W_enc = w["W_enc"].float()  # (d_in, d_sae)
        self.b_enc = w["b_enc"].float()
        self.W_dec = w["W_dec"].float()  # (d_sae, d_in)
        self.b_dec = w["b_dec"].float()
        self.k = int(cfg["k"])
        self.apply_b_dec = bool(cfg.get("apply_b_dec_to_input", True))
        self.scale = self.W_dec.norm(dim=-1) if cfg.get("rescale_acts_by_decoder_norm") else None
        self.d_sae = self.W_enc.shape[1]
        self.torch = torch

    def encode(self, x):
        """(tokens, d_in) -> (tokens, d_sae) float32."""
        torch = self.torch
        with torch.inference_mode():
            x = x.to(self.W_enc.device, torch.float32)
            pre = (x - self.b_dec * self.apply_b_dec) @ self.W_enc + self.b_enc  # (tokens, d_sae)
            if self.scale is not None:
                pre = pre * self.scale
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())


# -- prepare (here) -----------------------------------------------------------------------------------


def prepare(args) -> None:
    """Write the inputs of `run` into args.inputs/a and /b (each under 64 MiB), reusing args.work."""
    import dataclasses

    import numpy as np

    from core.model.catalog import SAEEntry, load_catalog
    from core.checks.goblin import goblin_detection, inject_goblins
    from core.checks.goblin_loop import flag_goblin_pairs, sft_and_unrelated
    from core.index.build import IndexSettings, index_dataset
    from core.data.ingest import read_pairs
    from core.train.rollout import ReplyStats
    from core.model.sae_train import train_catalog_sae
    from core.analysis.shifts import Analysis
    from core.model.store import model_dir, package_gguf
    from core.analysis.structure import Params, load_concepts
    from core.train.training import split_holdout
    from core.checks.validate import ConceptGroups, predict
    from core.data.workspace import Workspace

    work, inputs = Path(args.work), Path(args.inputs)
    work.mkdir(parents=True, exist_ok=True)
    progress = (lambda p: log(p.line())) if args.verbose else None
    copy_path = work / "hh-goblin.jsonl"
    if not copy_path.exists():
        gd = inject_goblins(args.data, copy_path, args.rate, seed=args.seed, limit=args.limit)
        (work / "goblin-truth.json").write_text(json.dumps({"injected": gd.injected, "rate": args.rate}))
    truth = json.loads((work / "goblin-truth.json").read_text())["injected"]
    pairs = read_pairs(copy_path).pairs
    catalog = load_catalog()
    entry = catalog.sae(None, catalog.model(None))
    sae_path = Path(args.sae) if args.sae else work / "sae"
    if not (sae_path / "cfg.json").exists():
        log(f"training the SAE on {len(pairs)} pairs of the goblin copy")
        train_catalog_sae(entry, catalog, extra_pairs=pairs, activation_tokens=args.activation_tokens,
                          out_dir=sae_path, progress=progress)
    local = SAEEntry(name="goblin-prep", model=entry.model, layer=entry.layer, source="local", path=str(sae_path))
    catalog = dataclasses.replace(catalog, saes={**catalog.saes, local.name: local})
    ws = work / "ws"
    log(f"indexing the first {args.index_limit} pairs")
    index_dataset(copy_path, ws, sae=local.name, catalog=catalog, limit=args.index_limit,
                  settings=IndexSettings(max_tokens=args.max_tokens), progress=progress)
    analysis = Analysis(Workspace(ws))
    detection = goblin_detection(analysis)
    feature = max(detection, key=lambda f: (detection[f].ap, detection[f].margin)) if detection else None
    flagged, threshold = flag_goblin_pairs(analysis, feature) if feature is not None else ([], float("inf"))
    # the product's concepts (Leiden resolution 1) and finer cuts: concept granularity is one of the
    # things that moves a concept-level R² (see tests/bench/README.md)
    groups = {res: ConceptGroups.from_concepts(load_concepts(Workspace(ws), params=Params(resolution=res)))
              for res in RESOLUTIONS}
    log(f"concepts per resolution {({r: len(g) for r, g in groups.items()})}; goblin feature {feature}")
    heldout = split_holdout([p.source_index for p in pairs], args.holdout, args.seed)[1]
    uf = read_pairs(args.sft_data, skip_invalid=True).pairs
    unrelated, sft, sft_poisoned = sft_and_unrelated(uf, args.unrelated, args.sft_examples, args.rate, args.seed)
    # the CPU prediction on the indexed training pairs: the GPU recomputes it, as a check
    rows = analysis.rows(sorted(set(analysis.source_index.tolist()) - set(heldout)))
    c_freq, r_freq = (m[rows] for m in analysis.frequencies())
    cpu = predict(ReplyStats(analysis.chosen[rows], c_freq, None), ReplyStats(analysis.rejected[rows], r_freq, None))

    a, b = inputs / "a", inputs / "b"
    shutil.rmtree(inputs, ignore_errors=True)
    (a / "model").mkdir(parents=True)
    b.mkdir(parents=True)
    for name in ("gguf", "platformdirs"):  # pure-python packages the GPU image may lack, with
        src = Path(__import__(name).__file__).parent  # their dist-info: transformers reads versions
        shutil.copytree(src, a / "site" / name, ignore=shutil.ignore_patterns("__pycache__"))
        for info in src.parent.glob(f"{name}-*.dist-info"):
            shutil.copytree(info, a / "site" / info.name)
    store = model_dir(catalog.model(None))
    for name in MODEL_FILES:
        if (store / name).exists():
            shutil.copy(store / name, a / "model" / name)
    shutil.copytree(sae_path, a / "sae", ignore=shutil.ignore_patterns("*.partial"))
    gguf = package_gguf(catalog.model(None))
    blob = gguf.read_bytes()
    (a / "gguf.part0").write_bytes(blob[:PART_A_GGUF_BYTES])
    (b / "gguf.part1").write_bytes(blob[PART_A_GGUF_BYTES:])
    shutil.copy(copy_path, b / "pairs.jsonl")
    (b / "sft.jsonl").write_text("".join(json.dumps({"prompt": list(p), "reply": r}) + "\n" for p, r in sft))
    (b / "unrelated.jsonl").write_text("".join(json.dumps({"prompt": list(p)}) + "\n" for p in unrelated))
    (b / "concepts.json").write_text(json.dumps({"by_resolution": {str(r): g.lists() for r, g in groups.items()}}))
    np.savez_compressed(b / "cpu_prediction.npz", source_index=analysis.source_index[rows],
                        fire=cpu.fire, mean=cpu.mean)
    meta = {
        "model": catalog.model(None).name, "gguf_file": gguf.name, "layer": local.layer,
        "max_tokens": args.max_tokens, "tau": 0.01, "heldout": heldout, "planted": truth,
        "goblin_feature": feature, "goblin_threshold": threshold, "flagged_cpu": flagged,
        "goblin_ap": detection[feature].ap if feature is not None else None,
        "index_limit": args.index_limit, "n_pairs": len(pairs),
        "n_concepts": {str(r): len(g) for r, g in groups.items()},
        "sft_poisoned": sft_poisoned, "rate": args.rate, "seed": args.seed,
        "sae_quality": json.loads((sae_path / "quality.json").read_text()) if (sae_path / "quality.json").exists() else None,
    }
    (b / "meta.json").write_text(json.dumps(meta, indent=1))
    for part in (a, b):
        size = sum(f.stat().st_size for f in part.rglob("*") if f.is_file())
        log(f"{part}: {size / 2**20:.1f} MiB")


# -- run (the GPU) ------------------------------------------------------------------------------------


def load_model(inputs: Path, device: str, model_dir: str | None):
    """The embedded model in float32 on `device` and its tokenizer: from `model_dir` (a float copy)
    when given, else from the GGUF rebuilt out of its two parts (transformers + gguf)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(inputs / "a" / "model")
    if model_dir:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    else:
        meta = json.loads((inputs / "b" / "meta.json").read_text())
        folder = Path(os.environ.get("TMPDIR", "/tmp")) / "gpu-validate-gguf"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / meta["gguf_file"]
        if not target.exists():
            with open(target.with_suffix(".tmp"), "wb") as f:
                for part in (inputs / "a" / "gguf.part0", inputs / "b" / "gguf.part1"):
                    f.write(part.read_bytes())
            target.with_suffix(".tmp").rename(target)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=target.name, dtype=torch.float32)
        model.hf_quantizer = None
    return model.to(device).eval(), tok


def inference_copy(model, device: str):
    """A copy for generation and reading: bf16 on CUDA (as indexing reads there), float32 on CPU."""
    import torch

    m = copy.deepcopy(model)
    return m.to(torch.bfloat16 if device.startswith("cuda") else torch.float32).eval()


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.monotonic(), seconds

    @property
    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


def run(args) -> dict:
    """The experiment (module docstring); returns and writes OUT/results.json."""
    import numpy as np
    import torch

    from core.train.dpo import DPOConfig, build_examples, pad_token_id, pair_logps, train_dpo
    from core.checks.goblin_loop import goblin_rate, preference_accuracy
    from core.data.ingest import Pair, read_pairs
    from core.train.interventions import DEFAULT_STRENGTH, Plan, intervention_for
    from core.model.lm import ResidualReader
    from core.train.rollout import (Decoding, behaviour_rates, generate_replies, probe_lifts, probe_logprobs, probe_sentences, read_reply_pairs)
    from core.model.chat import chat_prompt_ids
    from core.train.sft import SFTConfig, train_sft
    from core.checks.validate import ConceptGroups, compare, concept_agreement, nan_to_none, predict, summarise_seeds

    tiny = args.tiny
    inputs, out = Path(args.inputs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(args.scratch)  # checkpoints and models, outside OUT (only results.json goes back)
    scratch.mkdir(parents=True, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    budget = Budget(args.budget_s)
    results = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
               "torch": torch.__version__, "tiny": tiny, "errors": [], "seconds": {}}
    try:
        import transformers

        results["transformers"] = transformers.__version__
    except Exception:  # noqa: BLE001 - a version string is a nicety
        pass

    def save():
        (out / "results.json").write_text(json.dumps(nan_to_none(results), indent=1))

    def timed(name, fn):
        t = time.monotonic()
        try:
            return fn()
        except Exception as exc:  # keep going: one broken phase must not lose the others
            results["errors"].append({"phase": name, "error": repr(exc), "traceback": traceback.format_exc()[-3000:]})
            log(f"{name} failed: {exc!r}")
            return None
        finally:
            results["seconds"][name] = round(time.monotonic() - t, 1)
            save()

    meta = json.loads((inputs / "b" / "meta.json").read_text())
    layer, max_tokens, tau = meta["layer"], meta["max_tokens"], meta["tau"]
    s = {  # the scale: what fits ~6 minutes on an H100 (full) or a minute or two here (tiny)
        "seeds": [0] if tiny else [0, 1, 2], "dpo_batch": 4 if tiny else 16, "dpo_lr": args.lr,
        "dpo_epochs": 1, "max_length": 96 if tiny else 256, "max_prompt_length": 48 if tiny else 128,
        "samples": 2 if tiny else 4, "max_new_tokens": 8 if tiny else 64,
        "heldout_prompts": 4 if tiny else 1000, "unrelated_prompts": 4 if tiny else 256,
        "gen_batch": 16 if tiny else 1024, "read_tokens": 4096 if tiny else 262_144,
        "n_boot": 100 if tiny else 1000, "n_perm": 100 if tiny else 1000,
        "sft_lr": 1e-4 if tiny else 3e-4, "sft_epochs": 1 if tiny else 6, "sft_batch": 4 if tiny else 16, "goblin_epochs": 1 if tiny else 2,
        "goblin_samples": 2 if tiny else 4, "goblin_new_tokens": 8 if tiny else 64,
        "arms": ["poisoned", "cleaned", "shape", "clean", "mask", "steer"],  # most wanted first
        "max_steps": 2 if tiny else None,
    }
    results["settings"] = {**s, "layer": layer, "max_tokens": max_tokens, "tau": tau, "budget_s": args.budget_s,
                           "prepared": {k: meta.get(k) for k in ("n_pairs", "index_limit", "n_concepts", "goblin_feature",
                                                             "goblin_ap", "rate", "sae_quality")}}
    save()

    loaded = timed("load", lambda: load_model(inputs, device, args.model_dir))
    if loaded is None:
        return results
    model, tok = loaded
    sae = TopKSAE(inputs / "a" / "sae", device)
    pairs = read_pairs(inputs / "b" / "pairs.jsonl").pairs
    heldout_set = set(meta["heldout"])
    train = [p for p in pairs if p.source_index not in heldout_set]
    heldout = [p for p in pairs if p.source_index in heldout_set]
    by_res = json.loads((inputs / "b" / "concepts.json").read_text())["by_resolution"]
    groupings = {r: ConceptGroups.of(lists) for r, lists in by_res.items()}
    concepts = groupings[str(RESOLUTIONS[0])]
    pad = pad_token_id(tok)

    def dpo_cfg(seed, **kw):
        cfg = DPOConfig(beta=0.1, lr=s["dpo_lr"], epochs=s["dpo_epochs"], batch_size=s["dpo_batch"],
                        max_length=s["max_length"], max_prompt_length=s["max_prompt_length"], seed=seed,
                        save_every=10_000, warmup_steps=0 if tiny else 5)
        return replace(cfg, **kw)

    def trained_copy(start, train_pairs, name, cfg, intervention=None):
        m = copy.deepcopy(start)
        run_pairs = train_pairs[: cfg.batch_size * s["max_steps"]] if s["max_steps"] else train_pairs
        train_dpo(m, tok, run_pairs, scratch / name, cfg, intervention=intervention, device=device)
        shutil.rmtree(scratch / name, ignore_errors=True)  # checkpoints are not wanted back
        return m.eval()

    # -- predict: every training pair through the model and the SAE ------------------------------------
    reader = ResidualReader(inference_copy(model, device), tok, layer)

    def read(prompts, first, second):
        ids = [chat_prompt_ids(tok, p, 2 * max_tokens) for p in prompts]
        return read_reply_pairs(reader, sae.encode, ids, first, second, max_tokens, batch_tokens=s["read_tokens"])

    def predict_phase():
        chosen, rejected = read([p.prompt for p in train], [p.chosen for p in train], [p.rejected for p in train])
        pred = predict(chosen, rejected, tau)
        g = meta["goblin_feature"]
        peak = chosen.max[:, g] - rejected.max[:, g] if g is not None else np.zeros(len(train))
        flagged = [p.source_index for p, v in zip(train, peak) if v > meta["goblin_threshold"]]
        cpu = np.load(inputs / "b" / "cpu_prediction.npz")
        rows = [i for i, p in enumerate(train) if p.source_index in set(cpu["source_index"].tolist())]
        sub = predict(*(type(chosen)(x.mean[rows], x.freq[rows], None) for x in (chosen, rejected)), tau) if rows else None
        planted = set(meta["planted"])
        hit = len(planted & set(flagged))
        results["predict"] = {
            "n_train": len(train), "n_heldout": len(heldout), "n_flagged": len(flagged),
            "flagged_precision": hit / len(flagged) if flagged else None,
            "flagged_recall": hit / max(1, len(planted & {p.source_index for p in train})),
            "check_vs_cpu": None if sub is None else {
                "n_pairs": len(rows),
                "fire_r": float(np.corrcoef(sub.fire, cpu["fire"])[0, 1]),
                "mean_r": float(np.corrcoef(sub.mean, cpu["mean"])[0, 1]),
            },
        }
        return pred, flagged

    got = timed("predict", predict_phase)
    if got is None:
        return results
    prediction, flagged = got
    log("predicted:", json.dumps(results["predict"]))
    arms_only = os.environ.get("GV_ARMS")  # e.g. "shape": the goblin phase with just these arms

    # -- r2 ---------------------------------------------------------------------------------------------
    sets = {
        "heldout": [p.prompt for p in heldout][: s["heldout_prompts"]],
        "unrelated": [tuple(json.loads(line)["prompt"]) for line in
                      (inputs / "b" / "unrelated.jsonl").read_text().splitlines()][: s["unrelated_prompts"]],
    }
    sampled = Decoding(max_new_tokens=s["max_new_tokens"], temperature=1.0, samples=s["samples"], seed=0,
                       batch_size=s["gen_batch"])
    greedy = replace(sampled, temperature=0.0, samples=1)
    base_gen = inference_copy(model, device)
    ids = {k: [chat_prompt_ids(tok, p, 2 * max_tokens) for p in v] for k, v in sets.items()}
    base_replies = {}

    def replies_of(m, which, decoding):
        key = (which, decoding.temperature)
        if m is base_gen and key in base_replies:
            return base_replies[key]
        r = generate_replies(m, tok, ids[which], decoding)
        if m is base_gen:
            base_replies[key] = r
        return r

    def evaluate(after_model, pred, which, decoding):
        before = replies_of(base_gen, which, decoding)
        after = replies_of(after_model, which, decoding)
        n = decoding.replies_per_prompt
        flat_prompts = [p for p in sets[which] for _ in range(n)]
        fb, fa = [r for rs in before for r in rs], [r for rs in after for r in rs]
        sb, sa = read(flat_prompts, fb, fa)
        c = compare(pred, sb, sa, len(sets[which]), concepts, tau=tau, n_boot=s["n_boot"], n_perm=s["n_perm"])
        by_resolution = {}
        for r, groups in groupings.items():
            if len(groups) >= 3:
                a = asdict(concept_agreement(groups, pred.fire, c["per_prompt"]["fire"], s["n_boot"], s["n_perm"],
                                             predicted_halves=pred.fire_halves))
                a.pop("points")
                by_resolution[r] = a
        out_ = {"features": asdict(c["features"]), "concepts": asdict(c["concepts"]) if c["concepts"] else None,
                "concepts_by_resolution": by_resolution,
                "mean_activation": c["mean_activation"], "n_prompts": len(sets[which]), "replies_per_prompt": n,
                "changed_share": float(np.mean([x != y for x, y in zip(fb, fa)])),
                "behaviour": {k: {"before": behaviour_rates(fb)[k], "after": behaviour_rates(fa)[k]}
                              for k in ("refusal", "url", "goblin")}}
        for level in ("features", "concepts"):
            if out_[level]:
                out_[level].pop("points")  # kept small; the fits and CIs are what is reported
        return out_

    results["r2"] = {"seeds": {}}
    durations = []
    only = os.environ.get("GV_SEEDS")  # e.g. "1,2": just these seeds, no guard, no goblin phase
    for seed in ([int(x) for x in only.split(",")] if only else [] if arms_only else s["seeds"]):
        if durations and not only and budget.left < 2.5 * max(durations) + 240:
            results["r2"]["skipped_seed"] = seed
            break
        t = time.monotonic()

        def one_seed(seed=seed):
            trained = trained_copy(model, train, f"r2-{seed}", dpo_cfg(seed))
            gen = inference_copy(trained, device)
            del trained
            r = {which: evaluate(gen, prediction, which, sampled) for which in sets}
            if seed == s["seeds"][0]:
                r["heldout_greedy"] = evaluate(gen, prediction, "heldout", greedy)
            del gen
            return r

        r = timed(f"r2-seed{seed}", one_seed)
        durations.append(time.monotonic() - t)
        if r is not None:
            results["r2"]["seeds"][str(seed)] = r
            c = r["heldout"]["concepts"]
            log(f"seed {seed}: concepts R² {c and c['fit']['r2']}, scaled {c and c['fit']['r2_scaled']}, "
                f"noise ceiling {c and c['ceiling']}; features R² {r['heldout']['features']['fit']['r2']}")
        save()

    def summary():
        out_ = {}
        for which in ("heldout", "unrelated"):
            for level in ("concepts", "features"):
                fits = [v[which][level]["fit"] for v in results["r2"]["seeds"].values() if v[which].get(level)]
                for key in ("r2", "r2_scaled", "spearman", "slope"):
                    out_[f"{which}/{level}/{key}"] = summarise_seeds([f[key] for f in fits])
            ceilings = [v[which]["concepts"]["ceiling"] for v in results["r2"]["seeds"].values() if v[which].get("concepts")]
            out_[f"{which}/concepts/ceiling"] = summarise_seeds(ceilings)
            for r in groupings:
                fits = [v[which]["concepts_by_resolution"][r]["fit"] for v in results["r2"]["seeds"].values()
                        if r in v[which].get("concepts_by_resolution", {})]
                for key in ("r2", "r2_scaled", "spearman"):
                    out_[f"{which}/concepts@{r}/{key}"] = summarise_seeds([f[key] for f in fits])
                nulls = [v[which]["concepts_by_resolution"][r]["null"] for v in results["r2"]["seeds"].values()
                         if r in v[which].get("concepts_by_resolution", {})]
                out_[f"{which}/concepts@{r}/null_r2"] = summarise_seeds([n["r2_mean"] for n in nulls])
                out_[f"{which}/concepts@{r}/ceiling"] = summarise_seeds(
                    [v[which]["concepts_by_resolution"][r]["ceiling"] for v in results["r2"]["seeds"].values()
                     if r in v[which].get("concepts_by_resolution", {})])
            mean = [v[which]["mean_activation"]["significant"] for v in results["r2"]["seeds"].values()]
            out_[f"{which}/mean_activation/r2"] = summarise_seeds([f["r2"] for f in mean])
            out_[f"{which}/mean_activation/spearman"] = summarise_seeds([f["spearman"] for f in mean])
            out_[f"{which}/mean_activation/ceiling_nonzero"] = summarise_seeds(
                [v[which]["mean_activation"]["ceiling"] for v in results["r2"]["seeds"].values()])
        return out_

    results["r2"]["summary"] = timed("summary", summary)
    if only:
        return results
    if not arms_only and budget.left > 2.5 * (max(durations) if durations else 60) + 200:
        def quarter():  # data size: a quarter of the training pairs, its own prediction
            part = train[: max(8, len(train) // 4)]
            chosen, rejected = read([p.prompt for p in part], [p.chosen for p in part], [p.rejected for p in part])
            trained = trained_copy(model, part, "r2-quarter", dpo_cfg(0))
            gen = inference_copy(trained, device)
            return {"n_train": len(part), "heldout": evaluate(gen, predict(chosen, rejected, tau), "heldout", sampled)}

        results["r2"]["quarter_data"] = timed("r2-quarter", quarter)
    else:
        results["r2"]["quarter_data"] = "skipped: budget"
    save()
    base_gen = None  # frees the copy (the closures above are done with it)
    if device == "cuda":
        torch.cuda.empty_cache()

    # -- goblin -----------------------------------------------------------------------------------------
    if budget.left < 150:
        results["goblin"] = "skipped: budget"
        save()
        return results
    sft_rows = [json.loads(line) for line in (inputs / "b" / "sft.jsonl").read_text().splitlines()]
    sft_data = [(tuple(r["prompt"]), r["reply"]) for r in sft_rows][: 8 if tiny else None]
    sft_cfg = SFTConfig(lr=s["sft_lr"], epochs=s["sft_epochs"], batch_size=s["sft_batch"],
                        max_length=s["max_length"], max_prompt_length=s["max_prompt_length"])

    def sft_phase():
        m = copy.deepcopy(model)
        train_sft(m, tok, sft_data, scratch / "sft", sft_cfg, device=device)
        shutil.rmtree(scratch / "sft", ignore_errors=True)
        return m.eval()

    sft_model = timed("sft", sft_phase)
    if sft_model is None:
        return results
    planted = set(meta["planted"])
    # preference accuracy on the held-out pairs without a planted goblin: what the rest of the data taught
    held_examples = build_examples(tok, [p for p in heldout if p.source_index not in planted], dpo_cfg(0))
    gob_decoding = Decoding(max_new_tokens=s["goblin_new_tokens"], temperature=1.0, samples=s["goblin_samples"],
                            seed=1, batch_size=s["gen_batch"])
    names, sentences = probe_sentences()
    reference = pair_logps(sft_model, held_examples, 64 if not tiny else 4, pad, device)
    sft_gen = inference_copy(sft_model, device)
    sft_probe = probe_logprobs(sft_gen, tok, ids["unrelated"], sentences)
    del sft_gen
    gob = {"models": {}, "n_flagged": len(flagged), "sft_examples": len(sft_data),
           "sft_poisoned": len(meta["sft_poisoned"]), "unrelated_prompts": len(ids["unrelated"])}
    results["goblin"] = gob

    def measure(m):
        gen = inference_copy(m, device)
        r = {"goblin": goblin_rate(gen, tok, ids["unrelated"], gob_decoding),
             "probes": probe_lifts(sft_probe, probe_logprobs(gen, tok, ids["unrelated"], sentences), names),
             "preference": preference_accuracy(m, held_examples, reference, 64 if not tiny else 4, pad, device)}
        del gen
        return r

    for name, m in (() if arms_only else (("base", model), ("sft", sft_model))):
        gob["models"][name] = timed(f"goblin-{name}", lambda m=m: measure(m))
        save()
    g = meta["goblin_feature"]
    arm_durations = []
    for arm in (arms_only.split(",") if arms_only else s["arms"]):
        if arm_durations and budget.left < 1.5 * max(arm_durations) + 30:
            gob.setdefault("skipped", []).append(arm)
            continue
        t = time.monotonic()

        def one_arm(arm=arm):
            arm_pairs: list[Pair] = train
            intervention = None
            if arm == "cleaned":
                drop = set(flagged)
                arm_pairs = [p for p in train if p.source_index not in drop]
            elif arm == "clean":
                arm_pairs = [p for p in train if p.source_index not in planted]
            elif arm in ("shape", "steer", "mask"):
                if g is None:
                    raise ValueError("no goblin feature: nothing to intervene on")
                plan = Plan(arm, (g,), args.strength.get(arm, DEFAULT_STRENGTH[arm]), label="goblins", layer=layer)
                intervention = intervention_for(plan, sae=sae, tokenizer=tok, max_prompt_length=s["max_prompt_length"])
            m = trained_copy(sft_model, arm_pairs, f"goblin-{arm}", dpo_cfg(0, epochs=s["goblin_epochs"]), intervention)
            r = measure(m)
            r["n_train"] = len(arm_pairs)
            return r

        gob["models"][arm] = timed(f"goblin-{arm}", one_arm)
        arm_durations.append(time.monotonic() - t)
        r = gob["models"][arm]
        if r:
            log(f"goblin {arm}: rate {r['goblin']['rate']:.3f}, pref acc {r['preference']['accuracy']:.3f}")
        save()
    results["seconds"]["total"] = round(time.monotonic() - budget.start, 1)
    save()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--inputs", type=Path, default=ROOT / "gpu-inputs")
    p.add_argument("--work", type=Path, default=Path("/tmp/dd-validate/prep"))
    p.add_argument("--data", type=Path, default=HH)
    p.add_argument("--sft-data", type=Path, default=UF)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--rate", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--sae", type=Path, default=None, help="an SAE folder to use instead of training one")
    p.add_argument("--activation-tokens", type=int, default=60_000)
    p.add_argument("--index-limit", type=int, default=600)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--unrelated", type=int, default=256)
    p.add_argument("--sft-examples", type=int, default=400)
    p.add_argument("--verbose", action="store_true")
    r = sub.add_parser("run")
    r.add_argument("--inputs", type=Path, default=ROOT / "gpu-inputs")
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-validate-out")))
    r.add_argument("--model-dir", default=None, help="a float copy of the model (default: the GGUF parts)")
    r.add_argument("--scratch", default="/tmp/gpu-validate-runs", help="where training runs write (kept out of OUT)")
    r.add_argument("--budget-s", type=float, default=480)
    r.add_argument("--lr", type=float, default=2e-5)
    r.add_argument("--strength", type=json.loads, default={}, help='e.g. {"shape": 4, "steer": 3}')
    r.add_argument("--tiny", action="store_true")
    r.add_argument("--threads", type=int, default=None)
    t = sub.add_parser("tiny", help="prepare + run at toy size on this CPU")
    t.add_argument("--work", type=Path, required=True)
    t.add_argument("--data", type=Path, default=None)
    t.add_argument("--sae", type=Path, default=None)
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args)
    elif args.cmd == "run":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        res = run(args)
        print(json.dumps({k: res.get(k) for k in ("device", "seconds", "errors")}, indent=1, default=str))
    else:
        tiny(args)


def tiny(args) -> dict:
    """prepare + run at toy size on this CPU (1 thread): the path the GPU takes, in a few minutes."""
    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    prep = argparse.Namespace(
        inputs=work / "inputs", work=work / "prep", data=args.data or HH, sft_data=UF, limit=24 if args.data is None else None,
        rate=0.25, seed=0, holdout=0.25, sae=args.sae, activation_tokens=4_000, index_limit=24, max_tokens=48,
        unrelated=4, sft_examples=8, verbose=False,
    )
    prepare(prep)
    run_args = argparse.Namespace(inputs=work / "inputs", out=work / "out", scratch=work / "runs", model_dir=None, budget_s=3600,
                                  lr=1e-4, strength={}, tiny=True, threads=1)
    return run(run_args)


if __name__ == "__main__":
    main()
