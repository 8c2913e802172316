"""Training runs on a preference file: which pairs, which model, which intervention, and the record.

`train_on_dataset` fine-tunes a model with `core.train.dpo.train_dpo` on the pairs of a preference file
and writes `TRAIN_RECORD` into the output folder: the dataset's path and sha256, the model, the
source indices of the pairs trained on, and those held out. The held-out pairs are a seeded random
share of the file (`holdout`, chosen before marked pairs are dropped, so a cleaned run and the run
it is compared with hold out the same pairs); `train-dpo` never sees them and `validate` draws its
prompts from them: prompts from the training distribution that the model was not trained on.

An intervention plan (`core.train.interventions.Plan`, saved in a workspace by `save_plan`) turns into
a `core.train.dpo.Intervention` through the workspace's SAE; the record keeps the plan.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.train.dpo import DPOConfig
from core.errors import Cancelled, ValidationError
from core.data.ingest import Pair, read_pairs
from core.progress import ProgressFn

TRAIN_RECORD = "datadebug_train.json"


@dataclass
class TrainRecord:
    """What a training run was: written to `out_dir/TRAIN_RECORD` before training, updated after."""

    dataset: str  # absolute path of the preference file
    dataset_sha256: str
    format: str
    model: str  # catalogue name of the base model
    source_indices: list[int]  # the pairs trained on, ascending
    excluded_marked: list[int] = field(default_factory=list)  # pairs dropped (marked or excluded)
    exclude_marked_workspace: str | None = None
    limit: int | None = None
    holdout: float = 0.0  # share of the pairs held out of training
    split_seed: int = 0
    heldout_indices: list[int] = field(default_factory=list)  # the held-out pairs, ascending
    init_model: str | None = None  # a model folder the run started from instead of the catalogue's
    plan: dict | None = None  # the intervention plan applied (core.train.interventions.Plan), if any
    config: dict = field(default_factory=dict)  # asdict(DPOConfig)
    finished: bool = False
    steps: int = 0
    total_steps: int = 0
    history: list[dict] = field(default_factory=list)  # the DPOStep of every optimizer step

    def write(self, out_dir: Path) -> None:
        path = Path(out_dir) / TRAIN_RECORD
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        tmp.replace(path)


def read_train_record(out_dir: Path | str) -> TrainRecord:
    """The record of a `train_on_dataset` run. Raises ValidationError when `out_dir` has none."""
    path = Path(out_dir) / TRAIN_RECORD
    if not path.is_file():
        raise ValidationError(
            f"{out_dir} has no {TRAIN_RECORD}: train it with `datadebug train-dpo ... --out {out_dir}`"
        )
    raw = json.loads(path.read_text())
    known = set(TrainRecord.__dataclass_fields__)
    return TrainRecord(**{k: v for k, v in raw.items() if k in known})


@dataclass
class TrainResult:
    out_dir: str
    model_dir: str | None  # the trained model, None until training finished
    n_pairs: int  # pairs trained on
    n_excluded: int  # marked pairs left out
    n_heldout: int  # pairs held out for validation
    steps: int  # optimizer steps done so far
    total_steps: int
    first_loss: float | None
    loss: float | None  # of the last step
    reward_accuracy: float | None  # of the last step
    reward_margin: float | None
    already_done: bool  # nothing to do: the run had finished before
    seconds: float


def _same_plan(a: dict | None, b: dict | None) -> bool:
    """Whether two recorded plans make the same run: the same kind, concept, strength, text and SAE
    weights, whenever, from wherever and under whichever label they were made (a plan made again for
    a resumed run differs in its time stamp)."""
    if a is None or b is None:
        return a is b
    a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))  # as recorded: tuples become lists
    ignore = {"created", "label", "source", "sae_path"}
    if not (a.get("sae_sha256") and b.get("sae_sha256")):  # a record from before plans carried it
        ignore.add("sae_sha256")
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


def split_holdout(source_indices: Sequence[int], holdout: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(kept, held out) source indices, each ascending: a seeded random `holdout` share held out
    (round(holdout * n), at least 1 when holdout > 0 and n > 1). The draw depends only on the
    indices, the share and the seed. Raises ValidationError for a share outside [0, 1)."""
    if not 0 <= holdout < 1:
        raise ValidationError(f"holdout {holdout} must be a share in [0, 1)")
    indices = sorted(int(s) for s in source_indices)
    n_out = min(len(indices) - 1, max(1, round(holdout * len(indices)))) if holdout > 0 else 0
    chosen = np.random.default_rng(seed).permutation(len(indices))[: max(n_out, 0)]
    out = {indices[i] for i in chosen.tolist()}
    return [s for s in indices if s not in out], sorted(out)


def select_training_pairs(
    data: Path | str,
    *,
    limit: int | None = None,
    exclude_marked: Path | str | None = None,
    exclude: Sequence[int] = (),
    holdout: float = 0.0,
    split_seed: int = 0,
    format: str | None = None,
    skip_invalid: bool = False,
) -> tuple[list[Pair], list[int], list[int], str]:
    """The pairs to train on: the first `limit` valid pairs of `data`, minus a held-out share
    (`split_holdout`), minus those marked in the workspace `exclude_marked` and those whose source
    index is in `exclude`. The limit applies first and the split second, so a cleaned run trains on
    a subset of the uncleaned one and holds out the same pairs. Returns (pairs, excluded source
    indices, held-out source indices, format).

    Raises IngestError for bad input, WorkspaceError when `exclude_marked` is no workspace, and
    ValidationError when that workspace indexed another file (its marks name other pairs).
    """
    from core.data.workspace import file_sha256

    ingest = read_pairs(data, format=format, skip_invalid=skip_invalid, limit=limit)
    kept, heldout = split_holdout([p.source_index for p in ingest.pairs], holdout, split_seed)
    keep = set(kept)
    pairs, excluded = [p for p in ingest.pairs if p.source_index in keep], []
    if exclude_marked is not None:
        from core.data.marks import Marks
        from core.data.workspace import Workspace

        ws = Workspace(exclude_marked)
        indexed = ws.meta().get("dataset_sha256")
        if indexed != file_sha256(Path(data)):
            raise ValidationError(
                f"workspace {exclude_marked} indexed {ws.meta().get('dataset')}, not {data}: "
                "its marks name pairs of another file"
            )
        marked = Marks(ws).marked_set()
    else:
        marked = set()
    drop = marked | {int(s) for s in exclude}
    excluded = sorted(p.source_index for p in pairs if p.source_index in drop)
    pairs = [p for p in pairs if p.source_index not in drop]
    return pairs, excluded, heldout, ingest.format


def _comparable(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "save_every"}


def train_on_dataset(
    data: Path | str,
    out_dir: Path | str,
    cfg: DPOConfig,
    *,
    model: str | None = None,
    init_model: Path | str | None = None,
    limit: int | None = None,
    exclude_marked: Path | str | None = None,
    exclude: Sequence[int] = (),
    holdout: float = 0.0,
    split_seed: int = 0,
    plan_workspace: Path | str | None = None,
    plan=None,
    format: str | None = None,
    skip_invalid: bool = False,
    device: str | None = None,
    catalog=None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """DPO-train catalogue model `model` (default: the catalogue's) on the pairs of `data`.

    The pairs are `select_training_pairs(data, limit=, exclude_marked=, holdout=, split_seed=)`.
    `init_model` starts from the weights in that folder (e.g. an SFT run's `model/`) instead of the
    catalogue model's; the catalogue entry still names the model (its tokenizer, SAE layer).
    `plan_workspace` applies the intervention plan saved in that workspace (`core.train.interventions`);
    `plan` applies that `core.train.interventions.Plan` instead. `exclude` leaves pairs out by source index.
    Writes into `out_dir` what `core.train.dpo.train_dpo` writes (the final model in `out_dir/model`)
    plus `TRAIN_RECORD`. Calling it again with the same arguments resumes a cancelled or killed
    run, and returns at once (`already_done`) when the run had finished. The base model in the
    store is only read. Progress: as `core.train.dpo.train_dpo`.

    Raises IngestError / WorkspaceError / ValidationError for bad inputs (ValidationError also when
    `out_dir` holds a run on other pairs, data, model or plan, or a checkpoint made with other
    settings), StoreError when the model cannot be made ready, and Cancelled when `cancel` is set
    (after saving a checkpoint; the message says where).
    """
    from core.model.catalog import load_catalog
    from core.model.lm import load_full_model
    from core.data.workspace import file_sha256

    start = time.perf_counter()
    catalog = catalog or load_catalog()
    entry = catalog.model(model)
    out_dir = Path(out_dir)
    pairs, excluded, heldout, fmt = select_training_pairs(
        data, limit=limit, exclude_marked=exclude_marked, exclude=exclude, holdout=holdout,
        split_seed=split_seed, format=format, skip_invalid=skip_invalid,
    )
    if not pairs:
        raise ValidationError(f"no pairs left to train on in {data}")
    if plan_workspace is not None:
        from core.train.interventions import load_plan

        plan = load_plan(plan_workspace)
        if plan is None:
            raise ValidationError(f"workspace {plan_workspace} has no saved plan (datadebug plan ...)")
    record = TrainRecord(
        dataset=str(Path(data).resolve()),
        dataset_sha256=file_sha256(Path(data)),
        format=fmt,
        model=entry.name,
        source_indices=sorted(p.source_index for p in pairs),
        excluded_marked=excluded,
        exclude_marked_workspace=str(Path(exclude_marked).resolve()) if exclude_marked else None,
        limit=limit,
        holdout=holdout,
        split_seed=split_seed,
        heldout_indices=heldout,
        init_model=str(Path(init_model).resolve()) if init_model else None,
        plan=asdict(plan) if plan is not None else None,
        config=asdict(cfg),
    )
    if (out_dir / TRAIN_RECORD).is_file():
        old = read_train_record(out_dir)
        for key in ("dataset_sha256", "model", "source_indices", "heldout_indices", "init_model", "plan"):
            same = (_same_plan(old.plan, record.plan) if key == "plan"
                    else getattr(old, key) == getattr(record, key))
            if not same:
                raise ValidationError(
                    f"{out_dir} holds a run with another {key.replace('_', ' ')}; use a new --out"
                )
        if (
            old.finished
            and _comparable(old.config) == _comparable(record.config)
            and (out_dir / "model" / "config.json").is_file()
        ):
            return _result(old, out_dir, len(excluded), already=True, start=start)
    out_dir.mkdir(parents=True, exist_ok=True)
    record.write(out_dir)

    lm, tokenizer = load_full_model(entry, device=device)
    if init_model is not None:
        from core.train.dpo import load_weights

        load_weights(lm, Path(init_model))
    intervention = None
    if plan is not None:
        from core.train.interventions import intervention_for

        intervention = intervention_for(plan, tokenizer=tokenizer, catalog=catalog,
                                        device=str(next(lm.parameters()).device),
                                        max_prompt_length=cfg.max_prompt_length)
    from core.train.dpo import train_dpo

    try:
        train_dpo(lm, tokenizer, pairs, out_dir, cfg, intervention=intervention, progress=progress,
                  cancel=cancel, device=device)
        record.finished = True
    except Cancelled:
        _update_from_checkpoint(record, out_dir)
        record.write(out_dir)
        raise
    finally:
        del lm
    _update_from_checkpoint(record, out_dir)
    record.write(out_dir)
    return _result(record, out_dir, len(excluded), already=False, start=start)


def _update_from_checkpoint(record: TrainRecord, out_dir: Path) -> None:
    state_file = out_dir / "checkpoint" / "trainer_state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        record.steps, record.total_steps = state["step"], state["total_steps"]
        record.history = state["log_history"]


def _result(record: TrainRecord, out_dir: Path, n_excluded, already, start) -> TrainResult:
    last = record.history[-1] if record.history else {}
    return TrainResult(
        out_dir=str(out_dir),
        model_dir=str(out_dir / "model") if record.finished else None,
        n_pairs=len(record.source_indices),
        n_excluded=n_excluded,
        n_heldout=len(record.heldout_indices),
        steps=record.steps,
        total_steps=record.total_steps,
        first_loss=record.history[0]["loss"] if record.history else None,
        loss=last.get("loss"),
        reward_accuracy=last.get("reward_accuracy"),
        reward_margin=last.get("reward_margin"),
        already_done=already,
        seconds=time.perf_counter() - start,
    )
