"""Direct Preference Optimization (Rafailov et al. 2023), small enough to read in one sitting.

This is the "train it for real" check on a prediction: fine-tune a causal LM with DPO on the same
preference pairs, then compare its SAE features against the prediction.

- The reference model is the initial policy, frozen. It only ever sees the training data, so its
  log-probs are computed once per pair before the first step (from `model` itself, under
  `torch.inference_mode()`: no second copy of the weights) and kept; during training only the
  policy runs, half the forward passes of a live reference.
- Dropout stays off in the policy as well (`model.eval()` throughout, as TRL does by default), so at
  step 0 policy and reference agree and the loss starts at log 2.
- Weights stay in float32 unless `dtype` says otherwise; on CUDA the forward pass runs under bf16
  autocast. (Pure-bf16 weights would round away most updates at DPO learning rates: a step of
  5e-6 on a weight of 0.02 is far below bf16's 3 significant digits.)
- Nothing draws from torch's global RNG (the data order and LoRA's init use their own generators),
  so a run in a worker thread neither disturbs nor depends on anyone else's random state.
- Checkpoints (`out_dir/checkpoint/`) hold everything needed to resume bit-for-bit; calling
  `train_dpo` again with the same `out_dir` picks up where the last call stopped.
- An `intervention` (see `Intervention`; `core.train.interventions` has reward shaping, training-time
  steering, token-level filtering and inoculation prompts) changes what is learned: it may edit the
  pairs or their loss masks, add a per-pair offset to the DPO logit, and wrap every policy forward
  pass. What it computes from the frozen initial model is cached beside the reference log-probs.

Layout of `out_dir`:

    reference_logps.safetensors   reference log-probs of every pair, (pairs,) chosen + rejected
    intervention.safetensors      what the intervention computed from the frozen model (if any)
    checkpoint/                   model (safetensors, LoRA merged) + tokenizer, trainer.pt
                                  (optimizer, scheduler, step), lora.safetensors (LoRA only),
                                  trainer_state.json (step, epoch, config, loss history)
    model/                        the final model (save_pretrained, LoRA merged) + tokenizer
    train_log.jsonl               one DPOStep per optimizer step
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import threading
from collections.abc import Callable, Sequence
from typing import ContextManager, Protocol
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from core.errors import Cancelled, ValidationError
from core.progress import Progress, ProgressFn
from core.model.chat import chat_prompt_ids
from core.train.lora import LoRALinear, add_lora, lora_merged, unwrap_lora


@dataclass
class DPOConfig:
    """How to train.

    `lr` defaults to 5e-6 for full fine-tuning: the top of the range used for full-parameter DPO
    (5e-7 for Zephyr-7B, 1e-6 in TRL), because validation runs here are short (an epoch or so over
    hundreds of pairs) on small models, where a smaller rate barely moves the features. Lower it
    for long runs or large models; with `lora=True` raise it ~10-100x (LoRA's B starts at zero).
    The schedule is linear warmup over `warmup_steps`, then linear decay to 0 at the last step.
    AdamW, no weight decay; gradients are clipped to `max_grad_norm` (None: no clipping).
    """

    beta: float = 0.1  # strength of the KL tie to the reference (DPO's beta)
    lr: float = 5e-6
    epochs: int = 1
    batch_size: int = 4  # pairs per forward pass (each pair is 2 sequences)
    grad_accum: int = 1  # forward passes per optimizer step
    max_length: int = 512  # prompt + reply tokens
    max_prompt_length: int = 256  # prompts keep their last this-many tokens; replies are cut to fit
    lora: bool = False  # LoRA on attention q_proj / v_proj only; merged into the weights when saved
    lora_rank: int = 8
    lora_alpha: int = 16
    seed: int = 0
    save_every: int = 50  # optimizer steps between checkpoints (and one at the end)
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValidationError(
                "need 0 < max_prompt_length < max_length, so every reply keeps a token"
            )
        for name in ("epochs", "batch_size", "grad_accum", "save_every", "lora_rank"):
            if getattr(self, name) < 1:
                raise ValidationError(f"{name} must be at least 1")


@dataclass
class DPOStep:
    """One optimizer step's numbers, means over the pairs it saw.

    `step` counts optimizer steps done (1..total_steps); `epoch` is the 0-based epoch the step
    belongs to. Rewards are DPO's implicit rewards, beta * (log pi(reply) - log pi_ref(reply)).
    """

    step: int
    total_steps: int
    epoch: int
    loss: float
    reward_margin: float  # chosen reward - rejected reward
    reward_accuracy: float  # fraction of pairs with chosen reward > rejected reward
    chosen_reward: float
    rejected_reward: float


# -- the loss --------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sigmoid DPO loss over a batch of pairs.

    Takes sequence log-probs, each `(batch,)`, and optionally per-pair `offsets` `(batch,)` added
    to the logit (reward shaping: lambda * (s(chosen) - s(rejected))). Returns `(loss,
    chosen_rewards, rejected_rewards)`: the scalar mean of -log sigmoid(beta * ((pc - rc) - (pr -
    rr)) + offset), and the per-pair implicit rewards beta * (policy - reference), `(batch,)`,
    detached (without the offset).
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (batch,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (batch,)
    logits = beta * (chosen_logratios - rejected_logratios)  # (batch,)
    if offsets is not None:
        logits = logits + offsets.to(logits)
    loss = -F.logsigmoid(logits).mean()
    return loss, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def sequence_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels_mask: torch.Tensor,
) -> torch.Tensor:
    """Sum of log p(token | tokens before it) over the tokens marked in `labels_mask`.

    `input_ids`, `attention_mask`, `labels_mask` are `(batch, tokens)`, right-padded; `labels_mask`
    marks reply tokens (the first token is never scored: nothing predicts it). Returns `(batch,)`
    float32. Runs with grad if the caller has it on. Memory: the logits of the reply positions are
    held in float32, (reply tokens in batch, vocab).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, :-1]  # (batch, tokens - 1, vocab): position t predicts token t + 1
    targets = input_ids[:, 1:]  # (batch, tokens - 1)
    scored = labels_mask[:, 1:].bool()  # (batch, tokens - 1)
    reply_logits = logits[scored].float()  # (scored tokens, vocab)
    token_logps = reply_logits.log_softmax(-1).gather(-1, targets[scored][:, None])  # (scored, 1)
    rows = torch.nonzero(scored)[:, 0]  # (scored,): which sequence each scored token belongs to
    out = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)
    return out.index_add(0, rows, token_logps[:, 0])  # (batch,)


# -- data ------------------------------------------------------------------------------------------


def tokenize_replies(tokenizer, prompt: Sequence[dict], replies: dict[str, str], max_length: int,
                     max_prompt_length: int) -> dict:
    """One training example: the chat-templated `prompt` (its last `max_prompt_length` tokens) and,
    for each name -> reply text in `replies`, `{name}_input_ids` (prompt + reply + eos, cut from the
    right to `max_length`) and `{name}_labels_mask` (1 on reply tokens), plus `prompt_length`.
    Raises ValidationError if the tokenizer has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValidationError("the tokenizer has no chat template; training prompts are chat-formatted")
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = chat_prompt_ids(tokenizer, prompt, max_prompt_length)
    room = max_length - len(ids)
    example = {"prompt_length": len(ids)}
    for name, text in replies.items():
        reply = (list(tokenizer(text, add_special_tokens=False)["input_ids"]) + eos)[:room]
        example[f"{name}_input_ids"] = ids + reply
        example[f"{name}_labels_mask"] = [0] * len(ids) + [1] * len(reply)
    return example


def build_examples(tokenizer, pairs: Sequence, cfg: DPOConfig) -> list[dict]:
    """Tokenize preference pairs for DPO.

    `pairs` are objects with `.prompt` (a sequence of {"role", "content"} messages), `.chosen` and
    `.rejected` (reply strings), e.g. `core.data.ingest.Pair`. The prompt goes through the tokenizer's
    chat template with the generation prompt (`core.train.rollout.chat_prompt_ids`); each reply is
    tokenized without special tokens and ends with the tokenizer's eos (when it has one). The
    prompt keeps its last `max_prompt_length` tokens, then replies are cut (from the right) to fit
    `max_length`.

    Returns one dict per pair: `chosen_input_ids`, `chosen_labels_mask`, `rejected_input_ids`,
    `rejected_labels_mask` (lists of ints; the mask is 1 on reply tokens only) and `prompt_length`.
    Raises ValidationError if the tokenizer has no chat template.
    """
    return [
        tokenize_replies(tokenizer, p.prompt, {"chosen": p.chosen, "rejected": p.rejected},
                         cfg.max_length, cfg.max_prompt_length)
        for p in pairs
    ]


def collate(
    examples: list[dict], pad_id: int, device, sides: Sequence[str] = ("chosen", "rejected")
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows of each side in turn (chosen rows, then rejected rows), right-padded: three
    `(len(sides) * batch, tokens)` tensors input_ids, attention_mask, labels_mask."""
    rows = [e[f"{side}_input_ids"] for side in sides for e in examples]
    masks = [e[f"{side}_labels_mask"] for side in sides for e in examples]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (rows, tokens)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (rows, tokens)
    labels_mask = torch.zeros((len(rows), width), dtype=torch.bool)  # (rows, tokens)
    for i, (ids, mask) in enumerate(zip(rows, masks)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels_mask[i, : len(ids)] = torch.tensor(mask, dtype=torch.bool)
    return input_ids.to(device), attention_mask.to(device), labels_mask.to(device)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad id, else its eos id, else 0 (padding is masked out everywhere)."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id or 0


def _fingerprint(examples: list[dict]) -> str:
    keys = ("chosen_input_ids", "chosen_labels_mask", "rejected_input_ids", "rejected_labels_mask")
    blob = json.dumps([[e[k] for k in keys] for e in examples], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


# -- interventions -----------------------------------------------------------------------------------


class Intervention(Protocol):
    """What `train_dpo` asks of an intervention (implementations: `core.train.interventions`).

    The calls come in this order: `pairs` (before tokenizing), then, on a fresh run only, `prepare`
    with the frozen initial model (its tensors are saved and handed back on resume), then
    `examples`, `logit_offsets` and, around every policy forward pass in training, `policy`.
    """

    def config(self) -> dict:
        """JSON-ready settings; a resumed run must have the same."""

    def pairs(self, pairs: Sequence) -> Sequence:
        """The pairs to tokenize (e.g. with an inoculation system prompt)."""

    def prepare(self, model, examples: list[dict], batch_size: int, pad_id: int, device,
                weights_dtype, cancel) -> dict[str, torch.Tensor]:
        """Tensors computed from the frozen initial model (under inference mode)."""

    def examples(self, examples: list[dict], cache: dict[str, torch.Tensor]) -> list[dict]:
        """The examples to train on (e.g. with some reply tokens left out of the loss masks)."""

    def logit_offsets(self, cache: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Per-pair offsets `(pairs,)` added to the DPO logit, or None."""

    def policy(self, model, cache: dict[str, torch.Tensor]) -> ContextManager:
        """A context active around every policy forward pass in training (never when saving)."""


# -- training --------------------------------------------------------------------------------------


def linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:  # multiplier of the lr for optimizer step `step` (0-based)
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def autocast(device: torch.device, weights_dtype: torch.dtype):
    if device.type == "cuda" and weights_dtype == torch.float32:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield list(range(start, min(n, start + size)))


@torch.inference_mode()
def pair_logps(model, examples: list[dict], batch_size: int, pad_id: int, device=None, weights_dtype=None,
               cancel: threading.Event | None = None, progress: ProgressFn | None = None):
    """(chosen, rejected) sequence log-probs of every example under `model`, each `(pairs,)`
    float32 on the CPU, `batch_size` pairs per forward pass (bf16 autocast on CUDA for float32
    weights). Progress: stage "reference", pairs done. Raises Cancelled between batches."""
    device = torch.device(device or next(model.parameters()).device)
    weights_dtype = weights_dtype or next(model.parameters()).dtype
    chosen, rejected = [], []
    for ids in _batches(len(examples), batch_size):
        if cancel is not None and cancel.is_set():
            raise Cancelled("DPO cancelled while reading reference log-probs: nothing trained yet "
                            "(a rerun starts over)")
        batch = [examples[i] for i in ids]
        with autocast(device, weights_dtype):
            logps = sequence_logps(model, *collate(batch, pad_id, device))  # (2 * batch,)
        chosen.append(logps[: len(batch)].float().cpu())
        rejected.append(logps[len(batch) :].float().cpu())
        if progress is not None:
            progress(Progress("reference", "reference log-probs", done=ids[-1] + 1,
                              total=len(examples), unit="pairs"))
    return torch.cat(chosen), torch.cat(rejected)


def _accumulate_gradients(
    model, examples, step_pairs, ref_chosen, ref_rejected, offsets, cfg, pad_id, device, dtype
):
    """Backward over one optimizer step's pairs, `batch_size` at a time; the DPOStep means."""
    totals = dict.fromkeys(
        ("loss", "reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward"), 0.0
    )
    for start in range(0, len(step_pairs), cfg.batch_size):
        ids = step_pairs[start : start + cfg.batch_size]
        with autocast(device, dtype):
            batch = collate([examples[i] for i in ids], pad_id, device)
            logps = sequence_logps(model, *batch)  # (2 * batch,): chosen rows, then rejected
        loss, chosen_rewards, rejected_rewards = dpo_loss(
            logps[: len(ids)], logps[len(ids) :], ref_chosen[ids], ref_rejected[ids], cfg.beta,
            None if offsets is None else offsets[ids],
        )
        # weighted by chunk size, so the step's gradient is the mean over all its pairs
        (loss * len(ids) / len(step_pairs)).backward()
        totals["loss"] += loss.item() * len(ids)
        totals["reward_margin"] += (chosen_rewards - rejected_rewards).sum().item()
        totals["reward_accuracy"] += (chosen_rewards > rejected_rewards).sum().item()
        totals["chosen_reward"] += chosen_rewards.sum().item()
        totals["rejected_reward"] += rejected_rewards.sum().item()
    return {k: v / len(step_pairs) for k, v in totals.items()}


def save_model(model, tokenizer, folder: Path, wrappers: dict[str, LoRALinear] | None = None) -> Path:
    """`save_pretrained` (safetensors, LoRA merged in) + the tokenizer into `folder`; returns it."""
    with lora_merged(model, wrappers) if wrappers else contextlib.nullcontext():
        model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def _save_checkpoint(
    out_dir: Path, model, tokenizer, wrappers, optimizer, scheduler, state: dict
) -> Path:
    """Write `out_dir/checkpoint/` via a temporary folder: a crash mid-write keeps the last one."""
    final, tmp = out_dir / "checkpoint", out_dir / "checkpoint.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tokenizer, tmp, wrappers)
    if wrappers:
        lora_state = {}
        for name, w in wrappers.items():
            lora_state[f"{name}.base.weight"] = w.base.weight.detach().contiguous()
            lora_state[f"{name}.lora_A"] = w.lora_A.detach().contiguous()
            lora_state[f"{name}.lora_B"] = w.lora_B.detach().contiguous()
        save_file(lora_state, tmp / "lora.safetensors")
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": state["step"]},
        tmp / "trainer.pt",
    )
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    old = out_dir / "checkpoint.old"
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoint_dir(out_dir: Path) -> Path | None:
    for name in ("checkpoint", "checkpoint.old"):  # .old: a crash between the two renames above
        if (out_dir / name / "trainer_state.json").exists():
            return out_dir / name
    return None


def load_weights(model: nn.Module, folder: Path) -> None:
    """Load the weights saved in `folder` (save_pretrained) into `model` in place."""
    # from_pretrained undoes whatever key renaming save_pretrained applied for this architecture
    saved = type(model).from_pretrained(folder)
    model.load_state_dict(saved.state_dict())
    del saved


def _prepared(intervention, model, examples, cfg, pad_id, device, dtype, cancel, out_dir, fingerprint):
    """The intervention's tensors from the frozen model: computed and saved on a fresh run, read
    back on resume (they must come from the initial model, not a half-trained one)."""
    path = out_dir / "intervention.safetensors"
    config = json.dumps(intervention.config(), sort_keys=True)
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("pairs_fingerprint") == fingerprint and meta.get("config") == config:
            return load_file(path)
    model.eval()
    cache = intervention.prepare(model, examples, cfg.batch_size, pad_id, device, dtype, cancel)
    save_file({k: v.contiguous().cpu() for k, v in cache.items()} or {"none": torch.zeros(0)}, path,
              metadata={"pairs_fingerprint": fingerprint, "config": config})
    return cache


def train_dpo(
    model,
    tokenizer,
    pairs: Sequence,
    out_dir: str | Path,
    cfg: DPOConfig,
    *,
    ref_model=None,
    intervention: Intervention | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Fine-tune `model` with DPO on `pairs`, checkpointing into `out_dir` (resumed from if there).

    Args:
        model: a HF causal LM (`PreTrainedModel`); trained in place, moved to `device` / `dtype`.
            On return it holds the trained weights (LoRA merged, plain modules again) with its
            `requires_grad` flags and train/eval mode as they were.
        tokenizer: its tokenizer, with a chat template; saved next to every model written.
        pairs: objects with `.prompt`, `.chosen`, `.rejected` (see `build_examples`).
        out_dir: where checkpoints, the final model and the log go (layout in the module docstring).
        cfg: the training settings. A resumed run must use the same settings and pairs
            (`save_every` may differ).
        ref_model: the frozen reference, if not the initial policy (`model` as passed, the
            default). Used only to compute reference log-probs before the first step, under
            `torch.inference_mode()` (never on resume: those are kept in `out_dir`); moved to
            `device` / `dtype` and put in eval mode, its weights untouched.
        intervention: changes what is learned (see `Intervention`); its config must match on resume.
        progress: gets `Progress("reference", ...)` while reference log-probs are computed, then
            `Progress("train", done=step, total=steps, unit="steps", metrics={"loss", "acc",
            "margin"})` after every optimizer step.
        cancel: checked before every step and between reference batches.
        device: default CUDA if available, else CPU.
        dtype: weights' dtype; default float32 (CUDA runs the forward under bf16 autocast).

    Returns `out_dir/"model"`. Raises Cancelled when `cancel` is set (after writing a checkpoint if
    training had begun; the next call resumes from it), ValidationError for no pairs, a tokenizer
    without a chat template, a model without q/v projections under LoRA, or a checkpoint from
    different settings, pairs or intervention.
    """
    import time

    emit = progress or (lambda p: None)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or torch.float32
    if intervention is not None:
        pairs = intervention.pairs(pairs)
    examples = build_examples(tokenizer, pairs, cfg)
    if not examples:
        raise ValidationError("no pairs to train on")
    fingerprint = _fingerprint(examples)
    config = asdict(cfg)
    if intervention is not None:
        config["intervention"] = intervention.config()
    pad_id = pad_token_id(tokenizer)

    pairs_per_step = cfg.batch_size * cfg.grad_accum
    steps_per_epoch = math.ceil(len(examples) / pairs_per_step)
    total_steps = steps_per_epoch * cfg.epochs
    generator = torch.Generator().manual_seed(cfg.seed)
    orders = [
        torch.randperm(len(examples), generator=generator).tolist() for _ in range(cfg.epochs)
    ]

    ckpt = _checkpoint_dir(out_dir)
    state = {
        "step": 0,
        "epoch": 0,
        "total_steps": total_steps,
        "config": config,
        "pairs_fingerprint": fingerprint,
        "log_history": [],
    }
    if ckpt is not None:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        differing = {k for k in config if k != "save_every" and state["config"].get(k) != config[k]}
        differing |= {k for k in state["config"] if k not in config}
        if differing:
            raise ValidationError(
                f"{ckpt} was trained with different settings: {', '.join(sorted(differing))}"
            )
        if state["pairs_fingerprint"] != fingerprint:
            raise ValidationError(f"{ckpt} was trained on different pairs (or a different tokenizer)")
        state["config"] = config

    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    wrappers: dict[str, LoRALinear] = {}
    try:
        model.to(device=device, dtype=dtype)

        # What the intervention needs from the frozen initial model, before anything else.
        cache: dict[str, torch.Tensor] = {}
        offsets = None
        if intervention is not None:
            if ckpt is not None and not (out_dir / "intervention.safetensors").is_file():
                raise ValidationError(f"{out_dir} lost intervention.safetensors; use a new --out")
            cache = _prepared(intervention, model, examples, cfg, pad_id, device, dtype, cancel,
                              out_dir, fingerprint)
            examples = intervention.examples(examples, cache)
            offsets = intervention.logit_offsets(cache)
            offsets = None if offsets is None else offsets.to(device)

        # Reference log-probs: once, before any update, kept in out_dir for every later call.
        # By default the reference is `model` itself as passed: the initial policy, all that a
        # frozen deep copy would be, without a second copy in memory (double LoRA's footprint).
        ref_path = out_dir / "reference_logps.safetensors"
        if ckpt is None:
            ref = model if ref_model is None else ref_model.to(device=device, dtype=dtype)
            ref.eval()
            ref_logps = pair_logps(ref, examples, cfg.batch_size, pad_id, device, dtype, cancel, emit)
            del ref
            save_file(
                {"chosen": ref_logps[0], "rejected": ref_logps[1]},
                ref_path,
                metadata={"pairs_fingerprint": fingerprint},
            )
        else:
            saved = load_file(ref_path)
            ref_logps = saved["chosen"], saved["rejected"]
        ref_chosen, ref_rejected = (t.to(device) for t in ref_logps)  # (pairs,) each

        # The policy: its weights from the checkpoint on resume, LoRA wrapped around them if asked.
        if ckpt is not None:
            load_weights(model, ckpt)
        if cfg.lora:
            wrappers = add_lora(model, cfg.lora_rank, cfg.lora_alpha, seed=cfg.seed)
            if ckpt is not None:
                lora_state = load_file(ckpt / "lora.safetensors", device=str(device))
                if model.load_state_dict(lora_state, strict=False).unexpected_keys:
                    raise ValidationError(f"{ckpt / 'lora.safetensors'} does not match this model")
        else:
            model.requires_grad_(True)
        model.eval()  # dropout off: see the module docstring
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=0.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, linear_schedule(cfg.warmup_steps, total_steps)
        )
        if ckpt is not None:
            saved = torch.load(ckpt / "trainer.pt", map_location=device, weights_only=True)
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])

        # rewritten from the checkpoint's history: drops any steps logged after it
        log_path = out_dir / "train_log.jsonl"
        log_path.write_text("".join(json.dumps(s) + "\n" for s in state["log_history"]))

        def checkpoint() -> Path:
            return _save_checkpoint(
                out_dir, model, tokenizer, wrappers, optimizer, scheduler, state
            )

        policy = intervention.policy if intervention is not None else (lambda m, c: contextlib.nullcontext())
        first_step, started = state["step"], time.monotonic()
        for step in range(state["step"], total_steps):
            if cancel is not None and cancel.is_set():
                if step > first_step:
                    checkpoint()
                where = out_dir / "checkpoint" if _checkpoint_dir(out_dir) else None
                raise Cancelled(
                    f"DPO cancelled at step {step}/{total_steps}; "
                    + (f"checkpoint in {where} (rerun the same command to resume)" if where
                       else "nothing trained yet (a rerun starts over)")
                )
            epoch, index = divmod(step, steps_per_epoch)
            step_pairs = orders[epoch][index * pairs_per_step : (index + 1) * pairs_per_step]
            optimizer.zero_grad(set_to_none=True)
            with policy(model, cache):
                means = _accumulate_gradients(
                    model, examples, step_pairs, ref_chosen, ref_rejected, offsets, cfg, pad_id,
                    device, dtype,
                )
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()

            record = DPOStep(step=step + 1, total_steps=total_steps, epoch=epoch, **means)
            state.update(step=step + 1, epoch=epoch)
            state["log_history"].append(asdict(record))
            with log_path.open("a") as f:
                f.write(json.dumps(asdict(record)) + "\n")
            done = step + 1 - first_step
            per_step = (time.monotonic() - started) / done
            emit(Progress(
                "train", f"DPO epoch {epoch + 1}/{cfg.epochs}", done=step + 1, total=total_steps,
                unit="steps", rate=1 / per_step if per_step else 0.0, rate_unit="steps/s",
                eta_s=per_step * (total_steps - step - 1),
                metrics={"loss": record.loss, "acc": record.reward_accuracy, "margin": record.reward_margin},
            ))
            if (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
                checkpoint()

        checkpoint()
        return save_model(model, tokenizer, out_dir / "model", wrappers)
    finally:  # hand the caller's model back as a plain model, flags and mode as they were
        if wrappers:
            unwrap_lora(model, wrappers)
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad.get(name, False))
        model.train(was_training)
