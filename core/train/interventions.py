"""Changing what DPO learns about one concept, instead of (or besides) filtering pairs.

A concept is a set of SAE features (a concept cluster, a hypothesis' features, or a feature). A
*plan* names one, an intervention kind and its strength, and is saved in the workspace that found
it (`save_plan` / `load_plan`: `plan.json` in the workspace folder); `datadebug train-dpo
--plan WS` applies it. The kinds (Goodfire, "Anatomy of Post-Training", interventions section):

    shape      reward shaping: the DPO logit becomes beta * delta + lam * (s(chosen) - s(rejected)),
               s = the reply's max over its tokens of the residual stream's projection on the
               concept direction, z-scored over all training replies, read from the frozen initial
               model once before training. Pairs whose chosen reply carries more of the concept
               are "explained" by the offset, so the policy need not learn the concept to fit them.
               strength = lam (4 is the paper's setting for most style traits).
    steer      training-time steering: add alpha * sd * v to the policy's residual stream at the
               SAE layer (every position) in every training forward pass, and never otherwise: the
               saved weights carry no hook. v is the unit concept direction, sd the spread (SD) of
               the replies' max projections on it, so alpha is in units of the concept's natural
               variation. The policy finds the concept already present and learns less of it.
               strength = alpha (about 3 for style traits in the paper).
    mask       token-level filtering: reply tokens where the concept fires (the max over its
               features' SAE activations exceeds `strength`, 0 by default: fires at all), widened
               to whole words, are left out of the DPO loss for policy and reference alike.
    inoculate  inoculation as a DPO offset: lam * (i(chosen) - i(rejected)) with i(y) = log p0(y |
               x with the system prompt `text`) - log p0(y | x), the frozen model's log-likelihood
               gain from an instruction that names the behaviour. strength = lam (default 1).

The concept direction is the mean of the features' unit decoder directions, normalised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from core.train.dpo import autocast, collate, sequence_logps
from core.model.chat import chat_prompt_ids
from core.errors import UsageError, WorkspaceError
from core.progress import check_cancel

PLAN_FILE = "plan.json"
KINDS = ("shape", "steer", "mask", "inoculate")
DEFAULT_STRENGTH = {"shape": 4.0, "steer": 3.0, "mask": 0.0, "inoculate": 1.0}


@dataclasses.dataclass(frozen=True)
class Plan:
    """One intervention on one concept, as saved in a workspace (see the module docstring)."""

    kind: str  # one of KINDS
    features: tuple[int, ...]  # the concept's SAE features (of the workspace's SAE)
    strength: float  # shape/inoculate: lambda; steer: alpha; mask: activation threshold
    label: str = ""  # what a person calls the concept ("goblins")
    source: str = ""  # where it came from: "concept 12", "hypothesis 3", "feature 801"
    text: str = ""  # inoculate: the system prompt naming the behaviour
    model: str = ""  # the workspace's model, SAE and layer: where `features` live
    sae: str = ""
    layer: int = -1
    created: str = ""  # ISO time the plan was made
    sae_path: str = ""  # the SAE's folder and weights hash as the workspace recorded them
    sae_sha256: str = ""  # (core.model.store.recorded_sae: found without a catalogue entry)

    @classmethod
    def from_json(cls, raw: dict) -> "Plan":
        known = {f.name for f in dataclasses.fields(cls)}
        raw = {k: v for k, v in raw.items() if k in known}
        return cls(**{**raw, "features": tuple(int(f) for f in raw.get("features", ()))})


def _workspace(ws):
    from core.data.workspace import Workspace

    return ws if isinstance(ws, Workspace) else Workspace(ws)


def make_plan(
    ws,
    kind: str,
    features: Sequence[int],
    strength: float | None = None,
    *,
    label: str = "",
    source: str = "",
    text: str = "",
) -> Plan:
    """A Plan for the workspace `ws` (a path or `core.data.workspace.Workspace`): `kind` of KINDS on the
    concept made of `features`; `strength` defaults to DEFAULT_STRENGTH[kind].

    Raises UsageError for an unknown kind, no features, a feature outside the SAE, a negative
    or non-finite strength, or an inoculation without text; WorkspaceError when `ws` is no indexed workspace.
    """
    w = _workspace(ws)
    meta = w.meta()
    if kind not in KINDS:
        raise UsageError(f"unknown intervention {kind!r}; expected one of {', '.join(KINDS)}")
    feats = tuple(sorted({int(f) for f in features}))
    if not feats:
        raise UsageError("a plan needs at least one feature (the concept to act on)")
    d_sae = int(meta.get("d_sae", 0))
    bad = [f for f in feats if not 0 <= f < d_sae]
    if bad:
        raise UsageError(f"feature {bad[0]} is outside 0..{d_sae - 1} (the workspace's SAE)")
    strength = DEFAULT_STRENGTH[kind] if strength is None else float(strength)
    if not math.isfinite(strength):
        raise UsageError(f"--strength {strength}: must be a finite number")
    if strength < 0:
        raise UsageError(f"strength {strength} must be >= 0")
    if kind == "inoculate" and not text.strip():
        raise UsageError("an inoculation plan needs --text: the system prompt naming the behaviour")
    return Plan(kind, feats, strength, label=label, source=source, text=text,
                model=str(meta.get("model", "")), sae=str(meta.get("sae", "")),
                layer=int(meta.get("layer", -1)), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                sae_path=str(meta.get("sae_path") or ""), sae_sha256=str(meta.get("sae_sha256") or ""))


def save_plan(ws, plan: Plan) -> Path:
    """Save `plan` as the workspace's plan (replacing any earlier one, atomically); returns the file."""
    path = _workspace(ws).path / PLAN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(dataclasses.asdict(plan), indent=1))
    tmp.replace(path)
    return path


def load_plan(ws) -> Plan | None:
    """The workspace's saved plan, or None. Raises WorkspaceError for no workspace."""
    path = _workspace(ws).path / PLAN_FILE
    if not path.is_file():
        return None
    try:
        return Plan.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise WorkspaceError(f"the saved plan {path} cannot be read ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'damaged'}); save it again with "
                             f"`datadebug plan`, or remove it with `datadebug plan --clear`") from None


def clear_plan(ws) -> bool:
    """Remove the workspace's plan; True if there was one."""
    path = _workspace(ws).path / PLAN_FILE
    if path.is_file() or path.is_symlink():
        path.unlink()
        return True
    return False


# -- the maths ----------------------------------------------------------------------------------------


def concept_direction(W_dec: torch.Tensor, features: Sequence[int]) -> torch.Tensor:
    """The unit concept direction `(d_model,)`: the mean of the features' unit decoder rows
    (`W_dec` is `(d_sae, d_model)`), normalised. float32."""
    rows = W_dec[list(features)].float()  # (features, d_model)
    mean = (rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-12)).mean(0)
    return mean / mean.norm().clamp(min=1e-12)


def zscore(values: torch.Tensor) -> torch.Tensor:
    """(values - mean) / SD over all entries (SD 0: all zeros)."""
    sd = values.std()
    if not torch.isfinite(sd) or sd == 0:
        return torch.zeros_like(values)
    return (values - values.mean()) / sd


def shaping_offsets(chosen_max: torch.Tensor, rejected_max: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * (s(chosen) - s(rejected)) per pair `(pairs,)`, s z-scored over all 2 x pairs replies."""
    z = zscore(torch.cat([chosen_max, rejected_max]).float())
    n = len(chosen_max)
    return lam * (z[:n] - z[n:])


def word_starts(tokenizer, ids: Sequence[int], memo: dict | None = None) -> list[bool]:
    """Whether each token of `ids` begins a word: the first token, and any whose text (decoded
    after the token before it, as the tokenizer joins them) starts with whitespace or follows
    whitespace. Works for byte-level BPE ("Ġ"), SentencePiece ("▁") and word-level vocabularies
    alike. Punctuation stays with the word before it. `memo` caches decodings across calls."""
    memo = {} if memo is None else memo

    def text(*toks):
        if toks not in memo:
            memo[toks] = tokenizer.decode(list(toks))
        return memo[toks]

    out = []
    for k, tok in enumerate(ids):
        if k == 0:
            out.append(True)
            continue
        prev = text(ids[k - 1])
        new = text(ids[k - 1], tok)[len(prev):]
        out.append(not new or new[0].isspace() or prev[-1:].isspace())
    return out


def keep_mask(fires: Sequence[bool], starts: Sequence[bool]) -> list[bool]:
    """Per token, whether it stays in the loss: False for every token of a word (a run from one
    word start to the next) in which some token fires."""
    keep, word = [True] * len(fires), []
    for i, (f, s) in enumerate(zip(fires, starts)):
        if s and word:
            if any(fires[j] for j in word):
                for j in word:
                    keep[j] = False
            word = []
        word.append(i)
    if word and any(fires[j] for j in word):
        for j in word:
            keep[j] = False
    return keep


class _Stop(Exception):
    pass


def layer_output(model, layer: int, input_ids, attention_mask) -> torch.Tensor:
    """The residual stream after block `layer` `(batch, tokens, d_model)`: the model runs up to that
    block only (a hook stops it there)."""
    from core.model.lm import decoder_layers

    captured = {}

    def hook(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["h"]


@contextlib.contextmanager
def steering(model, layer: int, vector: torch.Tensor):
    """Inside the block, `vector` `(d_model,)` is added to the output of block `layer` at every
    position; the hook is gone afterwards (also on error)."""
    from core.model.lm import decoder_layers

    def hook(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0]),) + tuple(output[1:])
        return output + vector.to(output)

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# -- interventions for core.train.dpo.train_dpo -------------------------------------------------------------


class BaseIntervention:
    """A `core.train.dpo.Intervention` that changes nothing: subclasses override what they change."""

    def config(self) -> dict:
        return {}

    def pairs(self, pairs):
        return pairs

    def prepare(self, model, examples, batch_size, pad_id, device, weights_dtype, cancel):
        return {}

    def examples(self, examples, cache):
        return examples

    def logit_offsets(self, cache):
        return None

    def policy(self, model, cache):
        return contextlib.nullcontext()


class ConceptIntervention(BaseIntervention):
    """Base of the concept interventions: reads every training reply's max projection on the
    concept direction from the frozen model (and, for `mask`, where the concept fires).

    `sae` needs `W_dec` `(d_sae, d_model)` and, for `mask`, `encode(acts) -> (tokens, d_sae)`
    (an sae-lens SAE or `core.model.sae`'s). `tokenizer` tells word boundaries for `mask`.
    """

    kind = ""

    def __init__(self, plan: Plan, sae, tokenizer=None):
        self.plan = plan
        self.sae = sae
        self.tokenizer = tokenizer
        self.direction = concept_direction(sae.W_dec.detach(), plan.features)  # (d_model,)
        self._memo: dict = {}

    def config(self) -> dict:
        return {"kind": self.plan.kind, "features": list(self.plan.features),
                "strength": self.plan.strength, "layer": self.plan.layer, "text": self.plan.text}

    def _fires(self, acts: torch.Tensor) -> torch.Tensor:
        """(tokens,) bool: where the concept fires in SAE activations of `acts` (tokens, d_model)."""
        from core.model.sae import encode

        feats = encode(self.sae, acts)[:, list(self.plan.features)]  # (tokens, concept features)
        return feats.float().max(-1).values > self.plan.strength

    @torch.inference_mode()
    def prepare(self, model, examples, batch_size, pad_id, device, weights_dtype, cancel):
        """{"chosen_max", "rejected_max"} `(pairs,)`; for `mask` also "chosen_keep" and
        "rejected_keep": the reply tokens' keep flags of all examples, concatenated in order."""
        maxima = {"chosen": [], "rejected": []}
        keeps = {"chosen": [], "rejected": []}
        v = self.direction.to(device)
        for start in range(0, len(examples), batch_size):
            check_cancel(cancel, f"{self.kind} (reading the frozen model)")
            batch = examples[start : start + batch_size]
            input_ids, attention, labels = collate(batch, pad_id, device)  # (2 * batch, tokens)
            with autocast(device, weights_dtype):
                h = layer_output(model, self.plan.layer, input_ids, attention).float()
            proj = h @ v  # (2 * batch, tokens)
            for row in range(len(input_ids)):
                side = "chosen" if row < len(batch) else "rejected"
                reply = labels[row].nonzero()[:, 0]  # reply positions
                maxima[side].append(proj[row, reply].max() if len(reply) else proj.new_tensor(0.0))
                if self.plan.kind == "mask" and len(reply):
                    fires = self._fires(h[row, reply]).tolist()
                    starts = word_starts(self.tokenizer, input_ids[row, reply].tolist(), self._memo)
                    keeps[side].extend(keep_mask(fires, starts))
        out = {f"{s}_max": torch.stack(maxima[s]).cpu() for s in maxima}
        if self.plan.kind == "mask":
            out.update({f"{s}_keep": torch.tensor(keeps[s], dtype=torch.bool) for s in keeps})
        return out


class Shaping(ConceptIntervention):
    kind = "shape"

    def logit_offsets(self, cache):
        return shaping_offsets(cache["chosen_max"], cache["rejected_max"], self.plan.strength)


class Steering(ConceptIntervention):
    kind = "steer"

    def vector(self, cache) -> torch.Tensor:
        """alpha * SD of the replies' max projections * the unit direction, `(d_model,)`."""
        spread = torch.cat([cache["chosen_max"], cache["rejected_max"]]).float().std()
        return self.plan.strength * float(spread) * self.direction

    def policy(self, model, cache):
        return steering(model, self.plan.layer, self.vector(cache).to(next(model.parameters()).device))


class TokenMask(ConceptIntervention):
    kind = "mask"

    def examples(self, examples, cache):
        out, cursor = [], {"chosen": 0, "rejected": 0}
        for e in examples:
            e = dict(e)
            for side in ("chosen", "rejected"):
                mask = list(e[f"{side}_labels_mask"])
                reply = [i for i, m in enumerate(mask) if m]
                keep = cache[f"{side}_keep"][cursor[side] : cursor[side] + len(reply)].tolist()
                cursor[side] += len(reply)
                for i, k in zip(reply, keep):
                    mask[i] = int(k)
                e[f"{side}_labels_mask"] = mask
            out.append(e)
        return out


class Inoculation(ConceptIntervention):
    kind = "inoculate"

    def __init__(self, plan: Plan, sae=None, tokenizer=None, max_prompt_length: int = 256):
        self.plan, self.sae, self.tokenizer = plan, sae, tokenizer
        self.max_prompt_length = max_prompt_length
        self._pairs: Sequence = ()

    def pairs(self, pairs):
        self._pairs = list(pairs)
        return pairs

    @torch.inference_mode()
    def prepare(self, model, examples, batch_size, pad_id, device, weights_dtype, cancel):
        """{"chosen_gain", "rejected_gain"} `(pairs,)`: log p0(reply | system + prompt) -
        log p0(reply | prompt) under the frozen model, for the same reply tokens."""
        system = {"role": "system", "content": self.plan.text}
        gains = {"chosen": [], "rejected": []}
        for start in range(0, len(examples), batch_size):
            check_cancel(cancel, "inoculation (reading the frozen model)")
            plain = examples[start : start + batch_size]
            told = []
            for e, p in zip(plain, self._pairs[start : start + batch_size]):
                prompt = [system, *[m for m in p.prompt if m.get("role") != "system"]]
                ids = chat_prompt_ids(self.tokenizer, prompt, self.max_prompt_length)
                t = {"prompt_length": len(ids)}
                for s in ("chosen", "rejected"):  # the same reply tokens, after the instructed prompt
                    t[f"{s}_input_ids"] = ids + e[f"{s}_input_ids"][e["prompt_length"]:]
                    t[f"{s}_labels_mask"] = [0] * len(ids) + e[f"{s}_labels_mask"][e["prompt_length"]:]
                told.append(t)
            with autocast(device, weights_dtype):
                a = sequence_logps(model, *collate(plain, pad_id, device))  # (2 * batch,)
                b = sequence_logps(model, *collate(told, pad_id, device))
            gain = (b - a).float().cpu()
            gains["chosen"].append(gain[: len(plain)])
            gains["rejected"].append(gain[len(plain) :])
        return {f"{s}_gain": torch.cat(gains[s]) for s in gains}

    def logit_offsets(self, cache):
        return self.plan.strength * (cache["chosen_gain"] - cache["rejected_gain"])


INTERVENTIONS = {c.kind: c for c in (Shaping, Steering, TokenMask, Inoculation)}


def intervention_for(plan: Plan, sae=None, tokenizer=None, *, catalog=None, device: str = "cpu",
                     max_prompt_length: int = 256):
    """The `core.train.dpo.Intervention` that carries out `plan`. Its SAE is `sae` or, when None, the one
    the plan recorded (`core.model.store.recorded_sae`: its folder, else the catalogue entry; loaded on
    `device`). Raises UsageError for an unknown kind, CatalogError for an SAE found nowhere."""
    if plan.kind not in INTERVENTIONS:
        raise UsageError(f"unknown intervention {plan.kind!r}; expected one of {', '.join(KINDS)}")
    if plan.kind == "inoculate":
        return Inoculation(plan, sae, tokenizer, max_prompt_length)
    if sae is None:
        from core.model.sae import load_sae
        from core.model.store import recorded_sae, sae_dir

        sae = load_sae(sae_dir(recorded_sae(plan.sae, plan.sae_path, plan.sae_sha256, catalog)), device=device)
    return INTERVENTIONS[plan.kind](plan, sae, tokenizer)


def pair_offsets(intervention, model, tokenizer, pairs: Sequence, *, max_length: int = 512,
                 max_prompt_length: int = 256, batch_size: int = 8, device=None) -> torch.Tensor:
    """The DPO-logit offsets `(pairs,)` that a shaping or inoculation intervention adds, read from
    `model` as it is now (the frozen model, before training): what `core.train.trl_adapter` needs.
    `pairs` have `.prompt`, `.chosen`, `.rejected`. Raises UsageError for a kind without offsets."""
    from core.train.dpo import DPOConfig, build_examples, pad_token_id

    device = torch.device(device or next(model.parameters()).device)
    pairs = intervention.pairs(pairs)
    examples = build_examples(tokenizer, pairs, DPOConfig(max_length=max_length,
                                                          max_prompt_length=max_prompt_length))
    was_training = model.training
    model.eval()
    try:
        cache = intervention.prepare(model, examples, batch_size, pad_token_id(tokenizer), device,
                                     next(model.parameters()).dtype, None)
    finally:
        model.train(was_training)
    offsets = intervention.logit_offsets(cache)
    if offsets is None:
        raise UsageError(f"a {intervention.plan.kind} plan adds nothing to the DPO logit "
                         "(only shape and inoculate do)")
    return offsets
