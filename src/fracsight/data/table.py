"""Reading a CSV the way every fracsight file is read: header and cells stripped, a BOM ignored.

Manifests, labels, predictions and split files come from spreadsheets and scripts alike; reading
them one way means a file one command accepts, every command reads the same.
"""

from __future__ import annotations

import csv
from pathlib import Path

__all__ = ["read_table"]


def read_table(path: str | Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of the CSV file at ``path``; ``what`` names it in the refusal ("split file")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} {path} does not exist" + (" (it is a folder)" if path.is_dir() else "")
        )
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [(name or "").strip() for name in reader.fieldnames or []]
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    return header, rows
