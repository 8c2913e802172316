"""Per-reply summaries of SAE activations: what a workspace stores for each reply and prompt.

`summarise_reply` is the reference, over one reply's dense (tokens, d_sae) activations.
`summarise_segments` computes the same for a whole batch at once from the SAE's active
(token, feature, value) triplets, with sorts and segment reductions on the device that holds them,
so that only the sparse results cross to the host. Torch and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.model.sae import SparseCodes

REPLY_KEYS = ("feat", "mean", "max", "freq", "tok_feat", "tok_pos", "tok_val")
PROMPT_KEYS = ("feat", "max", "freq")


def _empty() -> dict:
    empty_i, empty_f = np.zeros(0, np.int32), np.zeros(0, np.float32)
    return dict(feat=empty_i, mean=empty_f, max=empty_f, freq=empty_f,
                tok_feat=empty_i, tok_pos=empty_i, tok_val=empty_f)


def summarise_reply(feats: torch.Tensor, positions_per_feature: int) -> dict:
    """Sparse summary of one reply's SAE activations `feats` (tokens, d_sae), as numpy arrays:

        feat       every feature that fires (> 0) on some token, ascending
        mean, max  its mean over the reply's tokens (zeros included) and its max
        freq       the share of the reply's tokens it fires on
        tok_feat, tok_pos, tok_val   for each firing feature, its `positions_per_feature` strongest
                   positions (feature-major, strongest first)
    """
    T = feats.shape[0]
    if T == 0:
        return _empty()
    count = (feats > 0).sum(0)  # (d_sae,)
    idx = torch.nonzero(count).squeeze(1)  # (n,) firing features
    sub = feats[:, idx]  # (T, n)
    vals, pos = sub.topk(min(positions_per_feature, T), dim=0)  # (P, n) each
    vals, pos = vals.T, pos.T  # (n, P): feature-major
    keep = vals > 0
    return dict(
        feat=idx.cpu().numpy().astype(np.int32),
        mean=(sub.sum(0) / T).cpu().numpy().astype(np.float32),
        max=sub.max(0).values.cpu().numpy().astype(np.float32),
        freq=(count[idx].float() / T).cpu().numpy().astype(np.float32),
        tok_feat=idx[:, None].expand_as(vals)[keep].cpu().numpy().astype(np.int32),
        tok_pos=pos[keep].cpu().numpy().astype(np.int32),
        tok_val=vals[keep].cpu().numpy().astype(np.float32),
    )


def summarise_prompt(feats: torch.Tensor) -> dict:
    """Sparse summary of a prompt's SAE activations `feats` (tokens, d_sae): feat, max, freq."""
    s = summarise_reply(feats, 0)
    return {k: s[k] for k in PROMPT_KEYS}


@torch.inference_mode()
def summarise_segments(
    codes: SparseCodes,
    segment: torch.Tensor,
    position: torch.Tensor,
    lengths: Sequence[int],
    d_sae: int,
    positions_per_feature: int,
    keys: Sequence[str] = REPLY_KEYS,
) -> list[dict]:
    """`summarise_reply` of every segment (a reply or a prompt) of a batch, from sparse codes.

    Args:
        codes: active features of the batch's tokens (token, feat, val), on any device.
        segment, position: (n_tokens,) each token's segment and its position within it.
        lengths: tokens per segment (a segment of length 0 summarises to empty arrays).
        keys: which of REPLY_KEYS to return per segment.
    Returns one dict of numpy arrays per segment: the same features, frequencies and token firings
    as `summarise_reply` on the dense activations (mean: the same up to float summation order).
    """
    dev = codes.val.device
    n_seg = len(lengths)
    seg = segment.to(dev)[codes.token]  # (nnz,)
    pos = position.to(dev)[codes.token]  # (nnz,)
    key = seg * d_sae + codes.feat  # (nnz,) one key per (segment, feature)
    # Order by (segment, feature), strongest first within each; ties keep token order.
    by_val = torch.argsort(-codes.val, stable=True)
    order = by_val[torch.argsort(key[by_val], stable=True)]
    key, val, pos = key[order], codes.val[order], pos[order]
    groups, counts = torch.unique_consecutive(key, return_counts=True)  # (G,) each
    starts = torch.cumsum(counts, 0) - counts  # (G,) first (strongest) firing of each group
    group_of = torch.repeat_interleave(torch.arange(len(groups), device=dev), counts)  # (nnz,)
    g_seg = groups // d_sae
    T = torch.as_tensor(list(lengths), dtype=torch.float32, device=dev)[g_seg]  # (G,)
    out_f = [val[starts]]  # max
    if "mean" in keys:
        out_f.append(torch.zeros(len(groups), device=dev).index_add_(0, group_of, val) / T)
    out_f.append(counts.float() / T)  # freq
    floats = torch.stack(out_f).cpu().numpy()  # (2 or 3, G)
    ints = torch.stack([g_seg, groups % d_sae]).cpu().numpy()  # (2, G)
    g_bounds = np.searchsorted(ints[0], np.arange(n_seg + 1))
    P = positions_per_feature if "tok_feat" in keys else 0
    if P:
        top = (torch.arange(len(key), device=dev) - starts[group_of]) < P  # (nnz,) a group's P strongest
        t_ints = torch.stack([key[top] // d_sae, key[top] % d_sae, pos[top]]).cpu().numpy()  # (3, n_top)
        t_val = val[top].cpu().numpy()
        t_bounds = np.searchsorted(t_ints[0], np.arange(n_seg + 1))
    result = []
    for s in range(n_seg):
        a, b = g_bounds[s], g_bounds[s + 1]
        row = {"feat": ints[1, a:b].astype(np.int32), "max": floats[0, a:b].astype(np.float32),
               "freq": floats[-1, a:b].astype(np.float32)}
        if "mean" in keys:
            row["mean"] = floats[1, a:b].astype(np.float32)
        if P:
            a, b = t_bounds[s], t_bounds[s + 1]
            row.update(tok_feat=t_ints[1, a:b].astype(np.int32), tok_pos=t_ints[2, a:b].astype(np.int32),
                       tok_val=t_val[a:b].astype(np.float32))
        elif "tok_feat" in keys:
            row.update({k: v for k, v in _empty().items() if k.startswith("tok_")})
        result.append({k: row[k] for k in keys})
    return result
