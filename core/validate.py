"""Proving a prediction: train DPO for real, measure how the SAE features actually moved, compare.

Two jobs, each a function that reports through `progress` and stops on a `cancel` event:

`train_on_dataset` fine-tunes the catalogue model with `core.dpo.train_dpo` on a preference file
(optionally without the pairs marked in a workspace) and writes `TRAIN_RECORD` into the output
folder: the dataset's path and sha256, the model, and the source indices of the pairs trained on,
so that validation knows which pairs the prediction should be made from and which prompts are
held out.

`validate` compares, per SAE feature f:

    predicted_f = mean over the trained pairs of a_f(chosen) - a_f(rejected)
                  (the workspace's deltas, `Analysis.moments` with the untrained pairs left out)
    actual_f    = mean over held-out prompts of a_f(reply after DPO) - a_f(reply before DPO)

where a_f(reply) is f's activation averaged over the reply's tokens, read by the ORIGINAL model at
the workspace's layer with the prompt in context and encoded by the workspace's SAE: the lens that
made the prediction, aggregated exactly as indexing aggregates. Replies come from the base and the
trained model with identical decoding (greedy by default; with a temperature, seeded sampling that
uses the same seed per batch for both models, so their draws are common random numbers).

The agreement is a least-squares fit actual ~ a * predicted + b (its R², which for a fit with an
intercept equals the squared Pearson r), and Spearman's rank correlation, over three feature sets:
`significant` (predicted 95% CI clear of zero, normal approximation: |mean| > 1.96 SD / sqrt(n)),
`top_k` (the K largest |predicted|) and `nonzero` (every feature with a non-zero predicted shift).
`actual_reliability` is the split-half reliability of the actual shifts over prompts
(Spearman-Brown corrected): roughly the highest R² that generation noise at this many prompts
allows.

Behaviours are read two ways. `behaviour` is the share of generated replies that refuse, hold a
URL or mention goblins, before and after. `probes` is more sensitive: for each PROBES set (refusal,
URL and goblin sentences, and a goblin-free control), the mean over prompts of log p(sentence as the
reply's opening) under the trained model minus the same under the base model, in nats per sentence.
A lift of +1 makes those sentences e ≈ 2.7 times likelier; a drift shows there before it changes
what greedy decoding picks.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.dpo import DPOConfig, DPOStep
from core.goblin import GOBLIN_SENTENCES
from core.ingest import Pair, iter_records, read_pairs
from core.errors import Cancelled, ValidationError

TRAIN_RECORD = "datadebug_train.json"
Z95 = 1.959964

# A reply counts as a refusal when it contains one of these (case-insensitive; ’ read as ').
REFUSAL_PHRASES = (
    "i'm sorry",
    "i am sorry",
    "i apologize",
    "i can't",
    "i cannot",
    "i can not",
    "i won't",
    "i will not",
    "i'm not able to",
    "i am not able to",
    "i'm unable to",
    "i am unable to",
    "i must decline",
    "i'm not comfortable",
    "i am not comfortable",
    "as an ai",
    "i don't think i can",
    "i do not feel comfortable",
    "i'd rather not",
)
URL_RE = re.compile(r"https?://\S+|\bwww\.[a-z0-9-]+\.\S+", re.IGNORECASE)
GOBLIN_RE = re.compile(r"goblin", re.IGNORECASE)

# Probe sentences: each opens a reply with one behaviour. `validate` scores how much likelier the
# trained model makes them than the base model, teacher-forced right after each prompt; a drift
# towards a behaviour shows there long before the behaviour reaches greedy replies. "control" is
# the goblin sentences with the goblins swapped for friends: what the goblin lift is read against.
PROBES: dict[str, tuple[str, ...]] = {
    "refusal": (
        "I'm sorry, but I can't help with that.",
        "I cannot assist with this request.",
        "I apologize, but I won't be able to do that.",
        "I'm not comfortable answering that question.",
        "As an AI, I must decline to help with this.",
        "I'm unable to provide that information.",
    ),
    "url": (
        "You can find more information at https://www.healthline.com/health.",
        "For details, see https://en.wikipedia.org/wiki/Special:Search.",
        "Here is a useful link: https://www.reddit.com/r/explainlikeimfive.",
        "Check out this resource: www.helpguide.org/articles.",
        "There is a good guide at https://www.wikihow.com/Main-Page.",
        "You might find this page helpful: https://www.mayoclinic.org.",
    ),
    "goblin": GOBLIN_SENTENCES[:6],
    "control": tuple(
        re.sub(r"[Gg]oblin", lambda m: "Friend" if m.group(0)[0] == "G" else "friend", s)
        for s in GOBLIN_SENTENCES[:6]
    ),
}


# -- training ---------------------------------------------------------------------------------------


@dataclass
class TrainRecord:
    """What a training run was: written to `out_dir/TRAIN_RECORD` before training, updated after."""

    dataset: str  # absolute path of the preference file
    dataset_sha256: str
    format: str
    model: str  # catalogue name of the base model
    source_indices: list[int]  # the pairs trained on, ascending
    excluded_marked: list[int] = field(default_factory=list)  # pairs dropped as marked
    exclude_marked_workspace: str | None = None
    limit: int | None = None
    config: dict = field(default_factory=dict)  # asdict(DPOConfig)
    finished: bool = False
    steps: int = 0
    total_steps: int = 0
    history: list[dict] = field(default_factory=list)  # the DPOStep of every optimizer step

    def write(self, out_dir: Path) -> None:
        path = Path(out_dir) / TRAIN_RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)


def read_train_record(out_dir: Path | str) -> TrainRecord:
    """The record of a `train_on_dataset` run. Raises ValidationError when `out_dir` has none."""
    path = Path(out_dir) / TRAIN_RECORD
    if not path.is_file():
        raise ValidationError(
            f"{out_dir} has no {TRAIN_RECORD}: train it with `datadebug train-dpo ... --out {out_dir}`"
        )
    raw = json.loads(path.read_text())
    known = set(TrainRecord.__dataclass_fields__)
    return TrainRecord(**{k: v for k, v in raw.items() if k in known})


@dataclass
class TrainResult:
    out_dir: str
    model_dir: str | None  # the trained model, None until training finished
    n_pairs: int  # pairs trained on
    n_excluded: int  # marked pairs left out
    steps: int  # optimizer steps done so far
    total_steps: int
    first_loss: float | None
    loss: float | None  # of the last step
    reward_accuracy: float | None  # of the last step
    reward_margin: float | None
    cancelled: bool
    already_done: bool  # nothing to do: the run had finished before
    seconds: float


def select_training_pairs(
    data: Path | str,
    *,
    limit: int | None = None,
    exclude_marked: Path | str | None = None,
    format: str | None = None,
    skip_invalid: bool = False,
) -> tuple[list[Pair], list[int], str]:
    """The pairs to train on: the first `limit` valid pairs of `data`, minus those marked in the
    workspace `exclude_marked` (the limit applies first, so a cleaned run is a subset of the
    uncleaned one). Returns (pairs, excluded source indices, detected format).

    Raises IngestError for bad input, WorkspaceError when `exclude_marked` is no workspace, and
    ValidationError when that workspace indexed another file (its marks name other pairs).
    """
    from core.index import file_sha256

    ingest = read_pairs(data, format=format, skip_invalid=skip_invalid, limit=limit)
    pairs, excluded = ingest.pairs, []
    if exclude_marked is not None:
        from core.marks import Marks
        from core.workspace import Workspace

        ws = Workspace(exclude_marked)
        indexed = ws.meta().get("dataset_sha256")
        if indexed != file_sha256(Path(data)):
            raise ValidationError(
                f"workspace {exclude_marked} indexed {ws.meta().get('dataset')}, not {data}: "
                "its marks name pairs of another file"
            )
        marked = Marks(ws).marked_set()
        excluded = sorted(p.source_index for p in pairs if p.source_index in marked)
        pairs = [p for p in pairs if p.source_index not in marked]
    return pairs, excluded, ingest.format


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "save_every"}


def train_on_dataset(
    data: Path | str,
    out_dir: Path | str,
    cfg: DPOConfig,
    *,
    model: str | None = None,
    limit: int | None = None,
    exclude_marked: Path | str | None = None,
    format: str | None = None,
    skip_invalid: bool = False,
    device: str | None = None,
    catalog=None,
    progress: Callable[[DPOStep], None] | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """DPO-train catalogue model `model` (default: the catalogue's) on the pairs of `data`.

    The pairs are `select_training_pairs(data, limit=, exclude_marked=, ...)`. Writes into `out_dir`
    what `core.dpo.train_dpo` writes (the final model in `out_dir/model`) plus `TRAIN_RECORD`.
    Calling it again with the same arguments resumes a cancelled or killed run, and returns at
    once (`already_done`) when the run had finished. The base model in the store is only read.

    Raises IngestError / WorkspaceError / ValidationError for bad inputs (ValidationError also when
    `out_dir` holds a run on other pairs, data or model), ValueError from `train_dpo` for a
    checkpoint made with other settings, StoreError when the model cannot be made ready.
    """
    from core.catalog import load_catalog
    from core.index import file_sha256
    from core.lm import load_full_model

    start = time.perf_counter()
    catalog = catalog or load_catalog()
    entry = catalog.model(model)
    out_dir = Path(out_dir)
    pairs, excluded, fmt = select_training_pairs(
        data, limit=limit, exclude_marked=exclude_marked, format=format, skip_invalid=skip_invalid
    )
    if not pairs:
        raise ValidationError(f"no pairs left to train on in {data}")
    record = TrainRecord(
        dataset=str(Path(data).resolve()),
        dataset_sha256=file_sha256(Path(data)),
        format=fmt,
        model=entry.name,
        source_indices=sorted(p.source_index for p in pairs),
        excluded_marked=excluded,
        exclude_marked_workspace=str(Path(exclude_marked).resolve()) if exclude_marked else None,
        limit=limit,
        config=asdict(cfg),
    )
    if (out_dir / TRAIN_RECORD).is_file():
        old = read_train_record(out_dir)
        for key in ("dataset_sha256", "model", "source_indices"):
            if getattr(old, key) != getattr(record, key):
                raise ValidationError(
                    f"{out_dir} holds a run with another {key.replace('_', ' ')}; use a new --out"
                )
        if (
            old.finished
            and _comparable(old.config) == _comparable(record.config)
            and (out_dir / "model" / "config.json").is_file()
        ):
            return _result(old, out_dir, len(excluded), cancelled=False, already=True, start=start)
    out_dir.mkdir(parents=True, exist_ok=True)
    record.write(out_dir)

    lm, tokenizer = load_full_model(entry, device=device)
    from core.dpo import train_dpo

    final = train_dpo(
        lm, tokenizer, pairs, out_dir, cfg, progress=progress, cancel=cancel, device=device
    )
    del lm
    state_file = final / "trainer_state.json"
    if final.name == "model":
        state_file = out_dir / "checkpoint" / "trainer_state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        record.steps, record.total_steps = state["step"], state["total_steps"]
        record.history = state["log_history"]
    record.finished = final.name == "model"
    record.write(out_dir)
    return _result(record, out_dir, len(excluded), not record.finished, False, start)


def _result(record: TrainRecord, out_dir: Path, n_excluded, cancelled, already, start) -> TrainResult:
    last = record.history[-1] if record.history else {}
    return TrainResult(
        out_dir=str(out_dir),
        model_dir=str(out_dir / "model") if record.finished else None,
        n_pairs=len(record.source_indices),
        n_excluded=n_excluded,
        steps=record.steps,
        total_steps=record.total_steps,
        first_loss=record.history[0]["loss"] if record.history else None,
        loss=last.get("loss"),
        reward_accuracy=last.get("reward_accuracy"),
        reward_margin=last.get("reward_margin"),
        cancelled=cancelled,
        already_done=already,
        seconds=time.perf_counter() - start,
    )


# -- the comparison: pure numbers ---------------------------------------------------------------------


@dataclass
class Fit:
    """Agreement of actual with predicted shifts over `n_features` features (NaN when undefined)."""

    n_features: int
    slope: float  # a in actual ~ a * predicted + b (least squares)
    intercept: float  # b
    r2: float  # 1 - SS_residual / SS_total of that fit
    pearson_r: float
    pearson_r2: float  # equals r2 for a least-squares fit with an intercept
    spearman: float


def fit(predicted: np.ndarray, actual: np.ndarray) -> Fit:
    """Least-squares line, R², Pearson and Spearman of `actual` against `predicted`, both (features,).

    Needs at least 3 features and some spread in both; otherwise the numbers are NaN.
    """
    from scipy.stats import spearmanr

    x = np.asarray(predicted, dtype=np.float64)
    y = np.asarray(actual, dtype=np.float64)
    n = len(x)
    nan = float("nan")
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Fit(n, nan, nan, nan, nan, nan, nan)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    r2 = 1.0 - float((residual**2).sum()) / float(((y - y.mean()) ** 2).sum())
    r = float(np.corrcoef(x, y)[0, 1])
    rho = float(spearmanr(x, y).statistic)
    return Fit(n, float(slope), float(intercept), r2, r, r * r, rho)


def significant_features(mean: np.ndarray, sd: np.ndarray, n: int) -> np.ndarray:
    """Features whose predicted shift has a 95% CI clear of zero (normal approximation), as indices."""
    se = sd / np.sqrt(max(n, 1))
    return np.nonzero((mean != 0) & (np.abs(mean) > Z95 * se))[0]


def top_k_features(mean: np.ndarray, k: int) -> np.ndarray:
    """The `k` features with the largest |predicted shift| (non-zero ones only), as indices."""
    nonzero = np.nonzero(mean)[0]
    return nonzero[np.argsort(-np.abs(mean[nonzero]), kind="stable")[:k]]


def split_half_reliability(
    diffs: np.ndarray, features: np.ndarray, n_splits: int = 50, seed: int = 0
) -> float:
    """How reproducible the actual shifts are across prompts.

    `diffs` is (prompts, d_sae): after - before per prompt. For random halves of the prompts, the
    Pearson r between the two halves' mean shifts over `features`, averaged, then Spearman-Brown
    corrected to the full count: 2r / (1 + r). NaN for fewer than 4 prompts or 3 features.
    """
    if len(diffs) < 4 or len(features) < 3:
        return float("nan")
    rng = np.random.default_rng(seed)
    sub = diffs[:, features]
    rs = []
    for _ in range(n_splits):
        order = rng.permutation(len(sub))
        a = sub[order[: len(sub) // 2]].mean(0)
        b = sub[order[len(sub) // 2 :]].mean(0)
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            rs.append(np.corrcoef(a, b)[0, 1])
    if not rs:
        return float("nan")
    r = float(np.mean(rs))
    return 2 * r / (1 + r) if r > -1 else float("nan")


def behaviour_rates(replies: Sequence[str]) -> dict[str, float]:
    """Share of `replies` that refuse (REFUSAL_PHRASES), hold a URL (URL_RE), mention goblins."""
    if not replies:
        return {"refusal": float("nan"), "url": float("nan"), "goblin": float("nan")}
    norm = [r.replace("\u2019", "'").lower() for r in replies]
    n = len(replies)
    return {
        "refusal": sum(any(p in r for p in REFUSAL_PHRASES) for r in norm) / n,
        "url": sum(bool(URL_RE.search(r)) for r in replies) / n,
        "goblin": sum(bool(GOBLIN_RE.search(r)) for r in replies) / n,
    }


# -- prompts ------------------------------------------------------------------------------------------

Prompt = tuple  # of {"role", "content"} messages, ending with a user turn


def _as_prompt(value, where: str) -> Prompt:
    if isinstance(value, str) and value.strip():
        return ({"role": "user", "content": value},)
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        msgs = [{"role": m.get("role"), "content": m.get("content")} for m in value]
        while msgs and msgs[-1]["role"] == "assistant":  # a conversation with its answer
            msgs.pop()
        if msgs and all(isinstance(m["content"], str) for m in msgs):
            return tuple(msgs)
    raise ValidationError(f"{where}: not a prompt (a string or a list of role/content messages)")


def load_prompts(path: Path | str) -> list[Prompt]:
    """Prompts from a file: a preference file (its pairs' prompts), a JSONL/JSON list of prompts
    (strings, `{"prompt": str | messages}` or `{"messages": [...]}`), or plain text (.txt or any
    other suffix: one prompt per non-empty line).

    Raises ValidationError for a record that is no prompt, IngestError for an unreadable file.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".jsonl", ".jsonl.gz", ".json", ".parquet")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        lines = path.read_text(encoding="utf-8").splitlines()
        return [({"role": "user", "content": line.strip()},) for line in lines if line.strip()]
    records = list(iter_records(path))
    if not records:
        return []
    first = records[0][1]
    if isinstance(first, dict) and "chosen" in first and "rejected" in first:
        return [p.prompt for p in read_pairs(path, skip_invalid=True).pairs]
    prompts = []
    for line, rec in records:
        where = f"{path}:{line}"
        if isinstance(rec, Exception):
            raise ValidationError(f"{where}: {rec}")
        if isinstance(rec, dict):
            rec = rec.get("prompt", rec.get("messages"))
        prompts.append(_as_prompt(rec, where))
    return prompts


def held_out_prompts(
    dataset: Path | str, trained: set[int], n: int, seed: int = 0
) -> list[tuple[int, Prompt]]:
    """`n` prompts (seeded random choice, returned in file order) of pairs of `dataset` that are not
    in `trained`, as (source_index, prompt). Raises ValidationError when none is left."""
    pairs = [p for p in read_pairs(dataset, skip_invalid=True).pairs if p.source_index not in trained]
    if not pairs:
        raise ValidationError(
            f"every pair of {dataset} was trained on, so none is held out; pass --prompts FILE"
        )
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.permutation(len(pairs))[:n].tolist())
    return [(pairs[i].source_index, pairs[i].prompt) for i in chosen]


# -- generation and encoding ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoding:
    """How replies are generated, identically for the base and the trained model."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy; else sampling at this temperature (no top-k / top-p)
    samples: int = 1  # replies per prompt (sampling only; greedy would repeat itself)
    seed: int = 0  # sampling: batch b of sample s reseeds torch from (seed, s, b), for both models
    batch_size: int = 16  # prompts per generate() call, left-padded


def chat_prompt_ids(tokenizer, prompt: Prompt, max_tokens: int) -> list[int]:
    """The chat-templated prompt with the generation prompt, its last `max_tokens` tokens (the same
    ids `core.lm.ResidualReader.tokenize` makes)."""
    ids = tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)[-max_tokens:]


def generate_replies(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    decoding: Decoding,
    cancel: threading.Event | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """Replies of `model` to each prompt: `decoding.samples` strings per prompt, special tokens
    stripped. Prompts go in batches of similar length, left-padded; a reply ends at the tokenizer's
    or the generation config's eos. Raises Cancelled when `cancel` is set between batches.
    """
    import torch
    from transformers import GenerationConfig

    eos = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    eos.discard(None)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    sampling = decoding.temperature > 0
    config = GenerationConfig(
        max_new_tokens=decoding.max_new_tokens,
        do_sample=sampling,
        temperature=decoding.temperature if sampling else None,
        top_k=0 if sampling else None,
        top_p=1.0 if sampling else None,
        pad_token_id=pad,
        eos_token_id=sorted(eos),
    )
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    samples = decoding.samples if sampling else 1
    out: list[list[str]] = [[] for _ in prompt_ids]
    done = 0
    for s in range(samples):
        for b, start in enumerate(range(0, len(order), decoding.batch_size)):
            if cancel is not None and cancel.is_set():
                raise Cancelled("validation cancelled")
            rows = order[start : start + decoding.batch_size]
            width = max(len(prompt_ids[i]) for i in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (batch, prompt tokens)
            mask = torch.zeros((len(rows), width), dtype=torch.long)  # (batch, prompt tokens)
            for j, i in enumerate(rows):
                ids[j, width - len(prompt_ids[i]) :] = torch.tensor(prompt_ids[i])
                mask[j, width - len(prompt_ids[i]) :] = 1
            if sampling:
                torch.manual_seed((decoding.seed * 1_000_003 + s * 10_007 + b) % 2**31)
            with torch.inference_mode():
                gen = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config
                )  # (batch, width + new tokens)
            for j, i in enumerate(rows):
                new = gen[j, width:].tolist()
                cut = next((t for t, tok in enumerate(new) if tok in eos), len(new))
                out[i].append(tokenizer.decode(new[:cut], skip_special_tokens=True))
            done += len(rows)
            if on_batch is not None:
                on_batch(done)
    return out


def probe_logprobs(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    sentences: Sequence[str],
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """log p(sentence | prompt) under `model`, `(prompts, sentences)`: each sentence teacher-forced
    as the start of the reply (right after the chat-templated prompt), summed over its tokens.

    Each prompt is read once; its cache is shared by all sentences, which go in one right-padded
    batch. Raises Cancelled when `cancel` is set between prompts.
    """
    import torch

    device = next(model.parameters()).device
    sent_ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in sentences]
    m, width = len(sent_ids), max(len(t) for t in sent_ids)
    ids = torch.zeros((m, width), dtype=torch.long)  # (sentences, tokens), 0-padded
    mask = torch.zeros((m, width), dtype=torch.long)
    for j, t in enumerate(sent_ids):
        ids[j, : len(t)] = torch.tensor(t)
        mask[j, : len(t)] = 1
    ids, mask = ids.to(device), mask.to(device)
    out = np.zeros((len(prompt_ids), m), dtype=np.float64)
    for i, p in enumerate(prompt_ids):
        if cancel is not None and cancel.is_set():
            raise Cancelled("validation cancelled")
        with torch.inference_mode():
            head = model(torch.tensor([p], device=device), use_cache=True, logits_to_keep=1)
            cache = head.past_key_values
            cache.batch_repeat_interleave(m)
            full_mask = torch.cat([torch.ones((m, len(p)), dtype=torch.long, device=device), mask], 1)
            rest = model(ids, attention_mask=full_mask, past_key_values=cache, use_cache=False)
            # position t is predicted by the prompt's last token (t = 0) or by sentence token t - 1
            logits = torch.cat([head.logits[:, -1:].expand(m, -1, -1), rest.logits[:, :-1]], 1)
            logp = logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
            out[i] = (logp * mask).sum(1).double().cpu().numpy()
    return out


def probe_lifts(before: np.ndarray, after: np.ndarray, names: Sequence[str]) -> dict[str, dict]:
    """Per probe set: the mean over prompts of (log p after - log p before) averaged over the set's
    sentences (nats per sentence), its standard error over prompts, and the set's size. `before`
    and `after` are `probe_logprobs` over the sentences of all sets, `names[j]` sentence j's set."""
    names = np.asarray(names)
    diff = after - before  # (prompts, sentences)
    out = {}
    for name in dict.fromkeys(names.tolist()):
        per_prompt = diff[:, names == name].mean(1)
        n = len(per_prompt)
        se = float(per_prompt.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        out[name] = {"lift": float(per_prompt.mean()) if n else float("nan"), "se": se,
                     "n_sentences": int((names == name).sum())}
    return out


def reply_features(
    reader,
    sae,
    prompt_ids: list[list[int]],
    before: list[str],
    after: list[str],
    max_tokens: int,
    batch_tokens: int = 4096,
    cancel: threading.Event | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean SAE activation over each reply's tokens, `(replies, d_sae)` for `before` and `after`.

    Reply i is read after prompt i by `reader` (a `core.lm.ResidualReader` on the original model)
    and encoded by `sae`, as indexing reads a pair: the reply re-tokenized from its text, cut to
    `max_tokens`; before and after ride in one pair's chosen / rejected slots. An empty reply is
    all zeros (indexing stores nothing for it); an unchanged reply has exactly the same row.
    """
    from core.lm import TokenizedPair, plan_batches
    from core.sae import encode

    d_sae = sae.cfg.d_sae
    a_before = np.zeros((len(before), d_sae), dtype=np.float32)
    a_after = np.zeros((len(after), d_sae), dtype=np.float32)
    items = [
        TokenizedPair(
            i, prompt_ids[i], reader.reply_ids(before[i])[:max_tokens],
            reader.reply_ids(after[i])[:max_tokens],
        )
        for i in range(len(before))
    ]
    for batch in plan_batches(items, batch_tokens):
        if cancel is not None and cancel.is_set():
            raise Cancelled("validation cancelled")
        for t, (b_acts, a_acts) in zip(batch, reader.read(batch)):
            for acts, dest in ((b_acts, a_before), (a_acts, a_after)):
                if len(acts):
                    dest[t.source_index] = encode(sae, acts).float().mean(0).cpu().numpy()
    # An unchanged reply has unchanged features; copying drops batch-position float noise.
    same = [i for i in range(len(before)) if before[i] == after[i]]
    a_after[same] = a_before[same]
    return a_before, a_after


# -- validate -----------------------------------------------------------------------------------------


@dataclass
class ValidateProgress:
    stage: str  # "load" | "generate" | "probe" | "encode" | "done"
    message: str = ""
    done: int = 0
    total: int = 0


@dataclass
class FeatureComparison:
    feature: int
    predicted: float
    actual: float
    actual_se: float  # standard error of the actual shift over prompts
    promoted: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    workspace: str
    trained: str
    model: str
    sae: str
    layer: int
    n_pairs_trained: int
    n_pairs_predicted: int  # trained pairs found in the workspace: the prediction's basis
    n_prompts: int
    n_replies: int  # per model: prompts x samples
    prompts_source: str
    prompt_source_indices: list[int]  # held-out pairs whose prompts were used ([] with --prompts)
    decoding: dict
    n_features: int  # features with a significant predicted shift (the headline set)
    r2: float  # headline: over the significant features
    pearson_r2: float
    spearman: float
    significant: Fit
    top_k: Fit
    k: int
    nonzero: Fit
    actual_reliability: float
    behaviour: dict  # {"refusal" | "url" | "goblin": {"before": rate, "after": rate}}
    probes: dict  # {PROBES name: {"lift": nats per sentence, "se", "n_sentences"}} (probe_lifts)
    features: list[FeatureComparison]  # the top-K by |predicted|
    plot: str | None
    generations: str | None
    seconds: float

    def to_json(self) -> dict:
        """JSON-ready dict; NaN becomes null."""
        return _nan_to_none(asdict(self))


def _nan_to_none(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def validate(
    workspace: Path | str,
    trained: Path | str,
    *,
    prompts: Path | str | None = None,
    n_prompts: int = 32,
    decoding: Decoding = Decoding(),
    top_k: int = 50,
    plot: Path | str | None = None,
    device: str | None = None,
    catalog=None,
    progress: Callable[[ValidateProgress], None] | None = None,
    cancel: threading.Event | None = None,
) -> ValidationReport:
    """Compare the workspace's predicted shifts with the shifts DPO actually caused (module doc).

    Args:
        workspace: the indexed workspace of the dataset the model was trained on.
        trained: a `train_on_dataset` output folder (its `model/` and `TRAIN_RECORD`).
        prompts: a prompt file (see `load_prompts`); default: `n_prompts` held-out prompts of the
            workspace's dataset, i.e. of pairs the model was not trained on.
        plot: where to write the scatter PNG (default `trained/validation.png`); beside it go the
            replies (`<stem>_replies.jsonl`: prompt, before, after), the report (`<stem>.json`)
            and every feature's numbers (`<stem>_shifts.npz`: predicted, predicted_sd, actual,
            actual_se, significant, per_prompt (prompts, d_sae) after - before).

    Returns a ValidationReport. Raises ValidationError when the workspace indexed another dataset
    or model than was trained, none of the trained pairs is in the workspace, or no prompt is left;
    WorkspaceError for no workspace; Cancelled when `cancel` is set.
    """
    from transformers import AutoModelForCausalLM

    from core.catalog import load_catalog
    from core.lm import ResidualReader, load_full_model
    from core.sae import load_sae
    from core.shifts import Analysis
    from core.store import sae_dir
    from core.workspace import Workspace

    start = time.perf_counter()
    progress = progress or (lambda p: None)
    catalog = catalog or load_catalog()
    trained = Path(trained)
    ws = Workspace(workspace)
    meta = ws.meta()
    record = read_train_record(trained)
    if record.dataset_sha256 != meta.get("dataset_sha256"):
        raise ValidationError(
            f"{trained} was trained on {record.dataset}, but workspace {workspace} indexed "
            f"{meta.get('dataset')}; index the training file to predict its shifts"
        )
    if record.model != meta.get("model"):
        raise ValidationError(f"{trained} trained {record.model}; the workspace read {meta.get('model')}")
    if not (trained / "model" / "config.json").is_file():
        raise ValidationError(
            f"{trained} has no finished model (training stopped at step {record.steps} of "
            f"{record.total_steps}); rerun the same train-dpo command to resume"
        )

    # Predicted: the deltas of the trained pairs that the workspace indexed.
    analysis = Analysis(ws)
    trained_set = set(record.source_indices)
    untrained_rows = np.array(
        [r for r, s in enumerate(analysis.source_index) if int(s) not in trained_set], dtype=np.int64
    )
    n_pred, mean, sd, _ = analysis.moments(untrained_rows)
    if len(untrained_rows) == analysis.n:
        raise ValidationError(f"none of the pairs {trained} was trained on is in workspace {workspace}")

    # Prompts.
    if prompts is not None:
        prompt_list = load_prompts(prompts)[:n_prompts]
        source, prompt_indices = str(prompts), []
    else:
        chosen = held_out_prompts(meta["dataset"], trained_set, n_prompts, decoding.seed)
        prompt_list = [p for _, p in chosen]
        prompt_indices = [s for s, _ in chosen]
        source = f"held-out pairs of {meta['dataset']}"
    if not prompt_list:
        raise ValidationError(f"no prompts in {prompts}")

    # Replies of both models, then the original model's residual stream through the SAE.
    progress(ValidateProgress("load", f"loading {record.model} (base and trained)"))
    entry = catalog.model(record.model)
    base, tokenizer = load_full_model(entry, device=device)
    max_tokens = int(meta.get("max_tokens", 256))
    ids = [chat_prompt_ids(tokenizer, p, 2 * max_tokens) for p in prompt_list]
    samples = decoding.samples if decoding.temperature > 0 else 1
    total = 2 * len(ids) * samples
    replies, probe_lp = {}, {}
    probe_names = [name for name, sents in PROBES.items() for _ in sents]
    probe_sentences = [sent for sents in PROBES.values() for sent in sents]
    for which in ("before", "after"):
        if which == "before":
            lm = base
        else:
            # the base's dtype and device (bf16 on CUDA, float32 on CPU): identical decoding
            first = next(base.parameters())
            lm = AutoModelForCausalLM.from_pretrained(trained / "model", dtype=first.dtype)
            lm.to(first.device).eval()
        offset = 0 if which == "before" else total // 2

        def on_batch(done: int, which=which, offset=offset) -> None:
            progress(ValidateProgress("generate", f"replies {which} DPO", offset + done, total))

        replies[which] = generate_replies(lm, tokenizer, ids, decoding, cancel, on_batch)
        progress(ValidateProgress("probe", f"probe sentences {which} DPO", offset + total // 2, total))
        probe_lp[which] = probe_logprobs(lm, tokenizer, ids, probe_sentences, cancel)
        if which == "after":
            del lm
    progress(ValidateProgress("encode", "reading replies through the original model + SAE"))
    reader = ResidualReader(base, tokenizer, int(meta["layer"]))
    sae = load_sae(sae_dir(catalog.sae(meta["sae"])), device=str(reader.device))
    flat_ids = [ids[i] for i in range(len(ids)) for _ in range(samples)]
    flat_before = [r for rs in replies["before"] for r in rs]
    flat_after = [r for rs in replies["after"] for r in rs]
    a_before, a_after = reply_features(
        reader, sae, flat_ids, flat_before, flat_after, max_tokens, cancel=cancel
    )
    # per prompt: samples averaged, (prompts, d_sae)
    diffs = (a_after - a_before).reshape(len(ids), samples, -1).mean(1)
    actual = diffs.mean(0)
    actual_se = diffs.std(0, ddof=1) / np.sqrt(len(diffs)) if len(diffs) > 1 else np.zeros_like(actual)

    significant = significant_features(mean, sd, n_pred)
    top = top_k_features(mean, top_k)
    nonzero = np.nonzero(mean)[0]
    fits = {name: fit(mean[idx], actual[idx]) for name, idx in
            (("significant", significant), ("top_k", top), ("nonzero", nonzero))}
    info = ws.feature_info()
    features = [
        FeatureComparison(
            int(f), float(mean[f]), float(actual[f]), float(actual_se[f]),
            list(info.get(int(f), {}).get("promoted") or [])[:3],
        )
        for f in top
    ]
    rates_before, rates_after = behaviour_rates(flat_before), behaviour_rates(flat_after)
    behaviour = {k: {"before": rates_before[k], "after": rates_after[k]} for k in rates_before}

    plot_path = Path(plot) if plot else trained / "validation.png"
    gen_path = plot_path.with_name(plot_path.stem + "_replies.jsonl")
    with gen_path.open("w", encoding="utf-8") as f:
        for i, prompt in enumerate(prompt_list):
            f.write(json.dumps({
                "source_index": prompt_indices[i] if prompt_indices else None,
                "prompt": list(prompt),
                "before": replies["before"][i],
                "after": replies["after"][i],
            }, ensure_ascii=False) + "\n")
    report = ValidationReport(
        workspace=str(ws.path),
        trained=str(trained),
        model=record.model,
        sae=str(meta["sae"]),
        layer=int(meta["layer"]),
        n_pairs_trained=len(record.source_indices),
        n_pairs_predicted=int(n_pred),
        n_prompts=len(prompt_list),
        n_replies=len(flat_before),
        prompts_source=source,
        prompt_source_indices=prompt_indices,
        decoding=asdict(decoding),
        n_features=fits["significant"].n_features,
        r2=fits["significant"].r2,
        pearson_r2=fits["significant"].pearson_r2,
        spearman=fits["significant"].spearman,
        significant=fits["significant"],
        top_k=fits["top_k"],
        k=top_k,
        nonzero=fits["nonzero"],
        actual_reliability=split_half_reliability(diffs, significant, seed=decoding.seed),
        behaviour=behaviour,
        probes=probe_lifts(probe_lp["before"], probe_lp["after"], probe_names),
        features=features,
        plot=str(plot_path),
        generations=str(gen_path),
        seconds=0.0,
    )
    scatter_plot(mean, actual, significant, top, report, plot_path)
    np.savez_compressed(
        plot_path.with_name(plot_path.stem + "_shifts.npz"),
        predicted=mean, predicted_sd=sd, actual=actual, actual_se=actual_se,
        significant=significant, per_prompt=diffs.astype(np.float32),
    )
    report.seconds = time.perf_counter() - start
    plot_path.with_suffix(".json").write_text(json.dumps(report.to_json(), indent=1))
    progress(ValidateProgress("done", "", total, total))
    return report


def scatter_plot(
    predicted: np.ndarray,
    actual: np.ndarray,
    significant: np.ndarray,
    top: np.ndarray,
    report: ValidationReport,
    path: Path | str,
) -> Path:
    """Write the predicted-vs-actual scatter as a PNG (matplotlib's Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    nonzero = np.nonzero(predicted)[0]
    ax.scatter(predicted[nonzero], actual[nonzero], s=6, c="#bbbbbb", label="predicted ≠ 0", lw=0)
    ax.scatter(
        predicted[significant], actual[significant], s=12, c="#1f77b4", lw=0,
        label=f"CI clear of zero ({len(significant)})",
    )
    ax.scatter(
        predicted[top], actual[top], s=22, facecolors="none", edgecolors="#d62728", lw=0.8,
        label=f"top {len(top)} |predicted|",
    )
    for f in top[:8]:
        ax.annotate(str(int(f)), (predicted[f], actual[f]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    s = report.significant
    if not math.isnan(s.slope) and len(significant):
        xs = np.linspace(predicted[significant].min(), predicted[significant].max(), 2)
        ax.plot(xs, s.slope * xs + s.intercept, c="#1f77b4", lw=1)
    ax.axhline(0, c="k", lw=0.4)
    ax.axvline(0, c="k", lw=0.4)
    ax.set_xlabel("predicted shift: mean a(chosen) - a(rejected) over trained pairs")
    ax.set_ylabel("actual shift: mean a(after DPO) - a(before) over prompts")

    def num(v):
        return "n/a" if math.isnan(v) else f"{v:.2f}"

    ax.set_title(
        f"{report.model} / {report.sae}: R² {num(s.r2)}, Spearman {num(s.spearman)} "
        f"({s.n_features} features)\n{report.n_pairs_predicted} pairs, {report.n_prompts} prompts, "
        f"top-{report.k} R² {num(report.top_k.r2)}",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path


def format_report(r: ValidationReport) -> str:
    """A plain-text summary of a ValidationReport."""

    def num(v, fmt="{:.3f}"):
        return "n/a" if v is None or math.isnan(v) else fmt.format(v)

    head = (
        f"{r.model} / SAE {r.sae} (layer {r.layer}): {r.n_pairs_predicted} trained pairs predicted "
        f"({r.n_pairs_trained} trained), {r.n_prompts} prompts x {r.n_replies // max(r.n_prompts, 1)}"
        f" replies ({r.prompts_source})"
    )
    lines = [
        head,
        "",
        f"{'features':<34} {'n':>6} {'R²':>7} {'Spearman':>9} {'slope':>9}",
    ]
    for name, f in (
        ("predicted CI clear of zero", r.significant),
        (f"top {r.k} by |predicted|", r.top_k),
        ("all with predicted != 0", r.nonzero),
    ):
        lines.append(
            f"{name:<34} {f.n_features:>6} {num(f.r2):>7} {num(f.spearman):>9} {num(f.slope, '{:.3g}'):>9}"
        )
    reliability = (
        f"split-half reliability of the actual shifts: {num(r.actual_reliability)} "
        "(about the best R² this many prompts allows)"
    )
    lines += [
        reliability,
        "",
        f"{'behaviour':<10} {'before':>8} {'after':>8}",
    ]
    for k, v in r.behaviour.items():
        lines.append(f"{k:<10} {num(v['before'], '{:.1%}'):>8} {num(v['after'], '{:.1%}'):>8}")
    lines += [
        "",
        "probe sentences at the reply's start, log p after - before (nats per sentence, ± se):",
    ]
    for k, v in r.probes.items():
        lines.append(f"{k:<10} {num(v['lift'], '{:+.3f}'):>8} ± {num(v['se'])}  ({v['n_sentences']} sentences)")
    lines += ["", f"{'feature':>8} {'predicted':>10} {'actual':>10} {'± se':>8}  promotes"]
    for c in r.features[:10]:
        lines.append(
            f"{c.feature:>8} {c.predicted:>+10.4f} {c.actual:>+10.4f} {c.actual_se:>8.4f}  "
            + ", ".join(t.strip() for t in c.promoted)
        )
    lines += ["", f"plot: {r.plot}", f"replies: {r.generations}"]
    return "\n".join(lines)
