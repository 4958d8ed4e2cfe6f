"""Labelled radiographs for training: from a FracAtlas-layout folder or a CSV manifest.

Manifest columns: ``path`` (relative to the manifest's folder or absolute), ``label``
(1 = fractured, 0 = not, or another spelling of :mod:`fracsight.data.labels` such as
true/false or fractured/non_fractured), optional ``region``, optional ``region_flags`` (the
body regions in the image, of hand, leg, hip and shoulder, joined by ``;``, e.g.
``hand;shoulder`` for a mixed arm image; when absent, ``region`` stands for itself if it is
one of the four), optional ``hardware`` (0/1, true/false or yes/no; empty = 0), optional
``boxes`` (JSON list of [x0, y0, x1, y1] in the image's pixels) and optional ``group`` (e.g.
a patient id, on every row or on none; when absent, duplicate groups are found from the pixels).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from fracsight.data.labels import ACCEPTED_LABELS, REGIONS, parse_label

_HARDWARE = {
    **dict.fromkeys(("", "0", "0.0", "false", "no"), False),
    **dict.fromkeys(("1", "1.0", "true", "yes"), True),
}


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
        return read_manifest(source)
    raise ValueError(f"{source}: training data must be a FracAtlas folder or a .csv manifest")


def read_manifest(path: Path) -> list[Example]:
    examples = []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"path", "label"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: manifest lacks column(s) {', '.join(sorted(missing))}")
        for row_no, row in enumerate(reader, start=2):
            text = (row["label"] or "").strip()
            label = parse_label(text)
            if label is None:
                raise ValueError(
                    f"{path}, row {row_no}: label {text!r} in column 'label' is not a fracture label; "
                    f"accepted: {ACCEPTED_LABELS}"
                )
            image = Path(row["path"])
            if not image.is_absolute():
                image = path.parent / image
            boxes_text = (row.get("boxes") or "").strip()
            try:
                boxes = tuple(tuple(float(v) for v in b) for b in json.loads(boxes_text or "[]"))
            except (json.JSONDecodeError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}, row {row_no}: boxes {boxes_text!r} is not a JSON list") from exc
            if any(len(b) != 4 for b in boxes):
                raise ValueError(f"{path}, row {row_no}: each box needs 4 numbers [x0, y0, x1, y1]")
            if any(b[2] < b[0] or b[3] < b[1] for b in boxes):
                # Reversed corners are most often [x, y, width, height] boxes: refuse, not guess.
                raise ValueError(
                    f"{path}, row {row_no}: boxes {boxes_text!r}: each box must be [x0, y0, x1, y1] "
                    "with x1 >= x0 and y1 >= y0"
                )
            hardware_text = (row.get("hardware") or "").strip()
            if hardware_text.lower() not in _HARDWARE:
                raise ValueError(
                    f"{path}, row {row_no}: hardware {hardware_text!r} is not a yes/no value; "
                    f"accepted: {', '.join(k for k in _HARDWARE if k)} or empty (any case)"
                )
            region = (row.get("region") or "unknown").strip() or "unknown"
            examples.append(
                Example(
                    path=str(image),
                    image_id=image.stem,
                    label=label,
                    region=region,
                    hardware=_HARDWARE[hardware_text.lower()],
                    boxes=boxes,
                    group=(row.get("group") or "").strip(),
                    region_flags=_region_flags(path, row_no, row.get("region_flags"), region),
                )
            )
    if not examples:
        raise ValueError(f"{path}: manifest has no rows")
    _check_groups(path, examples)
    _check_unique_names(path, examples)
    return examples


def _region_flags(path: Path, row_no: int, text: str | None, region: str) -> tuple[str, ...]:
    """The ``region_flags`` cell as a tuple in REGIONS order; without the column, ``region`` itself."""
    if text is None or not text.strip():
        return (region,) if region in REGIONS else ()
    flags = {f.strip().lower() for f in text.split(";") if f.strip()}
    unknown = flags - set(REGIONS)
    if unknown:
        raise ValueError(
            f"{path}, row {row_no}: region_flags {text!r} names {', '.join(sorted(unknown))}; "
            f"accepted: {', '.join(REGIONS)}, joined by ';'"
        )
    return tuple(r for r in REGIONS if r in flags)


def _check_unique_names(path: Path, examples: list[Example]) -> None:
    """Two images with one file name are refused: the name is the image's id in split.csv, the
    prediction files and ``fracsight evaluate``, which would mix the two up (IM0001 in two folders)."""
    first: dict[str, int] = {}
    clashes = []
    for row_no, ex in enumerate(examples, start=2):
        if ex.image_id in first:
            clashes.append(f"rows {first[ex.image_id]} and {row_no} ({ex.image_id!r})")
        first.setdefault(ex.image_id, row_no)
    if clashes:
        more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise ValueError(
            f"{path}: {len(clashes)} image file name(s) repeat: {', '.join(clashes[:5])}{more}; an image is "
            "identified by its file name without extension, so each must be unique (rename or copy the files)"
        )


def _check_groups(path: Path, examples: list[Example]) -> None:
    """A group on some rows only is refused: training would drop the given groups and re-derive all."""
    blank = [row_no for row_no, ex in enumerate(examples, start=2) if not ex.group]
    if blank and len(blank) < len(examples):
        rows = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
        raise ValueError(
            f"{path}: column 'group' is empty on {len(blank)} of {len(examples)} rows (rows {rows}); "
            "give a group on every row, or leave the column empty to group duplicates from the pixels"
        )


def write_manifest(examples: list[Example], path: Path, relative_to: Path | None = None) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "region", "hardware", "boxes", "group", "region_flags"])
        for ex in examples:
            p = Path(ex.path)
            if relative_to is not None:
                p = p.relative_to(relative_to)
            boxes = json.dumps([[round(v, 1) for v in b] for b in ex.boxes])
            flags = ";".join(ex.region_flags)
            writer.writerow([str(p), ex.label, ex.region, int(ex.hardware), boxes, ex.group, flags])
