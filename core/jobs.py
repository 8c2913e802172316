"""The session layer's jobs that open no workspace of their own: train DPO on a dataset, validate a
trained model against a workspace's prediction, summarise seeds, the goblin test and the goblin loop,
the intervention plan of a workspace, and a truth file. The CLI reaches the layers below through
these functions and `core.session` only (tests/unit/test_layers.py checks it).

Each long job reports through `progress` and stops when `cancel` is set (core.progress).
"""

from __future__ import annotations

import threading
from pathlib import Path

from core.errors import UsageError
from core.progress import ProgressFn


def train_dpo(data: Path | str, out: Path | str, *, lr: float | None = None, lora: bool = False,
              max_length: int = 512, progress: ProgressFn | None = None, cancel: threading.Event | None = None,
              model: str | None = None, init_model: Path | str | None = None, limit: int | None = None,
              exclude_marked: Path | str | None = None, holdout: float = 0.0, split_seed: int = 0,
              plan: Path | str | None = None, format: str | None = None, skip_invalid: bool = False,
              device: str | None = None, **config):
    """DPO on `data` into `out` (resumed when `out` holds a run). `config`: the other core.train.dpo.DPOConfig
    fields (beta, epochs, batch_size, grad_accum, seed, save_every). `lr` None: 5e-4 with LoRA, 5e-6 for
    full fine-tuning. Returns core.train.training.TrainResult."""
    from core.train.dpo import DPOConfig
    from core.train.training import train_on_dataset

    cfg = DPOConfig(lr=lr if lr is not None else (5e-4 if lora else 5e-6), lora=lora, max_length=max_length,
                    max_prompt_length=min(256, max_length // 2), **config)
    return train_on_dataset(data, out, cfg, model=model, init_model=init_model, limit=limit,
                            exclude_marked=exclude_marked, holdout=holdout, split_seed=split_seed,
                            plan_workspace=plan, format=format, skip_invalid=skip_invalid, device=device,
                            progress=progress, cancel=cancel)


def validate(workspace: Path | str, trained: Path | str, *, paper: bool = False, temperature: float | None = None,
             samples: int | None = None, max_new_tokens: int = 64, seed: int = 0, batch_size: int = 16,
             progress: ProgressFn | None = None, cancel: threading.Event | None = None, **options):
    """Predicted vs actual shifts of the model trained in `trained` on `workspace`'s data
    (core.checks.validate.validate; `options`: its prompts, n_prompts, concepts, tau, top_k, plot,
    match_length, device). Decoding is greedy unless `temperature` is given; `paper` samples 4 replies
    per prompt at T = 1, the paper's protocol. Returns its ValidationReport."""
    from core.checks.validate import validate as run_validation
    from core.train.rollout import Decoding

    decoding = Decoding(
        max_new_tokens=max_new_tokens,
        temperature=temperature if temperature is not None else (1.0 if paper else 0.0),
        samples=samples if samples is not None else (4 if paper else 1),
        seed=seed, batch_size=batch_size,
    )
    return run_validation(workspace, trained, decoding=decoding, progress=progress, cancel=cancel, **options)


def seed_summary(reports) -> dict:
    """Mean ± SD and range over data-order seeds of each agreement number of validation reports (files
    or train-dpo folders)."""
    from core.checks.validate import read_report, seed_summary as summarise

    return summarise([read_report(p) for p in reports])


def goblin(data: Path | str, workspace: Path | str, rate: float, **options):
    """The goblin test on a planted copy of `data` (core.checks.goblin.run_goblin)."""
    from core.checks.goblin import run_goblin

    return run_goblin(data, workspace, rate, **options)


def goblin_loop(data: Path | str, work: Path | str, *, device: str | None = None,
                progress: ProgressFn | None = None, cancel: threading.Event | None = None, **options) -> dict:
    """The goblin loop, whole (core.checks.goblin_loop.run_goblin_loop); `options` as
    LoopSettings.from_options takes them."""
    from core.checks.goblin_loop import LoopSettings, run_goblin_loop

    settings = LoopSettings.from_options(**options)
    return run_goblin_loop(data, work, settings, device=device, progress=progress, cancel=cancel)


def plan(workspace: Path | str):
    """The intervention plan saved in `workspace`, or None."""
    from core.train.interventions import load_plan

    return load_plan(workspace)


def save_plan(workspace: Path | str, kind: str, features: list[int], strength: float | None = None,
              label: str = "", text: str = ""):
    """Save the plan that `train-dpo --plan WS` applies. Returns it. Raises UsageError for a bad kind."""
    from core.train.interventions import make_plan, save_plan as save

    if not features:
        raise UsageError("--features is required with --kind (the concept's SAE features)")
    p = make_plan(workspace, kind, features, strength, label=label, text=text,
                  source="features " + ",".join(map(str, features)))
    save(workspace, p)
    return p


def clear_plan(workspace: Path | str) -> bool:
    """Remove the workspace's plan. Returns whether there was one."""
    from core.train.interventions import clear_plan as clear

    return clear(workspace)


def read_truth(path: Path | str) -> set[int]:
    """The planted source indices of a truth file {"planted": [source_index, ...]}. Raises UsageError."""
    from core.data.jsonfile import read_json_file

    raw = read_json_file(path, "the truth file", UsageError)
    planted = raw.get("planted") if isinstance(raw, dict) else None
    if not isinstance(planted, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in planted):
        raise UsageError(f"{path}: field 'planted': expected a list of source indices (integers)")
    return set(planted)
