"""Labelled radiographs for training: from a FracAtlas-layout folder or a CSV manifest.

Manifests are read by the one manifest reader, :mod:`fracsight.data.manifest` (its docstring
lists the columns); without a ``group`` column, duplicate groups are found from the pixels.
:func:`write_manifest` writes the training copies of ``scripts/compact_dataset.py`` in that format.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from fracsight.data.labels import REGIONS


@dataclass(frozen=True)
class Example:
    path: str
    image_id: str
    label: int
    region: str = "unknown"
    hardware: bool = False
    boxes: tuple[tuple[float, float, float, float], ...] = field(default_factory=tuple)
    group: str = ""  # images sharing a group (same patient, duplicates) never straddle a split
    region_flags: tuple[str, ...] = ()  # of REGIONS, in that order; empty = not known
    # Content hashes of the original image when ``path`` is a copy (the model card records them).
    original_sha256: str = ""
    original_pixel_sha256: str = ""

    def region_targets(self) -> list[int] | None:
        """0/1 per entry of REGIONS for the region head, or None when the regions are not known."""
        if not self.region_flags:
            return None
        return [int(r in self.region_flags) for r in REGIONS]


def load_examples(source: str | Path) -> list[Example]:
    """Examples from a FracAtlas folder (has ``dataset.csv``) or a manifest ``.csv`` file."""
    source = Path(source)
    if source.is_dir():
        if not (source / "dataset.csv").exists():
            raise FileNotFoundError(f"{source}: no dataset.csv; expected a FracAtlas-layout folder")
        from fracsight.data.fracatlas import load_fracatlas

        return [
            Example(
                path=str(item.path),
                image_id=Path(item.image_id).stem,
                label=int(item.fractured),
                region=str(getattr(item.region, "value", item.region)),
                hardware=bool(item.hardware),
                boxes=tuple(tuple(float(v) for v in b) for b in item.boxes),
                region_flags=tuple(r for r in REGIONS if r in item.region_flags),
            )
            for item in load_fracatlas(source)
        ]
    if source.suffix.lower() == ".csv":
        return _from_manifest(source)
    raise ValueError(f"{source}: training data must be a FracAtlas folder or a .csv manifest")


def _from_manifest(path: Path) -> list[Example]:
    """Examples from a manifest, read and checked by :func:`fracsight.data.manifest.read_manifest`."""
    from fracsight.data.manifest import read_manifest as read_rows

    return [
        Example(
            path=str(row.path),
            image_id=row.id,
            label=int(row.label),  # type: ignore[arg-type]  # unlabelled rows are refused
            region=row.region,
            hardware=row.hardware,
            boxes=row.boxes or (),
            group=row.group,
            region_flags=row.region_flags,
            original_sha256=row.original_sha256,
            original_pixel_sha256=row.original_pixel_sha256,
        )
        for row in read_rows(path)
    ]


def write_manifest(examples: list[Example], path: Path, relative_to: Path | None = None) -> None:
    """A manifest of ``examples`` (paths relative to ``relative_to`` when given)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            [
                "path",
                "label",
                "region",
                "hardware",
                "boxes",
                "group",
                "region_flags",
                "original_sha256",
                "original_pixel_sha256",
            ]
        )
        for ex in examples:
            p = Path(ex.path)
            if relative_to is not None:
                p = p.relative_to(relative_to)
            boxes = json.dumps([[round(v, 1) for v in b] for b in ex.boxes])
            flags = ";".join(ex.region_flags)
            writer.writerow(
                [
                    str(p),
                    ex.label,
                    ex.region,
                    int(ex.hardware),
                    boxes,
                    ex.group,
                    flags,
                    ex.original_sha256,
                    ex.original_pixel_sha256,
                ]
            )
