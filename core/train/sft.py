"""Supervised fine-tuning on (prompt, reply) examples, on `core.train.dpo`'s machinery.

The minimal trainer the goblin loop needs before DPO (the trait must be in the model's repertoire
for DPO to pick it up): the same tokenization (`core.train.dpo.tokenize_replies`), batching, bf16
autocast on CUDA, optional LoRA, AdamW with linear warmup and decay and gradient clipping as DPO.
The loss is the mean negative log-likelihood per reply token. A run is short, so it keeps no
mid-run checkpoint: a cancelled run raises Cancelled and the next call starts over.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core.train.dpo import (
    autocast,
    collate,
    linear_schedule,
    pad_token_id,
    save_model,
    sequence_logps,
    tokenize_replies,
)
from core.train.lora import add_lora, unwrap_lora
from core.errors import ValidationError
from core.progress import Progress, ProgressFn, check_cancel

SFT_STATE = "sft_state.json"


@dataclass
class SFTConfig:
    """How to fine-tune (meanings as in `core.train.dpo.DPOConfig`)."""

    lr: float = 2e-5
    epochs: int = 1
    batch_size: int = 8
    max_length: int = 512
    max_prompt_length: int = 256
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    seed: int = 0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValidationError("need 0 < max_prompt_length < max_length")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValidationError("epochs and batch_size must be at least 1")


def sft_done(out_dir: Path | str, cfg: SFTConfig, n_examples: int) -> bool:
    """Whether `out_dir/model` holds a finished run with these settings on this many examples."""
    path = Path(out_dir) / SFT_STATE
    if not path.is_file() or not (Path(out_dir) / "model" / "config.json").is_file():
        return False
    state = json.loads(path.read_text())
    return state.get("config") == asdict(cfg) and state.get("n_examples") == n_examples


def train_sft(
    model,
    tokenizer,
    examples: Sequence[tuple[Sequence[dict], str]],
    out_dir: str | Path,
    cfg: SFTConfig,
    *,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    device: str | torch.device | None = None,
) -> Path:
    """Fine-tune `model` (in place) on `examples`, (prompt messages, reply text) each; write the
    result to `out_dir/model` (LoRA merged) with `out_dir/sft_state.json` (config, loss history).

    Progress: `Progress("sft", done=step, total=steps, unit="steps", metrics={"loss"})` per step.
    Returns `out_dir/"model"`. Raises ValidationError for no examples or no chat template,
    Cancelled when `cancel` is set between steps (nothing is saved).
    """
    emit = progress or (lambda p: None)
    out_dir = Path(out_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = [tokenize_replies(tokenizer, prompt, {"reply": reply}, cfg.max_length, cfg.max_prompt_length)
            for prompt, reply in examples]
    if not data:
        raise ValidationError("no examples to fine-tune on")
    pad_id = pad_token_id(tokenizer)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    generator = torch.Generator().manual_seed(cfg.seed)
    orders = [torch.randperm(len(data), generator=generator).tolist() for _ in range(cfg.epochs)]

    model.to(device=device, dtype=torch.float32)
    wrappers = add_lora(model, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed) if cfg.lora else {}
    if not cfg.lora:
        model.requires_grad_(True)
    model.eval()  # dropout off, as in DPO
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(cfg.warmup_steps, total))
    history, started = [], time.monotonic()
    try:
        for step in range(total):
            check_cancel(cancel, "SFT")
            epoch, index = divmod(step, steps_per_epoch)
            ids = orders[epoch][index * cfg.batch_size : (index + 1) * cfg.batch_size]
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, torch.float32):
                input_ids, attention, labels = collate([data[i] for i in ids], pad_id, device, ("reply",))
                logps = sequence_logps(model, input_ids, attention, labels)  # (batch,)
            n_tokens = labels[:, 1:].sum().clamp(min=1)
            loss = -logps.sum() / n_tokens
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            history.append({"step": step + 1, "epoch": epoch, "loss": loss.item()})
            per_step = (time.monotonic() - started) / (step + 1)
            emit(Progress("sft", f"SFT epoch {epoch + 1}/{cfg.epochs}", done=step + 1, total=total,
                          unit="steps", rate=1 / per_step, rate_unit="steps/s",
                          eta_s=per_step * (total - step - 1), metrics={"loss": loss.item()}))
        final = save_model(model, tokenizer, out_dir / "model", wrappers)
        (out_dir / SFT_STATE).write_text(json.dumps(
            {"config": asdict(cfg), "n_examples": len(data), "history": history}, indent=1))
        return final
    finally:
        if wrappers:
            unwrap_lora(model, wrappers)
        model.requires_grad_(False)
