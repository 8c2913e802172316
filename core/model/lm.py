"""Reading the residual stream of a causal LM over reply tokens, cheaply.

The model is cut after the block whose output we read (later blocks, the final norm and the LM head
never run), each pair's prompt runs once and both replies continue from its KV cache, and batches
are formed from length-sorted pairs so padding stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from core.errors import UsageError
from core.model.chat import chat_prompt_ids

if TYPE_CHECKING:
    from core.model.catalog import ModelEntry

# Whole replies are read up to the model's context (config.max_position_embeddings), but never past
# this many tokens per row (prompt + reply): Llama-3.1 claims 131,072, and one such row would need
# tens of GB of activations. 8,192 is the max length the paper's DPO run trained with.
MAX_CONTEXT = 8192


def pick_device(device: str | None = None) -> str:
    """`device` if given, else "cuda" when available, else "cpu". Raises UsageError for a device name
    torch does not know or a GPU that is not there."""
    from core.arguments import device_name

    if device:
        device_name(device)
        if device.startswith("cuda"):
            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = int(device.partition(":")[2] or 0)
            if index >= n:
                raise UsageError(f"--device {device}: no such CUDA GPU here ({n} found); use --device cpu")
        if device == "mps" and not torch.backends.mps.is_available():
            raise UsageError("--device mps: Apple's Metal GPU is not available here; use --device cpu")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(entry: ModelEntry, device: str) -> torch.dtype:
    # bf16 matmuls are ~6x slower than fp32 on this class of CPU; on CUDA bf16 halves memory.
    name = entry.dtype_cuda if device.startswith("cuda") else entry.dtype_cpu
    return getattr(torch, name)


def load_full_model(entry: ModelEntry, device: str | None = None, progress=None):
    """The whole causal LM + tokenizer for `entry` (pulled into the store if needed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.model.store import pull_model

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


@torch.inference_mode()
def final_norm_scale(norm, d_model: int) -> torch.Tensor | None:
    """The per-dimension scale (d_model,) that the final norm applies to a unit-RMS vector, whatever
    its convention: `weight` for Llama/Qwen, `1 + weight` for Gemma. Measured on the module itself
    (for x of zero mean and unit RMS, scale = (norm(x) - norm(-x)) / 2x, a bias cancelling out)."""
    if norm is None or not any(True for _ in norm.parameters()):
        return None
    p = next(norm.parameters())
    x = torch.ones(d_model, dtype=torch.float32, device=p.device)
    x[1::2] = -1  # (d_model,) mean 0 (for even d_model), RMS 1
    x = x.to(p.dtype)[None]
    return ((norm(x) - norm(-x)) / (2 * x))[0].float().detach()


@dataclass
class TokenizedPair:
    source_index: int
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_dropped: int = 0  # tokens cut from the head of the prompt (its tail is kept)
    chosen_cut: int = 0  # tokens cut from the end of each reply
    rejected_cut: int = 0

    @property
    def cost(self) -> int:
        return len(self.prompt_ids) + 2 * max(len(self.chosen_ids), len(self.rejected_ids))

    @property
    def n_tokens(self) -> int:
        """Tokens read: the prompt once, both replies."""
        return len(self.prompt_ids) + len(self.chosen_ids) + len(self.rejected_ids)


def fit_pair(
    source_index: int,
    prompt: list[int],
    chosen: list[int],
    rejected: list[int],
    max_tokens: int | None,
    context: int,
    max_prompt_tokens: int | None = None,
) -> TokenizedPair:
    """Cut a tokenized pair to what is read, each row (prompt + reply) within `context` tokens.

    Replies keep their start: at most `max_tokens` (None: whole replies), and never so many that
    the prompt's last min(len(prompt), context // 4) tokens would not fit before them. The prompt
    keeps its tail (what the reply answers): `context` minus the longer reply, and at most
    `max_prompt_tokens` (default 2 x max_tokens when a cap is given, as before whole replies).
    """
    cap = context if max_tokens is None else min(max_tokens, context)
    floor = min(len(prompt), context // 4)
    reply_cap = max(0, min(cap, context - floor))
    c, r = chosen[:reply_cap], rejected[:reply_cap]
    keep = context - max(len(c), len(r))
    if max_prompt_tokens is None and max_tokens is not None:
        max_prompt_tokens = 2 * max_tokens
    if max_prompt_tokens is not None:
        keep = min(keep, max_prompt_tokens)
    p = prompt[max(0, len(prompt) - keep) :]
    return TokenizedPair(
        source_index, p, c, r, prompt_dropped=len(prompt) - len(p),
        chosen_cut=len(chosen) - len(c), rejected_cut=len(rejected) - len(r),
    )


@dataclass
class BatchStates:
    """One batch's residual activations at the read layer, padded, on the reader's device."""

    replies: torch.Tensor  # (2B, R, d_model) rows: chosen 0, rejected 0, chosen 1, ... right-padded
    reply_mask: torch.Tensor  # (2B, R) bool, True on real tokens
    prompts: torch.Tensor  # (B, P, d_model) left-padded
    prompt_mask: torch.Tensor  # (B, P) bool


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
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = pad if pad is not None else 0
        self._pieces: dict[int, str] = {}  # token id -> its text alone (token_strings)
        self._prefix_len: int | None = None
        inner = getattr(model, "model", model)
        # Kept for feature labels (decoder directions through the unembedding) before the head is dropped.
        out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.unembed = (out_emb.weight if out_emb is not None else inner.embed_tokens.weight).detach()
        norm = getattr(inner, "norm", None)
        self.final_norm_weight = final_norm_scale(norm, inner.config.hidden_size)
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

        from core.model.store import pull_model

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
        return chat_prompt_ids(self.tokenizer, prompt)

    def reply_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def context_tokens(self) -> int:
        """Tokens per row (prompt + reply) the reader reads at most: the model's context, <= MAX_CONTEXT."""
        n = getattr(self.model.config, "max_position_embeddings", None) or MAX_CONTEXT
        return min(int(n), MAX_CONTEXT)

    def tokenize(self, pair, max_tokens: int | None = None, max_prompt_tokens: int | None = None) -> TokenizedPair:
        """Chat-template the prompt and cut the pair to what is read (see `fit_pair`): replies from
        their start, whole when `max_tokens` is None; the prompt keeps its tail."""
        return fit_pair(
            pair.source_index, self.prompt_ids(pair.prompt), self.reply_ids(pair.chosen),
            self.reply_ids(pair.rejected), max_tokens, self.context_tokens(), max_prompt_tokens,
        )

    def token_strings(self, ids: list[int]) -> list[str]:
        """Each token's text decoded alone (cached per id: long replies repeat their tokens)."""
        pieces = self._pieces
        out = []
        for i in ids:
            s = pieces.get(i)
            if s is None:
                s = pieces[i] = self.tokenizer.decode([i])
            out.append(s)
        return out

    # -- forward --------------------------------------------------------------------------------

    def template_prefix_len(self) -> int:
        """Tokens every chat-templated prompt starts with (e.g. a default system prompt)."""
        if self._prefix_len is None:
            a = self.prompt_ids([{"role": "user", "content": "alpha"}])
            b = self.prompt_ids([{"role": "user", "content": "Zebra crossing"}])
            n = 0
            while n < min(len(a), len(b)) and a[n] == b[n]:
                n += 1
            self._prefix_len = n
        return self._prefix_len

    @torch.inference_mode()
    def read(self, batch: list[TokenizedPair], with_prompt: bool = False) -> list[tuple[torch.Tensor, ...]]:
        """For each pair: (chosen acts (Tc, d_model), rejected acts (Tr, d_model)), float32 on the reader's device.

        With `with_prompt`, a third tensor holds the prompt's activations (Tp, d_model).
        """
        s = self.forward(batch)
        P = s.prompts.shape[1]
        result = []
        for i, b in enumerate(batch):
            item = (s.replies[2 * i, : len(b.chosen_ids)].float(), s.replies[2 * i + 1, : len(b.rejected_ids)].float())
            if with_prompt:
                item += (s.prompts[i, P - len(b.prompt_ids) :].float(),)
            result.append(item)
        return result

    @torch.inference_mode()
    def forward(self, batch: list[TokenizedPair]) -> BatchStates:
        """The batch's residual activations at the read layer, padded, in the model's dtype.

        The prompts run once, left-padded; the cache is then duplicated so that chosen and rejected
        replies (right-padded) continue from it in one batch.
        """
        from transformers import DynamicCache

        B = len(batch)
        dev = self.device
        pad = self.pad_id
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
        return BatchStates(
            replies=out.last_hidden_state,  # (2B, R, d_model)
            reply_mask=rmask.to(dev).bool(),
            prompts=p_out.last_hidden_state,  # (B, P, d_model)
            prompt_mask=pmask.to(dev).bool(),
        )


def plan_batches(items: list[TokenizedPair], max_batch_tokens: int) -> list[list[TokenizedPair]]:
    """Length-sorted batches whose padded size (rows x longest row) stays under `max_batch_tokens`;
    a pair longer than the budget on its own runs alone."""
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
