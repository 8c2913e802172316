"""Training: DPO and SFT, interventions (reward shaping, steering, token masks, inoculation), the TRL adapter, rollouts."""
