"""Locate the shared test corpus (never copied into the repo)."""

import os
from pathlib import Path


def shared_dir() -> Path:
    """Return $THREADLINE_SHARED, or the `shared` folder next to the repository root."""
    if os.environ.get("THREADLINE_SHARED"):
        return Path(os.environ["THREADLINE_SHARED"])
    return Path(__file__).resolve().parent.parent.parent / "shared"
