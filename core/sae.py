"""Sparse autoencoders: load (sae-lens format), train a TopK SAE with sae-lens's SAETrainer, measure quality.

sae-lens takes ~9 s to import, so it is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from core.errors import Cancelled  # noqa: F401  (re-exported: older callers import it from here)
from core.progress import Progress, ProgressFn, check_cancel


@dataclass(frozen=True)
class SAEQuality:
    fvu: float  # fraction of variance unexplained on held-out activations
    l0: float  # mean active features per token
    dead_fraction: float  # features that never fire on the held-out set
    n_eval_tokens: int
    d_sae: int
    train_tokens: int = 0
    train_seconds: float = 0.0


def load_sae(path: Path | str, device: str = "cpu"):
    """An sae-lens SAE from a folder (cfg.json + sae_weights.safetensors), in inference mode."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(path), device=device)
    sae.eval()
    return sae


@torch.inference_mode()
def encode(sae, acts: torch.Tensor) -> torch.Tensor:
    """Feature activations (tokens, d_sae) for residual activations (tokens, d_in)."""
    return sae.encode(acts.to(sae.W_enc.dtype).to(sae.W_enc.device))


@torch.inference_mode()
def quality(sae, acts: torch.Tensor, batch: int = 4096) -> SAEQuality:
    """FVU, L0 and dead-feature fraction of `sae` on held-out activations (tokens, d_in)."""
    sq_err = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    l0_sum = 0.0
    mean = acts.mean(0, keepdim=True)
    total_var = ((acts - mean) ** 2).sum().item()
    for i in range(0, len(acts), batch):
        x = acts[i : i + batch]
        f = sae.encode(x)  # (tokens, d_sae)
        x_hat = sae.decode(f)  # (tokens, d_in)
        sq_err += ((x - x_hat) ** 2).sum().item()
        active = f > 0
        fired |= active.any(0).cpu()
        l0_sum += active.sum().item()
    return SAEQuality(
        fvu=sq_err / total_var,
        l0=l0_sum / len(acts),
        dead_fraction=1.0 - fired.float().mean().item(),
        n_eval_tokens=len(acts),
        d_sae=sae.cfg.d_sae,
    )


def _batches(
    acts: torch.Tensor,
    batch_size: int,
    seed: int,
    on_batch: Callable[[int], None],
) -> Iterator[torch.Tensor]:
    """Endless shuffled epochs over an activation buffer; calls `on_batch(i)` before each batch."""
    g = torch.Generator().manual_seed(seed)
    i = 0
    while True:
        perm = torch.randperm(len(acts), generator=g)
        for s in range(0, len(acts) - batch_size + 1, batch_size):
            on_batch(i)
            i += 1
            yield acts[perm[s : s + batch_size]]


def train_topk_sae(
    acts: torch.Tensor,
    out_dir: Path,
    *,
    d_sae: int,
    k: int,
    train_tokens: int,
    batch_size: int = 4096,
    lr: float = 4e-4,
    eval_fraction: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    metadata: dict | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> SAEQuality:
    """Train a TopK SAE on residual activations with sae-lens's SAETrainer and save it in sae-lens format.

    Args:
        acts: (tokens, d_in) float32 activations; the last `eval_fraction` (after a seeded shuffle) is held out.
        out_dir: written atomically with cfg.json, sae_weights.safetensors and quality.json.
        train_tokens: samples seen in training (several epochs over the buffer when larger than it).
    Returns the held-out quality. Raises Cancelled if `cancel` is set during training.
    """
    from sae_lens import TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE
    from sae_lens.training.sae_trainer import SAETrainer

    g = torch.Generator().manual_seed(seed)
    acts = acts[torch.randperm(len(acts), generator=g)].float().contiguous()
    n_eval = max(256, int(len(acts) * eval_fraction))
    train, held_out = acts[n_eval:], acts[:n_eval]
    batch_size = min(batch_size, len(train))
    total_steps = max(1, train_tokens // batch_size)
    norm_batches = min(8, max(1, len(train) // batch_size))

    cfg = TopKTrainingSAEConfig(
        d_in=acts.shape[1],
        d_sae=d_sae,
        k=k,
        dtype="float32",
        device=device,
        normalize_activations="expected_average_only_in",
        decoder_init_norm=0.1,
    )
    # sae-lens initialises from the global RNG; fork it so a worker thread never reseeds the process's.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sae = TopKTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=total_steps * batch_size,
        train_batch_size_samples=batch_size,
        lr=lr,
        lr_end=lr / 10,
        lr_scheduler_name="cosineannealing",
        lr_warm_up_steps=min(50, total_steps // 10),
        lr_decay_steps=0,
        device=device,
        dead_feature_window=max(50, total_steps // 4),
        feature_sampling_window=max(100, total_steps // 2),
        n_batches_for_norm_estimate=norm_batches,
        logger=LoggingConfig(log_to_wandb=False),
    )

    def on_batch(i: int) -> None:
        check_cancel(cancel, "SAE training")
        step = i - norm_batches  # the first batches only estimate the activation norm
        if progress and step >= 0 and (step % 10 == 0 or step == total_steps - 1):
            progress(Progress("sae", "training", done=step + 1, total=total_steps, unit="steps"))

    start = time.perf_counter()
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_batches(train, batch_size, seed, on_batch))
    trained = trainer.fit()
    seconds = time.perf_counter() - start

    # Save the inference form, then check it through the same loader everything else uses.
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".partial")
    trained.save_inference_model(tmp)
    meta = dict(metadata or {})
    loaded = load_sae(tmp)
    q = quality(loaded, held_out.to(loaded.W_enc.device))
    q = SAEQuality(**{**asdict(q), "train_tokens": total_steps * batch_size, "train_seconds": seconds})
    (tmp / "quality.json").write_text(json.dumps({**asdict(q), **meta}, indent=2))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return q


def read_quality(sae_path: Path) -> dict | None:
    q = Path(sae_path) / "quality.json"
    return json.loads(q.read_text()) if q.is_file() else None

