"""core.train.trl_adapter: TRL's DPOTrainer with our reward shaping trains like `core.train.dpo.train_dpo`.

The real embedded SmolLM2, two real HH pairs, a reference that differs from the policy (so the
first step's loss depends on the policy's forward pass, not only on the offsets), the same shaping
offsets in both trainers: the losses of two AdamW steps agree."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

trl = pytest.importorskip("trl")


@pytest.mark.slow(25)  # 25 s, call + the fixtures it sets up first (2026-12-05, 2-core machine idle)
def test_shaped_trl_dpo_matches_ours_step_for_step(tmp_path, hh_small):
    from datasets import Dataset
    from trl import DPOConfig as TRLConfig

    from core.model.catalog import load_catalog
    from core.train.dpo import DPOConfig, build_examples, train_dpo
    from core.data.ingest import read_pairs
    from core.train.interventions import BaseIntervention
    from core.model.lm import load_full_model
    from core.train.trl_adapter import OFFSET_COLUMN, ShapedDPOTrainer

    pairs = read_pairs(hh_small).pairs[:2]
    cfg = DPOConfig(beta=0.5, lr=1e-4, epochs=2, batch_size=2, max_length=48, max_prompt_length=24)
    model, tok = load_full_model(load_catalog().model(None))
    reference = copy.deepcopy(model)
    with torch.no_grad():  # a reference that is not the policy: delta != 0 at the first step
        reference.lm_head.weight.mul_(0.9)
    offsets = torch.tensor([1.5, -0.7])  # what core.train.interventions.pair_offsets would give

    class Shaped(BaseIntervention):  # only the offsets
        def config(self):
            return {"offsets": offsets.tolist()}

        def logit_offsets(self, cache):
            return offsets

    ours = copy.deepcopy(model)
    train_dpo(ours, tok, pairs, tmp_path / "ours", cfg, ref_model=copy.deepcopy(reference),
              intervention=Shaped())
    our_losses = [json.loads(line)["loss"] for line in (tmp_path / "ours" / "train_log.jsonl").read_text().splitlines()]

    # TRL on the very same token ids: the chat-templated prompt as text, the replies + eos
    examples = build_examples(tok, pairs, cfg)
    rows = [{"prompt": tok.decode(e["chosen_input_ids"][: e["prompt_length"]]),
             "chosen": tok.decode(e["chosen_input_ids"][e["prompt_length"]:]),
             "rejected": tok.decode(e["rejected_input_ids"][e["prompt_length"]:]),
             OFFSET_COLUMN: float(o)} for e, o in zip(examples, offsets)]
    args = TRLConfig(
        output_dir=str(tmp_path / "trl"), beta=cfg.beta, learning_rate=cfg.lr, max_steps=2,
        per_device_train_batch_size=2, precompute_ref_log_probs=True, logging_steps=1,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        optim="adamw_torch", report_to=[], save_strategy="no", use_cpu=True, seed=0,
        max_length=cfg.max_length, dataloader_num_workers=0, disable_dropout=True, bf16=False,
    )
    trainer = ShapedDPOTrainer(model=copy.deepcopy(model), ref_model=reference, args=args,
                               train_dataset=Dataset.from_list(rows), processing_class=tok)
    for got, e in zip(trainer.train_dataset, examples):  # after TRL's keep-start truncation
        for side in ("chosen", "rejected"):
            assert (got["prompt_ids"] + got[f"{side}_ids"])[: cfg.max_length] == e[f"{side}_input_ids"]
    trainer.train()
    trl_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    assert len(trl_losses) == len(our_losses) == 2
    assert trl_losses[0] == pytest.approx(our_losses[0], abs=2e-4)
    assert trl_losses[1] == pytest.approx(our_losses[1], abs=2e-3)
    # the first step's loss is the shaped one, and the offsets change it
    from safetensors.torch import load_file

    from core.train.dpo import collate, dpo_loss, sequence_logps

    ref = load_file(tmp_path / "ours" / "reference_logps.safetensors")
    with torch.inference_mode():
        logps = sequence_logps(model, *collate(examples, tok.pad_token_id, "cpu"))
    shaped = dpo_loss(logps[:2], logps[2:], ref["chosen"], ref["rejected"], cfg.beta, offsets)[0]
    plain = dpo_loss(logps[:2], logps[2:], ref["chosen"], ref["rejected"], cfg.beta)[0]
    assert our_losses[0] == pytest.approx(shaped.item(), abs=1e-4)
    assert abs(shaped.item() - plain.item()) > 0.05
    with pytest.raises(ValueError, match="precompute"):
        ShapedDPOTrainer(model=model, args=TRLConfig(output_dir=str(tmp_path / "x"), report_to=[],
                                                     use_cpu=True, bf16=False),
                         train_dataset=Dataset.from_list(rows), processing_class=tok)
