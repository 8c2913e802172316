"""`datadebug train-dpo` and `validate`: a real DPO run, and predicted vs actual shifts."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import typer

from core.cli.app import JSON, THREADS, app, ctrl_c_cancels, emit, set_threads
from core.textsafe import visible

class _StepLine:
    """DPO progress on stderr: one rewritten line on a terminal, a line per step otherwise."""

    def __init__(self):
        self.tty = sys.stderr.isatty() and os.environ.get("DATADEBUG_PROGRESS") != "lines"
        self.start = time.monotonic()
        self.first_step = None

    def __call__(self, s) -> None:
        now = time.monotonic()
        if self.first_step is None:
            self.first_step = (s.step - 1, now)  # a resumed run starts mid-way
        done = s.step - self.first_step[0]
        per_step = (now - self.first_step[1]) / max(done - 1, 1) if done > 1 else now - self.start
        eta = per_step * (s.total_steps - s.step)
        line = (
            f"step {s.step}/{s.total_steps} epoch {s.epoch + 1} | loss {s.loss:.4f} | "
            f"reward acc {s.reward_accuracy:.2f} margin {s.reward_margin:+.3f} | "
            f"{per_step:.1f} s/step ETA {eta / 60:.0f} min"
        )
        if self.tty:
            print("\r" + line.ljust(100), end="", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


@app.command("train-dpo")
def train_dpo_cmd(
    data: Path = typer.Argument(..., help="Preference data: .jsonl, .jsonl.gz, .json or .parquet"),
    out: Path = typer.Option(..., "--out", help="Output folder (rerun with the same one to resume)"),
    model: str | None = typer.Option(None, help="Model from the catalogue (default: the embedded one)"),
    exclude_marked: Path | None = typer.Option(
        None, "--exclude-marked", help="Workspace of DATA whose marked pairs are left out"
    ),
    beta: float = typer.Option(0.1, help="DPO's beta: the strength of the tie to the reference"),
    epochs: int = typer.Option(1),
    lr: float | None = typer.Option(None, help="Learning rate (default 5e-6; 5e-4 with --lora)"),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA on q/v projections (merged when saved)"),
    limit: int | None = typer.Option(None, help="Train on the first N valid pairs (before marked ones are dropped)"),
    max_length: int = typer.Option(512, help="Prompt + reply tokens per sequence"),
    batch_size: int = typer.Option(4, help="Pairs per forward pass"),
    grad_accum: int = typer.Option(1, help="Forward passes per optimizer step"),
    save_every: int = typer.Option(50, help="Optimizer steps between checkpoints"),
    seed: int = typer.Option(0),
    format: str | None = typer.Option(None, help="standard | conversational | hh-rlhf | sharegpt (default: detect)"),
    skip_invalid: bool = typer.Option(False, help="Skip invalid records instead of stopping"),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda when available)"),
    threads: int | None = THREADS,
    as_json: bool = JSON,
):
    """Fine-tune the model with DPO on DATA (Ctrl-C saves a checkpoint; rerun to resume)."""
    from core.dpo import DPOConfig
    from core.validate import train_on_dataset

    set_threads(threads)
    cfg = DPOConfig(
        beta=beta, lr=lr if lr is not None else (5e-4 if lora else 5e-6), epochs=epochs,
        batch_size=batch_size, grad_accum=grad_accum, max_length=max_length,
        max_prompt_length=min(256, max_length // 2), lora=lora, seed=seed, save_every=save_every,
    )
    with ctrl_c_cancels("saving a checkpoint after this step") as cancel:
        r = train_on_dataset(
            data, out, cfg, model=model, limit=limit, exclude_marked=exclude_marked,
            format=format, skip_invalid=skip_invalid, device=device,
            progress=_StepLine(), cancel=cancel,
        )
    print(file=sys.stderr)
    if r.already_done:
        head = f"already trained: {r.steps} steps on {r.n_pairs} pairs"
    elif r.cancelled:
        head = (
            f"cancelled at step {r.steps}/{r.total_steps}; checkpoint in {out}/checkpoint "
            "(rerun the same command to resume)"
        )
    else:
        head = f"trained {r.steps} steps on {r.n_pairs} pairs in {r.seconds:.0f}s"
    lines = [head + (f" ({r.n_excluded} marked pairs left out)" if r.n_excluded else "")]
    if r.loss is not None:
        lines.append(
            f"loss {r.first_loss:.4f} -> {r.loss:.4f}, reward accuracy {r.reward_accuracy:.2f}, "
            f"margin {r.reward_margin:+.3f} (last step)"
        )
    lines.append(f"output: {r.model_dir or r.out_dir}")
    emit(asdict(r), as_json, "\n".join(lines))
    if r.cancelled:
        raise typer.Exit(130)


@app.command()
def validate(
    workspace: Path = typer.Option(..., "--workspace", "-w", help="Workspace of the training data"),
    trained: Path = typer.Option(..., "--trained", help="A train-dpo output folder"),
    prompts: Path | None = typer.Option(
        None, help="Prompts: a preference file, JSONL of prompts, or text (one per line). "
        "Default: held-out prompts of the workspace's dataset"
    ),
    n_prompts: int = typer.Option(32, help="Prompts to generate from"),
    max_new_tokens: int = typer.Option(64, help="Tokens generated per reply"),
    temperature: float = typer.Option(0.0, help="0: greedy; else seeded sampling at this temperature"),
    samples: int = typer.Option(1, help="Replies per prompt when sampling"),
    seed: int = typer.Option(0, help="Seeds the choice of held-out prompts and the sampling"),
    batch_size: int = typer.Option(16, help="Prompts per generation batch"),
    top_k: int = typer.Option(50, help="Also compare the K features with the largest |predicted shift|"),
    plot: Path | None = typer.Option(None, help="Scatter plot PNG (default: TRAINED/validation.png)"),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda when available)"),
    threads: int | None = THREADS,
    as_json: bool = JSON,
):
    """Predicted vs actual feature shifts of a DPO-trained model: R², Spearman, plot, behaviours."""
    from core.validate import Decoding, format_report
    from core.validate import validate as run_validation

    set_threads(threads)
    def progress(p) -> None:
        if p.stage == "generate" and sys.stderr.isatty():
            print(f"\rgenerating {p.done}/{p.total} replies".ljust(60), end="", file=sys.stderr, flush=True)
        elif p.message and p.stage != "generate":
            print(("\n" if sys.stderr.isatty() else "") + visible(p.message), file=sys.stderr, flush=True)

    decoding = Decoding(
        max_new_tokens=max_new_tokens, temperature=temperature, samples=samples, seed=seed,
        batch_size=batch_size,
    )
    with ctrl_c_cancels("validation") as cancel:
        report = run_validation(
            workspace, trained, prompts=prompts, n_prompts=n_prompts, decoding=decoding,
            top_k=top_k, plot=plot, device=device, progress=progress, cancel=cancel,
        )
    emit(report.to_json(), as_json, format_report(report))
