"""Reading the residual stream of a causal LM over reply tokens, cheaply.

The model is cut after the block whose output we read (later blocks, the final norm and the LM head
never run), each pair's prompt runs once and both replies continue from its KV cache, and batches
are formed from length-sorted pairs so padding stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.catalog import ModelEntry
from core.errors import UsageError
from core.store import pull_model


def pick_device(device: str | None = None) -> str:
    """`device` if given, else "cuda" when available, else "cpu"."""
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(entry: ModelEntry, device: str) -> torch.dtype:
    # bf16 matmuls are ~6x slower than fp32 on this class of CPU; on CUDA bf16 halves memory.
    name = entry.dtype_cuda if device.startswith("cuda") else entry.dtype_cpu
    return getattr(torch, name)


def load_full_model(entry: ModelEntry, device: str | None = None, progress=None):
    """The whole causal LM + tokenizer for `entry` (pulled into the store if needed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = pick_device(device)
    path = pull_model(entry, progress)
    tok = AutoTokenizer.from_pretrained(entry.tokenizer or path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(entry, device)).to(device)
    model.eval()
    return model, tok


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a HF decoder model (Llama/Gemma/Qwen/Mistral style: `.model.layers`)."""
    inner = getattr(model, "model", model)
    if hasattr(inner, "layers"):
        return inner.layers
    raise UsageError(f"don't know where {type(model).__name__} keeps its blocks")


@dataclass
class TokenizedPair:
    source_index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]

    @property
    def cost(self) -> int:
        return len(self.prompt_ids) + 2 * max(len(self.chosen_ids), len(self.rejected_ids))


class ResidualReader:
    """Residual activations at one layer for the reply tokens of preference pairs.

    Args:
        model: a HF causal LM (it is modified: blocks after `layer`, the final norm and the head are dropped).
        tokenizer: its tokenizer, with a chat template.
        layer: 0-based block whose output is read (= `hidden_states[layer + 1]` of the full model).
    """

    def __init__(self, model, tokenizer, layer: int):
        self.tokenizer = tokenizer
        self.layer = layer
        inner = getattr(model, "model", model)
        # Kept for feature labels (decoder directions through the unembedding) before the head is dropped.
        out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.unembed = (out_emb.weight if out_emb is not None else inner.embed_tokens.weight).detach()
        norm = getattr(inner, "norm", None)
        self.final_norm_weight = getattr(norm, "weight", None)
        if self.final_norm_weight is not None:
            self.final_norm_weight = self.final_norm_weight.detach()
        n_layers = len(inner.layers)
        if not 0 <= layer < n_layers:
            raise UsageError(f"layer {layer} is outside 0..{n_layers - 1}")
        inner.layers = inner.layers[: layer + 1]
        inner.config.num_hidden_layers = layer + 1
        if hasattr(inner, "norm"):
            inner.norm = torch.nn.Identity()
        self.model = inner  # the bare decoder: no LM head
        self.device = next(inner.parameters()).device
        self.dtype = next(inner.parameters()).dtype
        self.d_model = inner.config.hidden_size

    @classmethod
    def from_entry(cls, entry: ModelEntry, layer: int | None = None, device: str | None = None, progress=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = pick_device(device)
        path = pull_model(entry, progress)
        tok = AutoTokenizer.from_pretrained(entry.tokenizer or path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(entry, device))
        model.eval()
        reader = cls(model, tok, entry.layer if layer is None else layer)
        reader.model.to(device)
        reader.device = torch.device(device)
        return reader

    # -- tokenisation ---------------------------------------------------------------------------

    def prompt_ids(self, prompt: tuple[dict, ...] | list[dict]) -> list[int]:
        from core.rollout import chat_prompt_ids

        return chat_prompt_ids(self.tokenizer, prompt)

    def reply_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokenize(self, pair, max_tokens: int, max_prompt_tokens: int | None = None) -> TokenizedPair:
        """Chat-template the prompt (kept from the left: its end is what the reply answers) and cap replies."""
        max_prompt_tokens = max_prompt_tokens or 2 * max_tokens
        p = self.prompt_ids(pair.prompt)
        if len(p) > max_prompt_tokens:
            p = p[-max_prompt_tokens:]
        return TokenizedPair(
            pair.source_index, p, self.reply_ids(pair.chosen)[:max_tokens], self.reply_ids(pair.rejected)[:max_tokens]
        )

    def token_strings(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i]) for i in ids]

    # -- forward --------------------------------------------------------------------------------

    def template_prefix_len(self) -> int:
        """Tokens every chat-templated prompt starts with (e.g. a default system prompt)."""
        a = self.prompt_ids([{"role": "user", "content": "alpha"}])
        b = self.prompt_ids([{"role": "user", "content": "Zebra crossing"}])
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    @torch.inference_mode()
    def read(self, batch: list[TokenizedPair], with_prompt: bool = False) -> list[tuple[torch.Tensor, ...]]:
        """For each pair: (chosen acts (Tc, d_model), rejected acts (Tr, d_model)), float32 on the reader's device.

        With `with_prompt`, a third tensor holds the prompt's activations (Tp, d_model).
        The prompts run once, left-padded; the cache is then duplicated so that chosen and rejected
        replies (right-padded) continue from it in one batch.
        """
        from transformers import DynamicCache

        B = len(batch)
        dev = self.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        P = max(len(b.prompt_ids) for b in batch)
        prompt = torch.full((B, P), pad, dtype=torch.long)
        pmask = torch.zeros((B, P), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b.prompt_ids)
            prompt[i, P - n :] = torch.tensor(b.prompt_ids)
            pmask[i, P - n :] = 1
        ppos = (pmask.cumsum(1) - 1).clamp(min=0)  # (B, P): real positions, pads at 0
        cache = DynamicCache(config=self.model.config)
        p_out = self.model(
            input_ids=prompt.to(dev),
            attention_mask=pmask.to(dev),
            position_ids=ppos.to(dev),
            past_key_values=cache,
            use_cache=True,
        )
        cache.batch_repeat_interleave(2)  # rows: p0, p0, p1, p1, ...

        replies = [ids for b in batch for ids in (b.chosen_ids, b.rejected_ids)]
        R = max(1, max(len(r) for r in replies))
        reply = torch.full((2 * B, R), pad, dtype=torch.long)
        rmask = torch.zeros((2 * B, R), dtype=torch.long)
        for j, ids in enumerate(replies):
            if ids:
                reply[j, : len(ids)] = torch.tensor(ids)
                rmask[j, : len(ids)] = 1
        plen = pmask.sum(1).repeat_interleave(2)  # (2B,)
        rpos = plen[:, None] + torch.arange(R)[None, :]  # (2B, R)
        mask = torch.cat([pmask.repeat_interleave(2, dim=0), rmask], dim=1)  # (2B, P + R)
        out = self.model(
            input_ids=reply.to(dev),
            attention_mask=mask.to(dev),
            position_ids=rpos.to(dev),
            past_key_values=cache,
            use_cache=True,
        )
        h = out.last_hidden_state.float()  # (2B, R, d_model)
        result = []
        for i in range(B):
            c, r = replies[2 * i], replies[2 * i + 1]
            item = (h[2 * i, : len(c)], h[2 * i + 1, : len(r)])
            if with_prompt:
                item += (p_out.last_hidden_state[i, P - len(batch[i].prompt_ids) :].float(),)
            result.append(item)
        return result


def plan_batches(items: list[TokenizedPair], max_batch_tokens: int) -> list[list[TokenizedPair]]:
    """Length-sorted batches whose padded size (rows x longest row) stays under `max_batch_tokens`."""
    order = sorted(items, key=lambda t: t.cost)
    batches, cur, longest = [], [], 0
    for t in order:
        longest_new = max(longest, t.cost)
        if cur and longest_new * (len(cur) + 1) > max_batch_tokens:
            batches.append(cur)
            cur, longest_new = [], t.cost
        cur.append(t)
        longest = longest_new
    if cur:
        batches.append(cur)
    return batches
