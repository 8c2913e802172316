"""Reward shaping inside TRL's `DPOTrainer`, for people who train with TRL rather than `train-dpo`.

Shaping adds a per-pair offset c = lambda * (s(chosen) - s(rejected)) to the DPO logit (see
`core.train.interventions`). For the sigmoid loss that is the same as moving the reference log-prob of
the chosen reply by -c / beta:

    beta * ((pc - (rc - c / beta)) - (pr - rr)) = beta * ((pc - rc) - (pr - rr)) + c

so `ShapedDPOTrainer` computes exactly the shaped loss by shifting the precomputed reference
log-probs once, before training, and TRL's loss code runs unchanged. (TRL's logged implicit
rewards for chosen replies then include the offset.)

Usage (needs `pip install datadebug[trl]`):

    from datasets import Dataset
    from trl import DPOConfig
    from core.train.interventions import load_plan, intervention_for, pair_offsets
    from core.train.trl_adapter import OFFSET_COLUMN, ShapedDPOTrainer

    plan = load_plan("my-workspace")                      # a "shape" plan (datadebug plan ...)
    shaping = intervention_for(plan, tokenizer=tokenizer)
    offsets = pair_offsets(shaping, model, tokenizer, pairs)          # (pairs,) from the frozen model
    dataset = Dataset.from_list([{"prompt": ..., "chosen": ..., "rejected": ...} for ...])
    dataset = dataset.add_column(OFFSET_COLUMN, offsets.tolist())
    trainer = ShapedDPOTrainer(model=model, args=DPOConfig(..., precompute_ref_log_probs=True),
                               train_dataset=dataset, processing_class=tokenizer)
    trainer.train()

Only the plain sigmoid DPO loss is supported (`loss_type=["sigmoid"]`, no `ld_alpha`, reverse
KL), with `precompute_ref_log_probs=True`; anything else raises ValueError.
"""

from __future__ import annotations

from trl import DPOTrainer

OFFSET_COLUMN = "shaping_offset"


class ShapedDPOTrainer(DPOTrainer):
    """`trl.DPOTrainer` whose loss is -log sigmoid(beta * delta + c) with c = the dataset's
    OFFSET_COLUMN (0 where the column is absent)."""

    def __init__(self, *args, **kwargs):
        cfg = kwargs.get("args")
        if cfg is None or not cfg.precompute_ref_log_probs:
            raise ValueError("ShapedDPOTrainer needs DPOConfig(precompute_ref_log_probs=True)")
        if (list(cfg.loss_type) != ["sigmoid"] or cfg.ld_alpha is not None or cfg.use_weighting
                or cfg.f_divergence_type != "reverse_kl"):
            raise ValueError("ShapedDPOTrainer supports the plain sigmoid DPO loss only")
        super().__init__(*args, **kwargs)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        dataset = super()._precompute_ref_logps(dataset, name, batch_size)
        if OFFSET_COLUMN not in dataset.column_names:
            return dataset
        beta = self.beta

        def shift(batch):
            return {"ref_chosen_logps": [r - c / beta for r, c in zip(batch["ref_chosen_logps"], batch[OFFSET_COLUMN])]}

        return dataset.map(shift, batched=True, desc=f"Shaping the {name} dataset's DPO logits")
