"""Checks that keep the predictions honest: the goblin test (planted behaviours), the goblin loop, validation against real DPO."""
