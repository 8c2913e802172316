"""Sparse autoencoders: encode with a native torch SAE read from an sae-lens folder, train a TopK SAE
with sae-lens's SAETrainer, measure quality.

Encoding never imports sae_lens (~9 s): `load_sae` reads cfg.json + sae_weights.safetensors itself
and encodes exactly as sae-lens's inference classes do. Training still uses sae-lens, imported
inside the functions that need it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from core.errors import Cancelled  # noqa: F401  (re-exported: older callers import it from here)
from core.errors import StoreError
from core.model.catalog import SAE_INITS
from core.model.publish import partial_folder, publish
from core.progress import Progress, ProgressFn, check_cancel

# What sae-lens saves for inference. Its BatchTopK and Matryoshka-BatchTopK trainers save a
# "jumprelu" SAE (their running top-k threshold becomes every feature's threshold); its TopK trainer
# saves a "topk" SAE with the decoder norms folded into W_enc, b_enc and W_dec.
ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
_RUNTIME_NORMS = ("none", "constant_norm_rescale", "layer_norm")
# sae-lens folds these into the weights when it saves (its trainer) or pulls (from_pretrained) an
# SAE and then writes "none"; when a folder still names one, sae-lens applies nothing at encode
# time, and neither do we (there is no stored factor to apply).
_FOLDED_NORMS = ("expected_average_only_in", "covariance_whitening")
_CHUNK_BYTES = 1 << 29  # pre-activations (tokens, d_sae) float32 held at once while encoding


@dataclass(frozen=True)
class SAEConfig:
    """The fields of an sae-lens cfg.json that change what `encode` returns."""

    architecture: str
    d_in: int
    d_sae: int
    dtype: str = "float32"
    k: int = 0  # topk only
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    rescale_acts_by_decoder_norm: bool = False  # topk only
    hook_name: str | None = None


class SparseCodes(NamedTuple):
    """Active SAE features of `n` tokens as triplets, ordered by token: never a dense (n, d_sae)."""

    token: torch.Tensor  # (nnz,) int64 row of the encoded input
    feat: torch.Tensor  # (nnz,) int64 feature index
    val: torch.Tensor  # (nnz,) float32 activation, > 0


def _sae_lens_defaults(cfg: dict) -> dict:
    """cfg.json of an SAE saved by sae-lens < 6, in the >= 6 field names (as sae-lens's loader does)."""
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    major = int(str(version).split(".")[0]) if version and str(version)[0].isdigit() else 0
    if major >= 6:
        return cfg
    cfg = dict(cfg)
    if "hook_point" in cfg:
        cfg.setdefault("hook_name", cfg["hook_point"])
    if cfg.get("activation_fn", cfg.get("activation_fn_str")) == "topk":
        k = (cfg.get("activation_fn_kwargs") or {}).get("k")
        if k is not None:
            cfg["architecture"], cfg["k"] = "topk", k
    cfg.setdefault("architecture", "standard")
    if isinstance(cfg.get("normalize_activations"), bool):
        cfg["normalize_activations"] = "expected_average_only_in" if cfg["normalize_activations"] else "none"
    if "hook_z" in str(cfg.get("hook_name") or ""):
        cfg.setdefault("reshape_activations", "hook_z")
    return cfg


def read_sae_config(path: Path | str) -> SAEConfig:
    """The encode-relevant config of the sae-lens folder `path`. Raises StoreError for what we cannot encode."""
    path = Path(path)
    try:
        raw = _sae_lens_defaults(json.loads((path / "cfg.json").read_text()))
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: no readable sae-lens cfg.json ({exc})") from None
    arch = raw.get("architecture", "standard")
    if arch not in ARCHITECTURES:
        raise StoreError(f"{path}: SAE architecture {arch!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
    if raw.get("reshape_activations", "none") not in ("none", None):
        raise StoreError(f"{path}: SAE reads {raw['reshape_activations']} activations, not the residual stream")
    norm = raw.get("normalize_activations") or "none"
    if norm not in _RUNTIME_NORMS + _FOLDED_NORMS:
        raise StoreError(f"{path}: normalize_activations={norm!r} is not supported")
    meta = raw.get("metadata") or {}
    return SAEConfig(
        architecture=arch,
        d_in=int(raw["d_in"]),
        d_sae=int(raw["d_sae"]),
        dtype=raw.get("dtype") or "float32",
        k=int(raw.get("k") or 0),
        apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        normalize_activations=norm,
        rescale_acts_by_decoder_norm=bool(raw.get("rescale_acts_by_decoder_norm", False)) and arch == "topk",
        hook_name=meta.get("hook_name") or raw.get("hook_name"),
    )


@contextmanager
def _fast_fp32_matmul(device: torch.device):
    """TF32 tensor cores for float32 matmuls on CUDA (fp32 accumulation and output): the encoder
    matmul of a 65k-wide SAE is ~6% of an 8B model's FLOPs, and full-fp32 CUDA cores would make it
    cost as much as the model. No effect on CPU."""
    if device.type != "cuda":
        yield
        return
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


class SparseAutoencoder:
    """A sae-lens SAE in inference form, as plain tensors: standard (ReLU), topk, jumprelu, gated.

    `encode` returns what sae-lens's `SAE.load_from_disk(path).encode` returns; `encode_sparse`
    returns the same activations as (token, feature, value) triplets without a dense matrix.
    """

    def __init__(self, cfg: SAEConfig, weights: dict[str, torch.Tensor]):
        self.cfg = cfg
        self.W_enc = weights["W_enc"]  # (d_in, d_sae)
        self.W_dec = weights["W_dec"]  # (d_sae, d_in)
        self.b_dec = weights["b_dec"]  # (d_in,)
        self.b_enc = weights.get("b_enc")  # (d_sae,); gated SAEs have b_gate / b_mag instead
        self.threshold = weights.get("threshold")  # (d_sae,) jumprelu
        self.b_gate, self.b_mag = weights.get("b_gate"), weights.get("b_mag")
        r_mag = weights.get("r_mag")
        self.W_mag = self.W_enc * r_mag.exp() if r_mag is not None else None  # gated magnitude path
        # sae-lens's TopK multiplies pre-activations by the decoder norms (1 after its save folds them).
        self.dec_norm = self.W_dec.norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else None  # (d_sae,)
        need = {"topk": ("b_enc",), "standard": ("b_enc",), "jumprelu": ("b_enc", "threshold"),
                "gated": ("b_gate", "b_mag")}[cfg.architecture]
        missing = [n for n in need if getattr(self, n) is None]
        if missing or (cfg.architecture == "gated" and r_mag is None):
            raise StoreError(f"{cfg.architecture} SAE weights lack {', '.join(missing or ['r_mag'])}")
        if cfg.architecture == "topk" and not 0 < cfg.k <= cfg.d_sae:
            raise StoreError(f"topk SAE with k={cfg.k} and d_sae={cfg.d_sae}")

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    # -- encode ---------------------------------------------------------------------------------

    def _sae_in(self, x: torch.Tensor) -> torch.Tensor:
        """sae-lens's process_sae_in: cast, run-time normalisation, minus b_dec."""
        x = x.to(device=self.device, dtype=self.dtype)  # (n, d_in)
        if self.cfg.normalize_activations == "constant_norm_rescale":
            x = x * ((self.cfg.d_in**0.5) / x.norm(dim=-1, keepdim=True))
        elif self.cfg.normalize_activations == "layer_norm":
            x = x - x.mean(dim=-1, keepdim=True)
            x = x / (x.std(dim=-1, keepdim=True) + 1e-5)
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def _fire(self, sae_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-activations (n, d_sae) and where they fire (n, d_sae) bool; topk is handled apart."""
        if self.cfg.architecture == "gated":
            gate = sae_in @ self.W_enc + self.b_gate > 0
            mag = sae_in @ self.W_mag + self.b_mag
            return mag, gate & (mag > 0)
        h = sae_in @ self.W_enc + self.b_enc
        if self.cfg.architecture == "jumprelu":
            return h, (h > self.threshold) & (h > 0)
        return h, h > 0

    def _topk(self, sae_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = sae_in @ self.W_enc + self.b_enc  # (n, d_sae)
        if self.dec_norm is not None:
            h = h * self.dec_norm
        vals, idx = h.topk(self.cfg.k, dim=-1, sorted=False)  # (n, k) each
        return vals.relu(), idx

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (n, d_sae) for activations x (n, d_in), dense (small inputs only)."""
        with _fast_fp32_matmul(self.device):
            sae_in = self._sae_in(x)
            if self.cfg.architecture == "topk":
                vals, idx = self._topk(sae_in)
                return torch.zeros(len(sae_in), self.cfg.d_sae, dtype=vals.dtype, device=vals.device).scatter_(-1, idx, vals)
            h, fire = self._fire(sae_in)
            return h * fire.to(h.dtype) if self.cfg.architecture != "standard" else h.relu()

    @torch.inference_mode()
    def encode_sparse(self, x: torch.Tensor, chunk_tokens: int | None = None) -> SparseCodes:
        """The active features of x (n, d_in) as token-ordered triplets (values > 0, float32).

        Tokens are encoded in chunks so that at most ~512 MB of pre-activations exist at once;
        TopK goes straight from the top-k of each token to triplets.
        """
        n = len(x)
        chunk = chunk_tokens or max(1, _CHUNK_BYTES // (4 * self.cfg.d_sae))
        toks, feats, vals = [], [], []
        with _fast_fp32_matmul(self.device):
            for s in range(0, n, chunk):
                sae_in = self._sae_in(x[s : s + chunk])  # (c, d_in)
                if self.cfg.architecture == "topk":
                    v, f = self._topk(sae_in)  # (c, k) each
                    t = torch.arange(s, s + len(sae_in), device=v.device).repeat_interleave(self.cfg.k)
                    v, f = v.reshape(-1), f.reshape(-1)
                    keep = v > 0
                    toks.append(t[keep])
                    feats.append(f[keep])
                    vals.append(v[keep])
                else:
                    h, fire = self._fire(sae_in)
                    t, f = fire.nonzero(as_tuple=True)  # row-major: by token, then feature
                    toks.append(t + s)
                    feats.append(f)
                    vals.append(h[t, f])
        if not toks:
            empty = torch.zeros(0, dtype=torch.long, device=self.device)
            return SparseCodes(empty, empty, torch.zeros(0, dtype=torch.float32, device=self.device))
        return SparseCodes(torch.cat(toks), torch.cat(feats), torch.cat(vals).float())

    # -- decode ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, feats: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction (n, d_in) of dense feature activations (n, d_sae). A run-time normalised
        SAE (constant_norm_rescale, layer_norm) needs the input `x` to undo the normalisation."""
        feats = feats.to(self.dtype)
        if self.dec_norm is not None:
            feats = feats * (1 / self.dec_norm)
        out = feats @ self.W_dec + self.b_dec
        norm = self.cfg.normalize_activations
        if norm in ("constant_norm_rescale", "layer_norm"):
            if x is None:
                raise ValueError(f"decoding a {norm} SAE needs the input activations")
            x = x.to(device=self.device, dtype=self.dtype)
            if norm == "constant_norm_rescale":
                out = out / ((self.cfg.d_in**0.5) / x.norm(dim=-1, keepdim=True))
            else:
                out = out * x.std(dim=-1, keepdim=True) + x.mean(dim=-1, keepdim=True)
        return out


def load_sae(path: Path | str, device: str = "cpu", dtype: torch.dtype | None = None) -> SparseAutoencoder:
    """The SAE in the sae-lens folder `path` (cfg.json + sae_weights.safetensors), without sae_lens.

    Weights load straight onto `device` in `dtype` (default: the cfg's dtype, as sae-lens does).
    Raises StoreError when the folder is not an SAE we can encode with.
    """
    from safetensors import safe_open

    cfg = read_sae_config(path)
    dtype = dtype or getattr(torch, cfg.dtype.removeprefix("torch."), torch.float32)
    weights_file = Path(path) / "sae_weights.safetensors"
    if not weights_file.is_file():
        raise StoreError(f"{path}: no sae_weights.safetensors")
    weights = {}
    with safe_open(str(weights_file), framework="pt", device=str(device)) as f:
        for name in f.keys():  # noqa: SIM118
            weights[name] = f.get_tensor(name).to(dtype)
    if "log_threshold" in weights:  # older JumpReLU checkpoints
        weights["threshold"] = weights.pop("log_threshold").exp()
    scale = weights.pop("scaling_factor", None)
    if scale is not None and not torch.allclose(scale, torch.ones_like(scale)):
        raise StoreError(f"{path}: a fine-tuning scaling_factor is not supported")
    return SparseAutoencoder(cfg, weights)


@torch.inference_mode()
def encode(sae: SparseAutoencoder, acts: torch.Tensor) -> torch.Tensor:
    """Feature activations (tokens, d_sae) for residual activations (tokens, d_in), dense."""
    return sae.encode(acts)


@dataclass(frozen=True)
class SAEQuality:
    fvu: float  # fraction of variance unexplained on held-out activations
    l0: float  # mean active features per token
    dead_fraction: float  # features that never fire on the held-out set
    n_eval_tokens: int
    d_sae: int
    train_tokens: int = 0
    train_seconds: float = 0.0


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
        x_hat = sae.decode(f, x)  # (tokens, d_in)
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


EVAL_EVERY = 25  # steps between held-out FVU checks when training stops at a plateau
EVAL_TOKENS = 4096  # held-out activations read by each check


@torch.no_grad()
def _data_init(sae, train: torch.Tensor, seed: int, decoder: bool = True) -> None:
    """Initialise from the data, as EleutherAI's sparsify and dictionary_learning do: b_dec at the mean
    of `train` (tokens, d_in; already in the trainer's normalised space), and with `decoder` each decoder
    row a centred training activation (drawn by `seed`) at sae-lens's decoder_init_norm, the encoder its
    transpose (without: sae-lens's random rows)."""
    mean = train.mean(0)  # (d_in,)
    sae.b_dec.data.copy_(mean)
    if not decoder:
        return
    g = torch.Generator().manual_seed(seed + 1)
    rows = train[torch.randint(len(train), (sae.cfg.d_sae,), generator=g)] - mean  # (d_sae, d_in)
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-8) * (sae.cfg.decoder_init_norm or 0.1)
    sae.W_dec.data.copy_(rows)
    sae.W_enc.data.copy_(rows.T.contiguous())


@torch.no_grad()
def _fvu_in_training(sae, scale: float, x: torch.Tensor) -> float:
    """Held-out FVU of a training SAE on `x` (tokens, d_in), in its normalised space (FVU is scale-free)."""
    x = x * scale
    x_hat = sae.decode(sae.encode(x))
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum().clamp_min(1e-12))


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
    init: str = "sae-lens",
    patience: int = 0,
    margin: float = 0.01,
    metadata: dict | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> SAEQuality:
    """Train a TopK SAE on residual activations with sae-lens's SAETrainer and save it in sae-lens format.

    Args:
        acts: (tokens, d_in) float32 activations; the last `eval_fraction` (after a seeded shuffle) is held out.
        out_dir: written atomically with cfg.json, sae_weights.safetensors and quality.json.
        train_tokens: samples seen in training (several epochs over the buffer when larger than it); with
            `patience`, the most it sees.
        init: "sae-lens" (its own: random unit decoder rows at decoder_init_norm, b_dec 0), "data"
            (`_data_init`: b_dec and decoder rows from the data) or "mean" (b_dec at the data's mean,
            sae-lens's random rows).
        patience: 0 trains every step. Else every EVAL_EVERY steps the held-out FVU (on up to EVAL_TOKENS
            held-out activations) is read, and training stops once `patience` steps have passed without
            it falling below (1 - `margin`) times its best: the SAE of that step is kept (the schedule
            stays the one of `train_tokens`; the last SAE, not the best, so the held-out set picks only
            when to stop).
    Returns the held-out quality; quality.json also records the steps run, the cap, why it stopped and
    the held-out FVU it read. Raises Cancelled if `cancel` is set during training.
    """
    from sae_lens import TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE
    from sae_lens.training.activation_scaler import ActivationScaler
    from sae_lens.training.sae_trainer import SAETrainer

    if init not in SAE_INITS:
        raise ValueError(f"unknown SAE initialisation {init!r} (known: {', '.join(SAE_INITS)})")

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

    scale = None
    if init != "sae-lens":
        # the activation scale as sae-lens estimates it (the same first batches), so that the data
        # initialisation lives in the space it trains in; fit() then skips its own estimate
        scaler = ActivationScaler()
        scaler.estimate_scaling_factor(d_in=acts.shape[1], data_provider=_batches(train, batch_size, seed, lambda i: None),
                                       n_batches_for_norm_estimate=norm_batches)
        scale = scaler.scaling_factor
        _data_init(sae, train * scale, seed, decoder=init == "data")
    first = 0 if scale is not None else norm_batches  # fit()'s own estimate reads the first batches
    probe = held_out[:EVAL_TOKENS].to(device)
    plateau = {"best": float("inf"), "best_step": 0, "stopped": None, "trace": []}
    trainer = None

    def on_batch(i: int) -> None:
        check_cancel(cancel, "SAE training")
        step = i - first
        if progress and step >= 0 and (step % 10 == 0 or step == total_steps - 1):
            progress(Progress("sae", "training", done=step + 1, total=total_steps, unit="steps"))
        if patience and step > 0 and step % EVAL_EVERY == 0 and plateau["stopped"] is None:
            fvu = _fvu_in_training(trainer.sae, trainer.activation_scaler.scaling_factor, probe)
            plateau["trace"].append((step, round(fvu, 5)))
            if fvu < plateau["best"] * (1 - margin):
                plateau["best"], plateau["best_step"] = fvu, step
            elif step - plateau["best_step"] >= patience:
                plateau["stopped"] = step + 1  # this batch is the last one
                trainer.cfg.total_training_samples = trainer.n_training_samples + batch_size
                if progress:
                    progress(Progress("sae", f"held-out FVU {fvu:.3f} has not improved by {margin:.0%} in "
                                             f"{patience} steps: stopping at step {step + 1} of {total_steps}",
                                      done=step + 1, total=step + 1, unit="steps"))

    start = time.perf_counter()
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=_batches(train, batch_size, seed, on_batch))
    if scale is not None:
        trainer.activation_scaler.scaling_factor = scale
    trained = trainer.fit()
    seconds = time.perf_counter() - start
    steps = plateau["stopped"] or total_steps

    # Save the inference form, then check it through the same loader everything else uses.
    out_dir = Path(out_dir)
    tmp = partial_folder(out_dir)
    trained.save_inference_model(tmp)
    meta = dict(metadata or {})
    loaded = load_sae(tmp)
    q = quality(loaded, held_out.to(loaded.W_enc.device))
    q = SAEQuality(**{**asdict(q), "train_tokens": steps * batch_size, "train_seconds": seconds})
    meta["training"] = {"init": init, "steps": steps, "cap_steps": total_steps, "seed": seed,
                        "stopped": "held-out FVU plateau" if plateau["stopped"] else "cap",
                        **({"patience": patience, "margin": margin, "eval_every": EVAL_EVERY,
                            "heldout_fvu": plateau["trace"]} if patience else {})}
    (tmp / "quality.json").write_text(json.dumps({**asdict(q), **meta}, indent=2))
    publish(tmp, out_dir, lambda d: False)  # a retraining replaces the SAE that was there
    return q
