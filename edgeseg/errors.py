"""The one user-facing error type: the CLI prints its message as one line and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class EdgesegError(Exception):
    """A problem the user can fix. ``str(err)`` names the file (when there is one) and the fix."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.message = message
        super().__init__(f"{path}: {message}" if path is not None else message)


class CheckpointError(EdgesegError):
    """A checkpoint that cannot be read, or does not fit SegNet / SegNet-DSC."""
