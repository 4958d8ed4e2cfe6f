"""The one reader of split files: which case belongs to which split (train, test, ...).

A split file is a CSV with an id column (``id``, ``image_id``, ``case_id`` or ``path``) and a
``split`` column; ids follow the one rule of :mod:`fracsight.data.ids`, so a split file written
with file names, paths or stems places the same images. ``fracsight train`` writes one
(``split.csv``, with ``dev``, ``test`` and ``excluded`` rows); ``evaluate``, ``thresholds``,
``calibrate``, ``audit`` and ``train --test-split`` read it.
"""

from __future__ import annotations

from pathlib import Path

from fracsight.data.ids import ID_COLUMNS, case_id
from fracsight.data.table import read_table

__all__ = ["SplitFileError", "read_split_file", "split_ids"]


class SplitFileError(ValueError):
    """The split file cannot be used as written; the message names the file and the line."""


def read_split_file(path: str | Path) -> dict[str, str]:
    """case id -> split name, for every row of the split file at ``path``."""
    header, rows = read_table(path, "split file")
    key = next((c for c in ID_COLUMNS if c in header), None)
    if key is None or "split" not in header:
        raise SplitFileError(
            f"split file {path}: needs an id column ({', '.join(ID_COLUMNS)}) and a 'split' column; "
            f"has {header}"
        )
    splits: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        ident, split = case_id(row[key], from_path=key == "path"), row["split"]
        if not ident or not split:
            raise SplitFileError(f"split file {path} line {line}: empty {key!r} or 'split'")
        if splits.get(ident, split) != split:
            raise SplitFileError(
                f"split file {path} line {line}: {row[key]!r} is in both {splits[ident]!r} and {split!r}"
            )
        splits[ident] = split
    if not splits:
        raise SplitFileError(f"split file {path} has a header but no rows")
    return splits


def split_ids(path: str | Path, split: str) -> set[str]:
    """The ids of the split file's cases in ``split``; refused when there are none."""
    splits = read_split_file(path)
    chosen = {ident for ident, name in splits.items() if name == split}
    if not chosen:
        raise SplitFileError(
            f"split file {path} has no case in split {split!r}; its splits are {sorted(set(splits.values()))}"
        )
    return chosen
