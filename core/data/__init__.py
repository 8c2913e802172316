"""Data in and out: reading preference pairs (formats, Hugging Face datasets), the workspace on disk, marks, export, planted behaviours, and text made safe to show. Imports nothing above it."""
