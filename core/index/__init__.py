"""Indexing: reading every pair through the model and the SAE into a workspace, on one machine or a Ray cluster."""
