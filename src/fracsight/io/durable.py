"""Durable renames: the one place that makes a new name in a folder survive a power cut."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_folder(folder: Path) -> None:
    """Make a file's new name in ``folder`` durable (a rename is on disk only once its folder is)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
