"""The one family of errors a user can cause or fix. Imports nothing heavy (no torch, no lancedb).

Front ends catch `DatadebugError` alone and print `str(exc)` as one line (the CLI exits 2, the TUI
opens a dialog). Anything else that escapes is a bug and keeps its traceback.

Each subclass also derives from the built-in exception it used to be, so `except ValueError` in
older callers still works.
"""

from __future__ import annotations


class DatadebugError(Exception):
    """Base of every user-facing error: its message is one line that names the cause."""


class UsageError(DatadebugError, ValueError):
    """An argument out of range or of the wrong kind (a feature id, a cluster id, a k, a rate)."""


class CatalogError(DatadebugError, ValueError):
    """The catalogue (models.toml) is malformed, or names no such model or SAE."""


class StoreError(DatadebugError, RuntimeError):
    """A model or SAE cannot be made ready (no network, missing package, broken files)."""


class WorkspaceError(DatadebugError, RuntimeError):
    """A workspace is missing, from other settings, from an older schema, or has no pairs."""


class IngestError(DatadebugError, ValueError):
    """A dataset file or record cannot be read; `issue` (core.data.ingest.Issue) says where and why."""

    def __init__(self, issue):
        super().__init__(str(issue))
        self.issue = issue


class ExportError(DatadebugError, RuntimeError):
    """A cleaned dataset cannot be written where asked."""


class ValidationError(DatadebugError, ValueError):
    """Training or validation inputs that do not fit together (prompts, checkpoints, settings)."""


class Cancelled(DatadebugError):
    """A long job stopped because its cancel event was set (or Ctrl-C); what it had saved is kept."""
