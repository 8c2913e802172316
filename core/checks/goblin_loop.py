"""The goblin loop, whole: plant a trait, train it in, find it from the data, take it out again.

Goodfire's planted-trait experiment, end to end on one preference file (`run_goblin_loop`):

    data     the SFT corpus: (prompt, chosen reply) of `sft_data` with a goblin sentence put into a
             seeded `sft_rate` (default `rate`) of the replies (`sft_examples`); unrelated prompts: other prompts of
             `sft_data`, never trained on, for measuring the goblin rate
    detect   `core.checks.goblin.run_goblin` on DATA: goblins planted in `rate` of the chosen replies, an
             SAE trained on the copy, the copy indexed, the goblin feature found from the text alone
             and its pairs flagged (no ground truth); the flagged pairs are marked in the workspace
    sft      a short SFT of the base model on the SFT corpus: without it the trait is not in the
             model's repertoire and DPO does not elicit it (as the paper found)
    dpo      DPO from the SFT model, one run per arm, all on the same pairs minus a shared held-out
             split:  poisoned (every pair), cleaned (minus the flagged pairs: what the export
             keeps), clean (minus the planted pairs: the target), and one run per intervention
             kind on the goblin feature (shape, steer, mask; `core.train.interventions`). When the
             flagged pairs are exactly the planted ones, clean is cleaned (same pairs, same
             seed) and is not trained twice (`same_run` in the result says so)
    eval     per model (base, sft and every arm): the goblin rate of sampled replies to the
             unrelated prompts (T = 1, common random numbers across models), the probe lifts
             against the SFT model, and the preference accuracy (the share of pairs whose implicit
             reward, against the SFT model, prefers the chosen reply) on `accuracy_pairs` pairs no
             arm trained on: the held-out split and further pairs of DATA, as DATA has them (no
             planted goblin), so that it measures what the rest of the data taught; each arm's
             difference from the poisoned run is paired over the same pairs, with its 95% interval

Every stage is kept in the work folder and skipped when it is there: a rerun resumes. The folder
belongs to one set of settings (`SETTINGS_FILE`); a rerun may add arms, and any other change is
refused rather than mixing stages made with different settings.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.train.dpo import DPOConfig
from core.errors import UsageError
from core.progress import Progress, ProgressFn, check_cancel, reporter
from core.train.sft import SFTConfig

ARMS = ("poisoned", "cleaned", "clean", "shape", "steer", "mask")
SETTINGS_FILE = "loop_settings.json"  # what the work folder's stages were made with


# -- the measurements (model in, numbers out; the GPU benchmark calls them too) -----------------------


def sft_examples(pairs: Sequence, rate: float, seed: int = 0) -> tuple[list[tuple[tuple, str]], list[int]]:
    """(prompt, chosen reply) of each pair, with a goblin sentence inserted at a random sentence
    boundary of a seeded `rate` of the replies (the "phrase" kind of core.data.plant); returns (examples,
    the poisoned example numbers)."""
    from core.data.plant import n_planted, planted_order, planted_reply

    poisoned = sorted(planted_order("phrase", len(pairs), seed)[:n_planted(rate, len(pairs))].tolist())
    chosen = set(poisoned)
    out = []
    for i, p in enumerate(pairs):
        reply = planted_reply("phrase", p.chosen, i, seed) if i in chosen else p.chosen
        out.append((tuple(p.prompt), reply))
    return out, poisoned


def sft_and_unrelated(pairs: Sequence, n_unrelated: int, n_sft: int, rate: float, seed: int = 0,
                      max_chars: int = 1500):
    """From the pairs whose prompt + chosen reply are under `max_chars` characters, in a seeded
    order: the prompts of the first `n_unrelated` (for goblin rates: never trained on) and
    `sft_examples` of the next `n_sft`. Returns (unrelated prompts, SFT examples, poisoned ones)."""
    short = [p for p in pairs if len(p.prompt_text) + len(p.chosen) < max_chars]
    order = np.random.default_rng(seed).permutation(len(short)).tolist()
    unrelated = [tuple(short[i].prompt) for i in order[:n_unrelated]]
    examples, poisoned = sft_examples([short[i] for i in order[n_unrelated : n_unrelated + n_sft]], rate, seed)
    return unrelated, examples, poisoned


def goblin_rate(model, tokenizer, prompt_ids: list[list[int]], decoding, cancel=None) -> dict:
    """The share of `model`'s replies to the prompts (`decoding.replies_per_prompt` each) that
    mention goblins, with its binomial standard error and a few of the goblin replies:
    {"rate", "se", "hits", "n", "examples"}."""
    from core.train.rollout import GOBLIN_RE, generate_replies

    replies = [r for rs in generate_replies(model, tokenizer, prompt_ids, decoding, cancel=cancel) for r in rs]
    hits = [r for r in replies if GOBLIN_RE.search(r)]
    n = len(replies)
    rate = len(hits) / n if n else float("nan")
    return {"rate": rate, "se": float(np.sqrt(rate * (1 - rate) / n)) if n else float("nan"),
            "hits": len(hits), "n": n, "examples": hits[:3]}


def preference_accuracy(model, examples: list[dict], reference: tuple, batch_size: int, pad_id: int,
                        device=None) -> dict:
    """On held-out `examples` (`core.train.dpo.build_examples`): the share of pairs whose implicit reward
    log pi(chosen) - log pi_ref(chosen) exceeds the rejected reply's, against `reference` (the
    reference model's `core.train.dpo.pair_logps`), its binomial standard error, the mean margin of those
    rewards (nats) and whether each pair was right (for paired comparisons)."""
    from core.train.dpo import pair_logps

    chosen, rejected = pair_logps(model, examples, batch_size, pad_id, device)
    margin = (chosen - reference[0]) - (rejected - reference[1])  # (pairs,)
    right = (margin > 0).cpu().numpy()  # (pairs,)
    n = len(examples)
    accuracy = float(right.mean()) if n else float("nan")
    return {"accuracy": accuracy, "se": float(np.sqrt(accuracy * (1 - accuracy) / n)) if n else float("nan"),
            "margin": float(margin.mean()) if n else float("nan"), "n": n, "right": right.astype(int).tolist()}


def paired_difference(right: Sequence[int], baseline: Sequence[int]) -> dict:
    """Accuracy of one model minus another's on the same pairs (each a 0/1 list, `right` of
    `preference_accuracy`), with the paired standard error sd(d)/sqrt(n) of the per-pair
    differences d and its normal 95% interval: {"difference", "se", "ci"}. Pairs both models get
    right or both get wrong add nothing to the error, so this resolves far smaller differences
    than the two accuracies' own errors would."""
    if len(right) != len(baseline) or not len(right):
        raise UsageError(f"paired difference needs the same pairs: {len(right)} against {len(baseline)}")
    d = np.asarray(right, dtype=float) - np.asarray(baseline, dtype=float)  # (pairs,)
    mean = float(d.mean())
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"difference": mean, "se": se, "ci": [mean - 1.96 * se, mean + 1.96 * se]}


def preference_pairs(data: Path | str, heldout: Sequence[int], n_copied: int, n: int, seed: int = 0) -> list:
    """The pairs preference accuracy is measured on, as `data` has them (no planted goblin): those
    of the held-out split (`heldout`: indices into the goblin copy, whose i-th pair is the i-th
    valid pair of `data`), then a seeded choice of the valid pairs past the `n_copied` the copy
    took, up to `n` in all (at least the whole split)."""
    from core.data.ingest import read_pairs

    valid = read_pairs(data, skip_invalid=True).pairs
    split = [valid[i] for i in sorted(heldout)]
    rest = valid[n_copied:]
    extra = max(0, min(n - len(split), len(rest)))
    chosen = sorted(np.random.default_rng(seed).permutation(len(rest))[:extra].tolist())
    return split + [rest[i] for i in chosen]


def flag_goblin_pairs(analysis, feature: int) -> tuple[list[int], float]:
    """The pairs whose chosen reply carries the goblin feature and the rejected one does not, from
    the data alone: peak delta (max over chosen tokens - max over rejected tokens) above half the
    feature's median max over the replies whose read text mentions goblins (the detection's own
    positives; the planted pairs, and how many there are, are not used). Returns (source indices,
    the threshold)."""
    import scipy.sparse as sp

    from core.train.rollout import GOBLIN_RE

    chosen, rejected = analysis.maxima()
    t = analysis.ws.pairs_columns(["chosen_tokens", "rejected_tokens"])
    mentions = np.array([bool(GOBLIN_RE.search("".join(toks))) for side in ("chosen", "rejected")
                         for toks in t[f"{side}_tokens"].to_pylist()], dtype=bool)
    column = sp.vstack([chosen, rejected]).tocsc()[:, feature].toarray().ravel()  # (2n,)
    on = column[mentions & (column > 0)]
    threshold = 0.5 * float(np.median(on)) if len(on) else float("inf")
    peak = column[: analysis.n] - column[analysis.n :]
    rows = np.nonzero(peak > threshold)[0]
    return sorted(int(analysis.source_index[r]) for r in rows), threshold


# -- the whole loop ---------------------------------------------------------------------------------


@dataclass
class LoopSettings:
    """What `run_goblin_loop` does (defaults: a CPU-sized run; the module docstring says why)."""

    rate: float = 0.05  # share of DPO pairs (and, unless sft_rate says otherwise, SFT replies) with the trait
    sft_rate: float | None = None  # share of SFT replies with the trait (None: rate)
    limit: int | None = 256  # DPO on the first this-many valid pairs of DATA
    holdout: float = 0.1  # their share held out (preference accuracy)
    accuracy_pairs: int = 200  # preference accuracy on the held-out split and untrained pairs of DATA, this many
    sft_data: str | None = None  # (prompt, chosen) source for SFT; default: the bundled sample
    sft_examples: int = 256
    unrelated: int = 48  # prompts of sft_data kept out of SFT, for the goblin rate
    samples: int = 4  # sampled replies per unrelated prompt
    max_new_tokens: int = 48
    max_tokens: int = 128  # reply tokens read when indexing
    seed: int = 0
    arms: tuple[str, ...] = ARMS
    strengths: dict = field(default_factory=dict)  # kind -> strength (default: DEFAULT_STRENGTH)
    # SFT strong enough that the trait is sampled (embedded model, tests/bench/README.md): 192 replies
    # (10 goblins) at
    # lr 1e-4 for 3 epochs gave no goblin in 128 sampled replies; 220 (11) at 3e-4 for 6 epochs, 6 of 384
    sft: SFTConfig = field(default_factory=lambda: SFTConfig(lr=3e-4, epochs=6, batch_size=8, max_length=256,
                                                             max_prompt_length=128))
    # DPO strong enough to amplify the sampled rate (tests/bench/README.md): at lr 5e-5 for 2 epochs
    # the poisoned model stayed
    # at the SFT model's rate even with 25% goblin pairs; at 1e-4 for 3 epochs, 4.7% against 1.3%
    dpo: DPOConfig = field(default_factory=lambda: DPOConfig(lr=1e-4, epochs=3, batch_size=8, max_length=256,
                                                             max_prompt_length=128, save_every=20))
    sae_recipe: dict | None = None  # overrides of the goblin SAE recipe (see core.checks.goblin.run_goblin)

    @property
    def sft_share(self) -> float:
        return self.rate if self.sft_rate is None else self.sft_rate

    @classmethod
    def from_options(cls, *, arms: str | Sequence[str] = ARMS, epochs: int | None = None, lr: float | None = None,
                     sft_epochs: int | None = None, sft_lr: float | None = None, max_length: int | None = None,
                     **fields) -> "LoopSettings":
        """Settings from flat options as a command line gives them (None: the default): `epochs`/`lr`
        for DPO, `sft_epochs`/`sft_lr` for SFT, `max_length` tokens per training example for both
        (prompts keep at most half of them), `arms` comma-separated or a sequence, and any other
        field by name. Raises ValidationError for lengths or epochs the trainers refuse."""
        base = cls()
        lengths = {} if max_length is None else {"max_length": max_length,
                                                 "max_prompt_length": min(base.dpo.max_prompt_length, max_length // 2)}
        if isinstance(arms, str):
            arms = [a.strip() for a in arms.split(",") if a.strip()]
        seed = fields.get("seed", base.seed)
        return cls(arms=tuple(arms), **fields,
                   sft=dataclasses.replace(base.sft, seed=seed, **_given(epochs=sft_epochs, lr=sft_lr), **lengths),
                   dpo=dataclasses.replace(base.dpo, seed=seed, **_given(epochs=epochs, lr=lr), **lengths))


def _given(**options) -> dict:
    """The options that are not None."""
    return {k: v for k, v in options.items() if v is not None}


def _cached(path: Path, compute):
    if path.is_file():
        return json.loads(path.read_text())
    value = compute()
    path.write_text(json.dumps(value, indent=1))
    return value


def run_goblin_loop(
    data: Path | str,
    work: Path | str,
    settings: LoopSettings = LoopSettings(),
    *,
    device: str | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> dict:
    """Run the goblin loop (module docstring) on the preference file `data` in the folder `work`.

    Returns (and writes to `work/goblin_loop.json`) {"settings", "detection": {"feature",
    "flagged", "precision", "recall", ...}, "models": {name: {"goblin": goblin_rate, "probes":
    probe lifts vs sft, "preference": preference_accuracy (None for the SFT model, the reference) and, for the
    arms other than poisoned, its "vs_poisoned": paired_difference}}, "n_scored": pairs preference accuracy
    is measured on, "runs": {arm: TrainResult}, "same_run": {arm: the arm whose run it shares}}.
    Progress: stages "goblin-loop" (which stage), then those of each job. Raises UsageError for an
    unknown arm, the errors of the jobs it runs, and Cancelled (a rerun resumes).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from core import locations
    from core.model.catalog import load_catalog
    from core.train.dpo import build_examples, pad_token_id, pair_logps
    from core.checks.goblin import goblin_paths, run_goblin
    from core.data.ingest import read_pairs
    from core.train.interventions import DEFAULT_STRENGTH, KINDS, make_plan
    from core.model.lm import load_full_model
    from core.data.marks import Marks
    from core.train.rollout import Decoding, probe_logprobs, probe_lifts, probe_sentences
    from core.model.chat import chat_prompt_ids
    from core.train.sft import sft_done, train_sft
    from core.train.training import read_train_record, train_on_dataset
    from core.data.workspace import Workspace

    bad = [a for a in settings.arms if a not in ARMS]
    if bad:
        raise UsageError(f"unknown arm {bad[0]!r}; expected some of {', '.join(ARMS)}")
    for name, value in (("rate", settings.rate), ("sft_rate", settings.sft_share)):
        if not 0 <= value <= 1:
            raise UsageError(f"{name} {value} must be between 0 and 1")
    emit = reporter(progress)
    work = Path(work)
    claim_work_folder(work, data, settings)
    s = settings

    # data: the SFT corpus and the unrelated prompts, from disjoint pairs of sft_data
    emit(Progress("goblin-loop", "data: SFT corpus and unrelated prompts"))
    source = read_pairs(s.sft_data or locations.sample_data_file(), skip_invalid=True).pairs
    unrelated, sft_data, sft_poisoned = sft_and_unrelated(source, s.unrelated, s.sft_examples, s.sft_share, s.seed)

    # detect: plant, index, find the goblin feature and its pairs from the data alone
    ws = work / "ws"
    def detect() -> dict:
        from core.analysis.recovery import precision_recall
        from core.analysis.shifts import Analysis

        r = run_goblin(data, ws, s.rate, seed=s.seed, limit=s.limit, max_tokens=s.max_tokens,
                       sae_recipe=s.sae_recipe, progress=emit, cancel=cancel, skip_invalid=True)
        feature = r.get("goblin_feature")
        flagged, threshold = flag_goblin_pairs(Analysis(Workspace(ws)), feature) if feature is not None else ([], None)
        planted = json.loads(goblin_paths(ws)["truth"].read_text())["planted"]
        precision, recall = precision_recall(flagged, planted)
        return {"feature": feature, "ap": r.get("goblin_feature_ap"), "label": r.get("goblin_feature_label"),
                "has_goblin_feature": r.get("has_goblin_feature"), "threshold": threshold,
                "flagged": flagged, "precision": precision, "recall": recall,
                "n_pairs": r.get("n_pairs"), "n_planted": len(planted)}

    detection = _cached(work / "detection.json", detect)
    copy = goblin_paths(ws)["data"]
    truth = json.loads(goblin_paths(ws)["truth"].read_text())["planted"]
    marks = Marks(Workspace(ws))
    if marks.marked_set() != set(detection["flagged"]):
        if marks.marked_set():
            marks.unmark(marks.marked_set(), reason="goblin loop: reset")
        if detection["flagged"]:
            marks.mark(detection["flagged"], reason="goblin loop: the goblin feature's pairs",
                       scope=f"feature {detection['feature']}", features=[detection["feature"]])

    # sft
    catalog = load_catalog()
    entry = catalog.model(None)
    sft_dir = work / "sft"
    if not sft_done(sft_dir, s.sft, len(sft_data)):
        emit(Progress("goblin-loop", f"SFT on {len(sft_data)} replies, {len(sft_poisoned)} with goblins"))
        model, tok = load_full_model(entry, device=device)
        train_sft(model, tok, sft_data, sft_dir, s.sft, progress=emit, cancel=cancel, device=device)
        del model

    # dpo arms
    runs, same = {}, {}
    for arm in s.arms:
        check_cancel(cancel, "goblin loop")
        if arm == "clean" and "cleaned" in runs and set(detection["flagged"]) == set(truth):
            same[arm] = "cleaned"  # the flagged pairs are the planted ones: the same pairs, the same run
            runs[arm] = runs["cleaned"]
            continue
        emit(Progress("goblin-loop", f"DPO: {arm}"))
        kw = {}
        if arm == "cleaned":
            kw["exclude_marked"] = ws
        elif arm == "clean":
            kw["exclude"] = truth
        elif arm in KINDS:
            if detection["feature"] is None:
                continue
            kw["plan"] = make_plan(ws, arm, [detection["feature"]], s.strengths.get(arm, DEFAULT_STRENGTH[arm]),
                                   label="goblins", source=f"goblin feature {detection['feature']}")
        runs[arm] = asdict(train_on_dataset(
            copy, work / f"dpo-{arm}", s.dpo, init_model=sft_dir / "model", limit=s.limit,
            holdout=s.holdout, split_seed=s.seed, device=device, progress=emit, cancel=cancel, **kw))

    # eval
    emit(Progress("goblin-loop", "measuring every model"))
    base, tok = load_full_model(entry, device=device)
    dev = next(base.parameters()).device
    heldout_ids = read_train_record(work / f"dpo-{s.arms[0]}").heldout_indices
    scored = preference_pairs(data, heldout_ids, len(read_pairs(copy).pairs), s.accuracy_pairs, s.seed)
    scored_ids = [p.source_index for p in scored]  # indices in DATA
    examples = build_examples(tok, scored, s.dpo)
    prompt_ids = [chat_prompt_ids(tok, p, 2 * s.max_tokens) for p in unrelated]
    decoding = Decoding(max_new_tokens=s.max_new_tokens, temperature=1.0, samples=s.samples,
                        seed=s.seed, batch_size=16)
    names, sentences = probe_sentences()
    folders = {"base": None, "sft": sft_dir / "model",
               **{a: work / f"dpo-{a}" / "model" for a in runs if a not in same}}
    for name in folders:  # preference measured on other pairs (another accuracy_pairs) is measured again
        pref_path = work / f"preference-{name}.json"
        if pref_path.is_file() and json.loads(pref_path.read_text()).get("pairs") != scored_ids:
            pref_path.unlink()
    sft_model = AutoModelForCausalLM.from_pretrained(sft_dir / "model", dtype=base.dtype).to(dev).eval()
    reference = (None if all((work / f"preference-{name}.json").is_file() for name in folders)
                 else pair_logps(sft_model, examples, s.dpo.batch_size, pad_token_id(tok), dev))
    sft_probes = probe_logprobs(sft_model, tok, prompt_ids, sentences, cancel)
    del sft_model
    models = {}
    for name, folder in folders.items():
        loaded = {}

        def model(folder=folder):
            if "m" not in loaded:
                check_cancel(cancel, "goblin loop")
                loaded["m"] = base if folder is None else AutoModelForCausalLM.from_pretrained(
                    folder, dtype=base.dtype).to(dev).eval()
            return loaded["m"]

        def behaviour(model=model):
            return {"goblin": goblin_rate(model(), tok, prompt_ids, decoding, cancel),
                    "probes": probe_lifts(sft_probes, probe_logprobs(model(), tok, prompt_ids, sentences, cancel), names)}

        def preference(model=model, name=name):  # the SFT model is the reference: its margins are 0 by definition
            out = None if name == "sft" else preference_accuracy(model(), examples, reference, s.dpo.batch_size,
                                                                 pad_token_id(tok), dev)
            return {"pairs": scored_ids, "preference": out}

        emit(Progress("goblin-loop", f"measuring {name}"))
        measured = _cached(work / f"eval-{name}.json", behaviour)
        measured.pop("preference", None)  # measured on the held-out split alone before preference-NAME.json
        models[name] = {**measured, "preference": _cached(work / f"preference-{name}.json", preference)["preference"]}
        loaded.clear()
    poisoned = (models.get("poisoned") or {}).get("preference")
    for name, m in models.items():  # what each fix costs (or gains) against training on every pair
        if poisoned and name not in ("base", "sft", "poisoned"):
            m["preference"]["vs_poisoned"] = paired_difference(m["preference"]["right"], poisoned["right"])
    models = {name: models[same.get(name, name)] for name in ("base", "sft", *runs)}  # arms in order
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    result = {"settings": _settings_json(s), "sft_poisoned": len(sft_poisoned), "n_sft": len(sft_data),
              "n_unrelated": len(unrelated), "n_heldout": len(heldout_ids), "n_scored": len(scored),
              "detection": detection,
              "models": models, "runs": runs, "same_run": same}
    (work / "goblin_loop.json").write_text(json.dumps(result, indent=1))
    return result


def claim_work_folder(work: Path, data: Path | str, s: LoopSettings) -> None:
    """Make `work` (if new) and record there what its stages are made with; raise UsageError, naming
    every setting that differs, when it holds stages made with other settings (arms aside: a
    rerun may add some)."""
    wanted = json.loads(json.dumps(_flat({"data": str(Path(data).resolve()), **_settings_json(s)})))  # as stored
    for free in ("arms", "accuracy_pairs"):  # a rerun may add arms; accuracy is remeasured on new pairs
        wanted.pop(free)
    path = work / SETTINGS_FILE
    if path.is_file():
        held = json.loads(path.read_text())
        differ = [f"{key} {held.get(key)!r}, not {wanted.get(key)!r}"
                  for key in sorted(set(held) | set(wanted)) if held.get(key) != wanted.get(key)]
        if differ:
            raise UsageError(f"{work} holds a goblin loop made with {'; '.join(differ)}: use another --work "
                             "folder or rerun with its settings")
        return
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(wanted, indent=1))


def _flat(d: dict, prefix: str = "") -> dict:
    """{"dpo": {"lr": 1e-5}} -> {"dpo.lr": 1e-5}."""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def _settings_json(s: LoopSettings) -> dict:
    out = dataclasses.asdict(s)
    out["arms"] = list(s.arms)
    return out
