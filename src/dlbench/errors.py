"""The errors a job reports as one line (``dlbench: error: ...``, exit 2) instead of a traceback."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A weights file, model card or resumable checkpoint is missing, truncated or does not fit its model."""
