"""`datadebug train-dpo`, `validate`, `plan` and `goblin-loop`: real training, predicted vs actual."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import typer

from core.cli.app import JSON, THREADS, ProgressPrinter, app, ctrl_c_cancels, emit, set_threads
from core.views import data_files, record_formats


@app.command("train-dpo")
def train_dpo_cmd(
    data: Path = typer.Argument(..., help=f"Preference data: {data_files()}"),
    out: Path = typer.Option(..., "--out", help="Output folder (rerun with the same one to resume)"),
    model: str | None = typer.Option(None, help="Model from the catalogue (default: the embedded one)"),
    init_model: Path | None = typer.Option(
        None, "--init-model", help="Start from the weights in this folder (e.g. an SFT run's model/)"
    ),
    exclude_marked: Path | None = typer.Option(
        None, "--exclude-marked", help="Workspace of DATA whose marked pairs are left out"
    ),
    plan: Path | None = typer.Option(
        None, "--plan", help="Workspace whose saved intervention plan is applied (datadebug plan)"
    ),
    holdout: float = typer.Option(
        0.0, help="Share of the pairs held out of training (validate draws its prompts from them)"
    ),
    split_seed: int = typer.Option(0, help="Seeds which pairs are held out"),
    beta: float = typer.Option(0.1, help="DPO's beta: the strength of the tie to the reference"),
    epochs: int = typer.Option(1),
    lr: float | None = typer.Option(None, help="Learning rate (default 5e-6; 5e-4 with --lora)"),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA on q/v projections (merged when saved)"),
    limit: int | None = typer.Option(None, help="Train on the first N valid pairs (before marked ones are dropped)"),
    max_length: int = typer.Option(512, help="Prompt + reply tokens per sequence"),
    batch_size: int = typer.Option(4, help="Pairs per forward pass"),
    grad_accum: int = typer.Option(1, help="Forward passes per optimizer step"),
    save_every: int = typer.Option(50, help="Optimizer steps between checkpoints"),
    seed: int = typer.Option(0, help="Seeds the data order (and LoRA's init)"),
    format: str | None = typer.Option(None, help=f"{' | '.join(record_formats())} (default: detect)"),
    skip_invalid: bool = typer.Option(False, help="Skip invalid records instead of stopping"),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda when available)"),
    threads: int | None = THREADS,
    as_json: bool = JSON,
):
    """Fine-tune the model with DPO on DATA (Ctrl-C saves a checkpoint; rerun to resume)."""
    from core import jobs

    set_threads(threads)
    with ctrl_c_cancels("saving a checkpoint after this step") as cancel, ProgressPrinter() as progress:
        r = jobs.train_dpo(
            data, out, lr=lr, lora=lora, max_length=max_length, beta=beta, epochs=epochs,
            batch_size=batch_size, grad_accum=grad_accum, seed=seed, save_every=save_every,
            model=model, init_model=init_model, limit=limit,
            exclude_marked=exclude_marked, holdout=holdout, split_seed=split_seed, plan=plan,
            format=format, skip_invalid=skip_invalid, device=device, progress=progress, cancel=cancel,
        )
    if r.already_done:
        head = f"already trained: {r.steps} steps on {r.n_pairs} pairs"
    else:
        head = f"trained {r.steps} steps on {r.n_pairs} pairs in {r.seconds:.0f}s"
    extra = [f"{r.n_excluded} marked pairs left out"] if r.n_excluded else []
    extra += [f"{r.n_heldout} held out"] if r.n_heldout else []
    lines = [head + (f" ({', '.join(extra)})" if extra else "")]
    if r.loss is not None:
        lines.append(
            f"loss {r.first_loss:.4f} -> {r.loss:.4f}, reward accuracy {r.reward_accuracy:.2f}, "
            f"margin {r.reward_margin:+.3f} (last step)"
        )
    lines.append(f"output: {r.model_dir or r.out_dir}")
    emit(asdict(r), as_json, "\n".join(lines))


def _num(v, fmt="{:.3f}") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def _ci(ci) -> str:
    return f"[{_num(ci[0], '{:.2f}')}, {_num(ci[1], '{:.2f}')}]"


def format_report(r) -> str:
    """A plain-text summary of a `core.checks.validate.ValidationReport`."""
    lines = [
        f"{r.model} / SAE {r.sae} (layer {r.layer}): {r.n_pairs_predicted} trained pairs predicted "
        f"({r.n_pairs_trained} trained), {r.n_prompts} prompts x {r.n_replies // max(r.n_prompts, 1)}"
        f" replies ({r.prompts_source})",
        f"reply length, mean tokens: {_num(r.reply_tokens['before'], '{:.1f}')} before, "
        f"{_num(r.reply_tokens['after'], '{:.1f}')} after training"
        + ("; each pair read to the shorter one's length (--match-length)" if r.match_length else ""),
        "",
        f"the paper's statistic (fires on > {r.tau:g} of a reply's tokens):",
        f"{'':<22} {'n':>5} {'R² fit':>7} {'R² y=sx':>8} {'Spearman':>9} {'95% CI':>14} {'slope':>8}"
        f" {'reliability pred/act':>20} {'ceiling':>7}",
    ]
    for name, a in (("concepts", r.concepts), ("features (CI clear)", r.thresholded_features)):
        if a is None:
            lines.append(f"{name:<22} (no concepts: pass --concepts FILE or build the workspace's concepts)")
            continue
        f = a.fit
        lines.append(
            f"{name:<22} {f.n_features:>5} {_num(f.r2):>7} {_num(f.r2_scaled):>8} {_num(f.spearman):>9}"
            f" {_ci(a.spearman_ci):>14} {_num(f.slope, '{:.3g}'):>8}"
            f" {_num(a.predicted_reliability, '{:.2f}') + ' / ' + _num(a.reliability, '{:.2f}'):>20}"
            f" {_num(a.ceiling, '{:.2f}'):>7}"
        )
    if r.concepts is not None and r.concepts.null:
        n = r.concepts.null
        lines.append(
            f"  R² CI {_ci(r.concepts.r2_ci)}; null (features dealt to concepts at random, {n['n']}x): "
            f"R² {_num(n['r2_mean'])} (95th pct {_num(n['r2_p95'])}), p {_num(n['p_value'], '{:.3g}')}"
        )
    for name, c in (("concepts by mean activation", r.concepts_mean_activation),
                    ("concepts of CI-clear members", r.concepts_clear),
                    ("  the same by mean activation", r.concepts_clear_mean_activation)):
        if c is not None:
            lines.append(
                f"{name}: {c.fit.n_features} concepts, R² {_num(c.fit.r2)} (CI {_ci(c.r2_ci)}), "
                f"Spearman {_num(c.fit.spearman)}"
                + (f"; null R² {_num(c.null['r2_mean'])}, p {_num(c.null['p_value'], '{:.3g}')}" if c.null else "")
            )
    lines += [
        "",
        "mean activation per feature:",
        f"{'':<34} {'n':>6} {'R²':>7} {'Spearman':>9} {'slope':>9}",
    ]
    for name, f in (
        ("predicted CI clear of zero", r.significant),
        (f"top {r.k} by |predicted|", r.top_k),
        ("all with predicted != 0", r.nonzero),
    ):
        lines.append(
            f"{name:<34} {f.n_features:>6} {_num(f.r2):>7} {_num(f.spearman):>9} {_num(f.slope, '{:.3g}'):>9}"
        )
    lines += [
        f"split-half reliability of the actual shifts (CI-clear features): {_num(r.actual_reliability)}",
        f"all with predicted != 0: reliability predicted {_num(r.predicted_reliability)} (over training "
        f"pairs) / actual {_num(r.nonzero_reliability)} (over prompts), noise ceiling on R² {_num(r.ceiling)}",
        "ceiling: about the best R² a perfect prediction could show through this much noise (n/a for sets the",
        "prediction picked); R² far below it is a systematic miss, near a low one a call for more pairs or prompts",
        "",
        f"{'behaviour':<10} {'before':>8} {'after':>8}",
    ]
    for k, v in r.behaviour.items():
        lines.append(f"{k:<10} {_num(v['before'], '{:.1%}'):>8} {_num(v['after'], '{:.1%}'):>8}")
    lines += ["", "probe sentences at the reply's start, log p after - before (nats per sentence, ± se):"]
    for k, v in r.probes.items():
        lines.append(f"{k:<10} {_num(v['lift'], '{:+.3f}'):>8} ± {_num(v['se'])}  ({v['n_sentences']} sentences)")
    lines += ["", f"{'feature':>8} {'predicted':>10} {'actual':>10} {'± se':>8}  promotes"]
    for c in r.features[:10]:
        lines.append(
            f"{c.feature:>8} {c.predicted:>+10.4f} {c.actual:>+10.4f} {c.actual_se:>8.4f}  "
            + ", ".join(t.strip() for t in c.promoted)
        )
    lines += ["", f"plot: {r.plot}"]
    if r.concepts_plot:
        lines.append(f"concepts plot: {r.concepts_plot}")
    lines.append(f"replies: {r.generations}")
    return "\n".join(lines)


@app.command()
def validate(
    workspace: Path = typer.Option(..., "--workspace", "-w", help="Workspace of the training data"),
    trained: Path = typer.Option(..., "--trained", help="A train-dpo output folder"),
    prompts: Path | None = typer.Option(
        None, help="Prompts: a preference file, JSONL of prompts, or text (one per line). "
        "Default: the run's held-out prompts of the workspace's dataset"
    ),
    n_prompts: int = typer.Option(32, help="Prompts to generate from"),
    paper: bool = typer.Option(
        False, "--paper", help="The paper's protocol: sampled replies (T=1), --samples 4 unless given"
    ),
    concepts: Path | None = typer.Option(
        None, help="Concepts as JSON (a list of feature lists); default: the workspace's concepts"
    ),
    tau: float = typer.Option(0.01, help="A feature fires in a reply above this share of its tokens"),
    max_new_tokens: int = typer.Option(64, help="Tokens generated per reply"),
    temperature: float | None = typer.Option(None, help="0: greedy (default); else sampling at this temperature"),
    samples: int | None = typer.Option(None, help="Replies per prompt when sampling"),
    seed: int = typer.Option(0, help="Seeds the choice of held-out prompts and the sampling noise"),
    batch_size: int = typer.Option(16, help="Replies per generation batch"),
    top_k: int = typer.Option(50, help="Also compare the K features with the largest |predicted shift|"),
    plot: Path | None = typer.Option(None, help="Scatter plot PNG (default: TRAINED/validation.png)"),
    match_length: bool = typer.Option(
        False, "--match-length", help="Read each before/after reply pair to the shorter one's length, so that "
        "longer replies alone do not count as every feature firing more"
    ),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda when available)"),
    threads: int | None = THREADS,
    as_json: bool = JSON,
):
    """Predicted vs actual shifts of a DPO-trained model: concepts and features, R², plots, behaviours."""
    from core import jobs

    set_threads(threads)
    with ctrl_c_cancels("validation") as cancel, ProgressPrinter() as progress:
        report = jobs.validate(
            workspace, trained, paper=paper, temperature=temperature, samples=samples,
            max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size, prompts=prompts, n_prompts=n_prompts,
            concepts=concepts, tau=tau, top_k=top_k, plot=plot, match_length=match_length, device=device,
            progress=progress, cancel=cancel,
        )
    emit(report.to_json(), as_json, format_report(report))


@app.command("validate-seeds")
def validate_seeds(
    reports: list[Path] = typer.Argument(..., help="Validation reports (JSON) or train-dpo folders, one per seed"),
    as_json: bool = JSON,
):
    """Mean ± SD and range over data-order seeds of each agreement number of their validation reports."""
    from core import jobs

    summary = jobs.seed_summary(reports)
    emit(summary, as_json, format_seed_summary(summary))


def format_seed_summary(s: dict) -> str:
    d = s["decoding"] or {}
    how = "greedy" if not d.get("temperature") else f"T = {d['temperature']:g}, {d.get('samples')} per prompt"
    lines = [f"{s['n_runs']} runs validated on {s['prompts_source']} ({how})", "",
             f"{'':<26} {'mean':>8} {'± SD':>7} {'min':>8} {'max':>8}"]
    for name, m in s["metrics"].items():
        if not m["n"]:
            continue
        lines.append(f"{name:<26} {_num(m['mean']):>8} {_num(m['sd']):>7} {_num(m['min']):>8} {_num(m['max']):>8}"
                     + (f"  ({m['n']} of {s['n_runs']} defined)" if m["n"] < s["n_runs"] else ""))
    return "\n".join(lines)


@app.command("plan")
def plan_cmd(
    workspace: Path = typer.Option(..., "--workspace", "-w", help="The workspace the concept comes from"),
    kind: str | None = typer.Option(
        None, help="shape | steer | mask | inoculate (see `train-dpo --plan`); omit to show the plan"
    ),
    features: str | None = typer.Option(None, help="The concept's features, comma-separated"),
    strength: float | None = typer.Option(
        None, help="shape/inoculate: lambda (4 / 1); steer: alpha (3); mask: activation threshold (0)"
    ),
    label: str = typer.Option("", help="What to call the concept"),
    text: str = typer.Option("", help="inoculate: the system prompt naming the behaviour"),
    clear: bool = typer.Option(False, "--clear", help="Remove the workspace's plan"),
    as_json: bool = JSON,
):
    """Save (or show, or clear) the intervention plan that `train-dpo --plan WS` applies."""
    from core import jobs
    from core.arguments import feature_list

    if clear:
        gone = jobs.clear_plan(workspace)
        emit({"cleared": gone}, as_json, "plan removed" if gone else "no plan to remove")
        return
    if kind is None:
        plan = jobs.plan(workspace)
        if plan is None:
            emit(None, as_json, f"no plan in {workspace}")
            return
    else:
        plan = jobs.save_plan(workspace, kind, feature_list("--features", features), strength, label=label,
                              text=text)
    d = asdict(plan)
    text_out = (
        f"{plan.kind} on {plan.label or 'features'} {list(plan.features)} (strength {plan.strength:g}; "
        f"{plan.sae} layer {plan.layer})" + (f", system prompt {plan.text!r}" if plan.text else "")
        + f"\napply with: datadebug train-dpo DATA --out DIR --plan {workspace}"
    )
    emit(d, as_json, text_out)


def format_goblin_loop(r: dict) -> str:
    """A plain-text summary of `core.checks.goblin_loop.run_goblin_loop`'s result."""
    d = r["detection"]
    lines = [
        f"goblin feature {d['feature']} (AP {_num(d['ap'], '{:.2f}')}): flagged {len(d['flagged'])} pairs, "
        f"precision {_num(d['precision'], '{:.2f}')} recall {_num(d['recall'], '{:.2f}')} "
        f"against the {d['n_planted']} planted",
        f"SFT on {r['n_sft']} replies ({r['sft_poisoned']} with goblins); goblin rate over "
        f"{r['n_unrelated']} unrelated prompts, sampled; preference accuracy on {r['n_scored']} untrained pairs "
        f"as DATA has them ({r['n_heldout']} of the held-out split), against the SFT model",
        "",
        f"{'model':<10} {'goblin rate':>14} {'goblin probe':>13} {'control':>8} {'pref. acc.':>15} "
        f"{'vs poisoned (95% CI)':>27}",
    ]
    for name, m in r["models"].items():
        g, p, pref = m["goblin"], m["probes"], m["preference"]
        accuracy, versus = f"{'reference':>15}", ""  # the SFT model is what the others are measured against
        if pref:
            accuracy = f"{pref['accuracy']:>8.1%} ± {pref['se']:.1%}"
            if "vs_poisoned" in pref:
                v = pref["vs_poisoned"]
                versus = f"{100 * v['difference']:+.1f} pts [{100 * v['ci'][0]:+.1f}, {100 * v['ci'][1]:+.1f}]"
        lines.append(
            f"{name:<10} {g['rate']:>7.1%} ± {g['se']:.1%} {p['goblin']['lift']:>+13.3f} "
            f"{p['control']['lift']:>+8.3f} {accuracy} {versus:>27}".rstrip()
        )
    lines += [f"{arm} is the {twin} run: the flagged pairs are exactly the planted ones"
              for arm, twin in r.get("same_run", {}).items()]
    return "\n".join(lines)


@app.command("goblin-loop")
def goblin_loop_cmd(
    data: Path = typer.Argument(..., help="Preference data to plant goblins in"),
    work: Path = typer.Option(..., "--work", help="Folder for every stage (rerun to resume)"),
    rate: float = typer.Option(0.05, help="Share of DPO pairs (and SFT replies) that carry the trait"),
    sft_rate: float | None = typer.Option(None, help="Share of SFT replies that carry the trait (default: --rate)"),
    limit: int | None = typer.Option(256, help="DPO on the first N valid pairs"),
    sft_data: Path | None = typer.Option(None, help="SFT prompts + replies (default: the bundled sample)"),
    sft_examples: int = typer.Option(256, help="SFT examples"),
    unrelated: int = typer.Option(48, help="Unrelated prompts for the goblin rate"),
    samples: int = typer.Option(4, help="Sampled replies per unrelated prompt"),
    arms: str = typer.Option(",".join(("poisoned", "cleaned", "clean", "shape", "steer", "mask")),
                             help="DPO runs: poisoned, cleaned, clean (planted pairs removed), shape, steer, mask"),
    epochs: int | None = typer.Option(None, help="DPO epochs (default: the loop's, 3)"),
    lr: float | None = typer.Option(None, help="DPO learning rate (default: the loop's, 1e-4)"),
    sft_epochs: int | None = typer.Option(None, help="SFT epochs (default: the loop's, 6)"),
    sft_lr: float | None = typer.Option(None, help="SFT learning rate (default: the loop's, 3e-4)"),
    max_length: int | None = typer.Option(None, help="Tokens per SFT and DPO example (default: the loop's, 256)"),
    max_new_tokens: int = typer.Option(48, help="Tokens per sampled reply for the goblin rate"),
    accuracy_pairs: int = typer.Option(200, help="Untrained pairs of DATA (the held-out split first) that "
                                       "preference accuracy is measured on, as DATA has them"),
    seed: int = typer.Option(0),
    device: str | None = typer.Option(None, help="cpu | cuda (default: cuda when available)"),
    threads: int | None = THREADS,
    as_json: bool = JSON,
):
    """The goblin loop, whole: SFT and DPO on planted goblins, found from the data, then removed by
    cleaning and by each intervention; goblin rate, probe lifts and held-out preference accuracy.
    WORK keeps every stage: rerun with the same settings to resume (or with more --arms)."""
    from core import jobs

    set_threads(threads)
    with ctrl_c_cancels("goblin loop (rerun to resume)") as cancel, ProgressPrinter() as progress:
        result = jobs.goblin_loop(
            data, work, device=device, progress=progress, cancel=cancel,
            rate=rate, sft_rate=sft_rate, limit=limit, sft_data=str(sft_data) if sft_data else None,
            sft_examples=sft_examples, unrelated=unrelated, samples=samples, seed=seed,
            max_new_tokens=max_new_tokens, arms=arms, accuracy_pairs=accuracy_pairs,
            epochs=epochs, lr=lr, sft_epochs=sft_epochs, sft_lr=sft_lr, max_length=max_length,
        )
    emit(result, as_json, format_goblin_loop(result))
