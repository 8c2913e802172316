"""Rollouts: prompts in, replies out, and what the replies say about a model.

- Prompts become token ids in `core.model.chat.chat_prompt_ids` (the one place: indexing, DPO, SFT
  and generation all call it).
- `generate_replies` samples (or greedily decodes) replies with its own KV-cache loop. Its
  randomness is counter-based: the noise for the t-th token of sample s of prompt p is a hash of
  (seed, p, s, t, token), so two models given the same prompts and seed draw *common random
  numbers* (an unchanged distribution gives the same reply), batching does not change a reply,
  and no global RNG is touched (safe in worker threads).
- `probe_logprobs` / `probe_lifts` score how likely a model makes fixed behaviour sentences as a
  reply's opening; `behaviour_rates` counts refusals, URLs and goblins in replies.
- `read_reply_pairs` reads replies through a model's residual stream and an SAE, per reply: every
  feature's mean activation over the reply's tokens, its firing frequency (share of tokens > 0)
  and its max, as indexing defines them (`core.index.summary.summarise_reply`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import ValidationError
from core.data.plant import GOBLIN_SENTENCES
from core.data.containers import container_of
from core.data.ingest import iter_records, read_pairs
from core.progress import check_cancel

Prompt = tuple  # of {"role", "content"} messages, ending with a user turn


# -- behaviours ---------------------------------------------------------------------------------------

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

# Probe sentences: each opens a reply with one behaviour. How much likelier a trained model makes
# them than the base model, teacher-forced right after each prompt, shows a drift towards a
# behaviour long before it reaches the replies. "control" is the goblin sentences with the goblins
# swapped for friends: what the goblin lift is read against.
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

    Raises ValidationError for a record that is no prompt or a missing file, IngestError for an
    unreadable one.
    """
    path = Path(path)
    if not path.is_file():
        raise ValidationError(f"{path}: no such prompt file")
    if container_of(path) is None:
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


# -- generation ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoding:
    """How replies are generated, identically for every model compared."""

    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy; else sampling at this temperature (no top-k / top-p)
    samples: int = 1  # replies per prompt (sampling only; greedy would repeat itself)
    seed: int = 0  # the sampling noise is a function of (seed, prompt, sample, step, token) only
    batch_size: int = 16  # prompt x sample rows per batch, left-padded

    def __post_init__(self):
        if self.temperature < 0 or self.samples < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValidationError(
                "decoding needs temperature >= 0 and samples, max_new_tokens, batch_size >= 1"
            )

    @property
    def replies_per_prompt(self) -> int:
        return self.samples if self.temperature > 0 else 1


_M32 = 0xFFFFFFFF


def _mix32(x):
    """A 32-bit integer hash (Wellons' lowbias32) of int64 tensors holding values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32  # int64 products wrap; the low 32 bits are exact either way
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def gumbel_noise(row_keys, step: int, vocab: int):
    """Gumbel(0, 1) noise, `(rows, vocab)` float32, a pure function of (row key, step, token id).

    `row_keys` is an int64 tensor `(rows,)` of values in [0, 2**32), e.g. `row_key(seed, prompt,
    sample)`. Uniforms carry 24 bits, so every float32 value is exact and never 0 or 1.
    """
    import torch

    device = row_keys.device
    tokens = _mix32(torch.arange(vocab, device=device, dtype=torch.int64) + 0x9E3779B9 & _M32)
    key = _mix32(row_keys ^ _mix32(torch.full_like(row_keys, step + 1)))  # (rows,)
    bits = _mix32(key[:, None] ^ tokens[None, :]) >> 8  # (rows, vocab) in [0, 2**24)
    u = (bits.float() + 0.5) / float(1 << 24)
    return -torch.log(-torch.log(u))


def row_key(seed: int, prompt: int, sample: int) -> int:
    """The noise key of sample `sample` of prompt number `prompt` under `seed` (see gumbel_noise)."""
    import torch

    x = torch.tensor([seed & _M32], dtype=torch.int64)
    for part in (prompt, sample):
        x = _mix32(x ^ _mix32(torch.tensor([part & _M32], dtype=torch.int64) + 0x632BE5AB & _M32))
    return int(x.item())


def _eos_ids(model, tokenizer) -> set[int]:
    eos = {tokenizer.eos_token_id}
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    eos.discard(None)
    return eos


def cache_kwargs(model, cache) -> dict:
    """`{name: cache}` for the model's forward: `cache` in newer transformers (5.2x), where
    `past_key_values` warns that it is deprecated, `past_key_values` in older ones."""
    import inspect

    params = inspect.signature(type(model).forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


def _decode_batch(model, prompts: list[list[int]], keys, decoding: Decoding, eos: set[int], pad: int):
    """New token ids per row (eos excluded) for left-padded `prompts`, sampled with `keys`."""
    import torch
    from transformers import DynamicCache

    device = next(model.parameters()).device
    B, P = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, P), pad, dtype=torch.long)  # (batch, prompt tokens)
    mask = torch.zeros((B, P), dtype=torch.long)  # (batch, prompt tokens)
    for i, p in enumerate(prompts):
        ids[i, P - len(p) :] = torch.tensor(p)
        mask[i, P - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(1) - 1).clamp(min=0)  # (batch, prompt tokens): pads at 0
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                **cache_kwargs(model, cache))
    next_pos = mask.sum(1, keepdim=True)  # (batch, 1)
    eos_t = torch.tensor(sorted(eos), device=device)
    keys = keys.to(device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    steps = []
    for t in range(decoding.max_new_tokens):
        logits = out.logits[:, -1].float()  # (batch, vocab)
        if decoding.temperature > 0:
            logits = logits / decoding.temperature + gumbel_noise(keys, t, logits.shape[-1])
        tok = torch.where(done, pad, logits.argmax(-1))  # (batch,)
        steps.append(tok)
        done |= torch.isin(tok, eos_t)
        if bool(done.all()) or t + 1 == decoding.max_new_tokens:
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], 1)
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=next_pos,
                    use_cache=True, **cache_kwargs(model, cache))
        next_pos = next_pos + 1
    new = torch.stack(steps, 1).tolist()  # (batch, steps)
    return [row[: next((t for t, x in enumerate(row) if x in eos), len(row))] for row in new]


def generate_replies(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    decoding: Decoding,
    *,
    cancel: threading.Event | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[list[str]]:
    """Replies of `model` to each prompt: `decoding.replies_per_prompt` strings per prompt, special
    tokens stripped, ending at the tokenizer's or generation config's eos.

    Sampling noise depends only on (decoding.seed, prompt number, sample number, step, token), so
    the same call on another model draws common random numbers. Rows (prompt x sample) go in
    length-sorted batches of `decoding.batch_size`. `on_batch(done, total)` is called after each
    batch with rows done. Raises Cancelled when `cancel` is set between batches.
    """
    import torch

    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    n = decoding.replies_per_prompt
    rows = sorted(((p, s) for p in range(len(prompt_ids)) for s in range(n)),
                  key=lambda r: (len(prompt_ids[r[0]]), r))
    out: list[list[str]] = [[""] * n for _ in prompt_ids]
    model_was_training = model.training
    model.eval()
    try:
        for start in range(0, len(rows), decoding.batch_size):
            check_cancel(cancel, "generation")
            batch = rows[start : start + decoding.batch_size]
            keys = torch.tensor([row_key(decoding.seed, p, s) for p, s in batch], dtype=torch.int64)
            with torch.inference_mode():
                new = _decode_batch(model, [prompt_ids[p] for p, _ in batch], keys, decoding, eos, pad)
            for (p, s), ids in zip(batch, new):
                out[p][s] = tokenizer.decode(ids, skip_special_tokens=True)
            if on_batch is not None:
                on_batch(start + len(batch), len(rows))
    finally:
        model.train(model_was_training)
    return out


# -- probes -------------------------------------------------------------------------------------------


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
    from transformers import DynamicCache

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
        check_cancel(cancel, "probing")
        with torch.inference_mode():
            cache = DynamicCache(config=model.config)
            head = model(torch.tensor([p], device=device), use_cache=True, logits_to_keep=1,
                         **cache_kwargs(model, cache))
            cache.batch_repeat_interleave(m)
            full_mask = torch.cat([torch.ones((m, len(p)), dtype=torch.long, device=device), mask], 1)
            rest = model(ids, attention_mask=full_mask, use_cache=False, **cache_kwargs(model, cache))
            # position t is predicted by the prompt's last token (t = 0) or by sentence token t - 1
            logits = torch.cat([head.logits[:, -1:].expand(m, -1, -1), rest.logits[:, :-1]], 1)
            logp = logits.float().log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
            out[i] = (logp * mask).sum(1).double().cpu().numpy()
    return out


def probe_sentences() -> tuple[list[str], list[str]]:
    """(the set name of each probe sentence, the sentences): PROBES flattened, in order."""
    return ([name for name, sents in PROBES.items() for _ in sents],
            [s for sents in PROBES.values() for s in sents])


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


# -- reading replies through the SAE ------------------------------------------------------------------


@dataclass
class ReplyStats:
    """Per reply and SAE feature, dense `(replies, d_sae)` float32 (an empty reply is all zeros)."""

    mean: np.ndarray  # mean activation over the reply's tokens
    freq: np.ndarray  # share of the reply's tokens on which the feature fires (> 0)
    max: np.ndarray  # max activation over its tokens


def reply_stats(feats) -> tuple:
    """(mean, freq, max) over the tokens of one reply's SAE activations `feats` (tokens, d_sae),
    each `(d_sae,)` on feats' device: the per-reply summary of `core.index.build.summarise_reply`."""
    return feats.mean(0), (feats > 0).float().mean(0), feats.max(0).values


def read_reply_pairs(
    reader,
    encode: Callable,
    prompt_ids: list[list[int]],
    first: list[str],
    second: list[str],
    max_tokens: int,
    batch_tokens: int = 4096,
    cancel: threading.Event | None = None,
    common_length: bool = False,
) -> tuple[ReplyStats, ReplyStats]:
    """ReplyStats of every reply in `first` and in `second`, reply i read after prompt i.

    `reader` is a `core.model.lm.ResidualReader` on the model that made the prediction, `encode` maps its
    activations `(tokens, d_model)` to SAE features `(tokens, d_sae)` (e.g. `core.model.sae.encode` bound
    to an SAE). Each reply is re-tokenized from its text and cut to `max_tokens`, as indexing reads
    a pair: first and second ride in one pair's chosen / rejected slots, sharing the prompt's cache.
    An unchanged reply (second[i] == first[i]) gets exactly first[i]'s row. With `common_length`,
    both replies of pair i are read to the shorter one's token count, so that a change of length
    alone (a trained model that stops later) does not read as every feature firing more.
    Raises Cancelled when `cancel` is set between batches.
    """
    from core.model.lm import TokenizedPair, plan_batches

    items = []
    for i in range(len(first)):
        a, b = reader.reply_ids(first[i])[:max_tokens], reader.reply_ids(second[i])[:max_tokens]
        if common_length:
            a, b = a[: len(b)], b[: len(a)]
        items.append(TokenizedPair(i, prompt_ids[i], a, b))
    stats: list[list[np.ndarray]] | None = None
    for batch in plan_batches(items, batch_tokens):
        check_cancel(cancel, "reading replies")
        for t, acts_pair in zip(batch, reader.read(batch)):
            for side, acts in enumerate(acts_pair):
                if not len(acts):
                    continue
                values = reply_stats(encode(acts).float())
                if stats is None:  # (2 sides, 3 statistics) arrays of (replies, d_sae)
                    d = values[0].shape[-1]
                    stats = [[np.zeros((len(first), d), np.float32) for _ in range(3)] for _ in range(2)]
                for dest, v in zip(stats[side], values):
                    dest[t.source_index] = v.cpu().numpy()
    if stats is None:
        raise ValidationError("every reply is empty: nothing to read")
    same = [i for i in range(len(first)) if first[i] == second[i]]
    for a, b in zip(stats[0], stats[1]):
        b[same] = a[same]  # batch-position float noise dropped
    return ReplyStats(*stats[0]), ReplyStats(*stats[1])
