"""One batch of tokenized pairs -> per-pair rows of SAE summaries: the unit of indexing work.

`read_batch` runs the truncated model over a batch, encodes every reply and prompt token with the
SAE, and summarises each reply and prompt on the device; only sparse summaries reach the host.
The single-process index, Ray workers and the GPU benchmark all call it. Torch and numpy only
(no LanceDB, no sae_lens), so a bare GPU box can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.model.lm import BatchStates, ResidualReader, TokenizedPair
from core.model.sae import SparseAutoencoder, SparseCodes
from core.index.summary import PROMPT_KEYS, summarise_segments


@dataclass(frozen=True)
class IndexSettings:
    max_tokens: int | None = None  # reply tokens read per side; None: whole replies (up to the context)
    positions_per_feature: int = 3  # per reply and firing feature: its strongest token positions stored
    batch_tokens: int = 4096  # padded tokens per forward batch
    chunk_pairs: int = 64  # pairs per LanceDB append (the resume granularity)

    def __post_init__(self) -> None:  # UsageError before any model work (a 0 cap reshapes nothing)
        from core.arguments import at_least

        at_least("--max-tokens", self.max_tokens)
        at_least("--batch-tokens", self.batch_tokens)
        at_least("--chunk-pairs", self.chunk_pairs)
        at_least("positions per feature", self.positions_per_feature)


def _split(codes: SparseCodes, n: int) -> tuple[SparseCodes, SparseCodes]:
    """Codes of tokens [0, n) and of tokens [n, ...) (renumbered from 0); codes are token-ordered."""
    cut = int(torch.searchsorted(codes.token, torch.tensor(n, device=codes.token.device)))
    head = SparseCodes(codes.token[:cut], codes.feat[:cut], codes.val[:cut])
    tail = SparseCodes(codes.token[cut:] - n, codes.feat[cut:], codes.val[cut:])
    return head, tail


@torch.inference_mode()
def read_batch(
    reader: ResidualReader, sae: SparseAutoencoder, batch: list[TokenizedPair], settings: IndexSettings,
    states: BatchStates | None = None,
) -> list[dict]:
    """Model forward + SAE encode + summaries for one batch of pairs.

    `states` are the batch's residuals when they were read before (core.model.residuals: laid out
    as `reader.forward(batch)` returns them); then the model does not run.

    Returns one row per pair, in batch order: source_index, n_prompt_tokens, chosen / rejected
    (`core.index.summary.summarise_reply`'s dict), chosen_tokens / rejected_tokens (each token's text),
    prompt (feat, max, freq over the prompt's tokens after the chat template's fixed opening, which
    is only skipped while the prompt still has its head).
    """
    s = states if states is not None else reader.forward(batch)
    dev = s.replies.device
    B, P = s.prompt_mask.shape
    R = s.reply_mask.shape[1]
    # Reply tokens, flat: segment 2i is pair i's chosen reply, 2i + 1 its rejected one.
    r_seg = torch.arange(2 * B, device=dev)[:, None].expand(2 * B, R)[s.reply_mask]  # (Nr,)
    r_pos = torch.arange(R, device=dev)[None, :].expand(2 * B, R)[s.reply_mask]  # (Nr,)
    r_len = [n for t in batch for n in (len(t.chosen_ids), len(t.rejected_ids))]
    # Prompt tokens after the template's opening; prompts are left-padded.
    prefix = reader.template_prefix_len()
    n_p = torch.tensor([len(t.prompt_ids) for t in batch], device=dev)  # (B,)
    skip = torch.tensor([prefix if t.prompt_dropped == 0 else 0 for t in batch], device=dev)
    skip = torch.minimum(skip, n_p)
    p_pos_all = torch.arange(P, device=dev)[None, :] - (P - n_p)[:, None] - skip[:, None]  # (B, P)
    p_keep = s.prompt_mask & (p_pos_all >= 0)
    p_seg = torch.arange(B, device=dev)[:, None].expand(B, P)[p_keep]  # (Np,)
    p_pos = p_pos_all[p_keep]
    p_len = (n_p - skip).tolist()

    acts = torch.cat([s.replies[s.reply_mask], s.prompts[p_keep]])  # (Nr + Np, d_model)
    n_reply = len(r_seg)
    del s
    reply_codes, prompt_codes = _split(sae.encode_sparse(acts), n_reply)
    d_sae = sae.cfg.d_sae
    replies = summarise_segments(reply_codes, r_seg, r_pos, r_len, d_sae, settings.positions_per_feature)
    prompts = summarise_segments(prompt_codes, p_seg, p_pos, p_len, d_sae, 0, keys=PROMPT_KEYS)
    return [
        {
            "source_index": t.source_index,
            "n_prompt_tokens": len(t.prompt_ids),
            "chosen": replies[2 * i],
            "rejected": replies[2 * i + 1],
            "chosen_tokens": reader.token_strings(t.chosen_ids),
            "rejected_tokens": reader.token_strings(t.rejected_ids),
            "prompt": prompts[i],
        }
        for i, t in enumerate(batch)
    ]
