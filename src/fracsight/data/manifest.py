"""The one reader of manifest CSVs: labelled image files, as ``train``, ``evaluate`` and ``audit`` read them.

Columns: ``path`` (relative to the manifest's folder, or absolute) and ``label`` (or ``fractured``:
1/0, true/false, fractured/non_fractured... the spellings of :mod:`fracsight.data.labels`), and
optionally ``region`` (one region name), ``region_flags`` (the body regions in the image, of hand,
leg, hip and shoulder, joined by ``;``; without it, ``region`` stands for itself when it is one of
the four), ``hardware`` (0/1, true/false, yes/no; empty = no), ``boxes`` (see
:mod:`fracsight.data.boxes`), ``group`` (e.g. a patient id, on every row or on none),
``original_sha256`` and ``original_pixel_sha256`` (the content hashes of the original image when
the listed file is a copy, see :mod:`fracsight.data.image_hashes`), and any other column
(kept as written, e.g. to break evaluation results down by it).

An image's id is its file name without extension (:mod:`fracsight.data.ids`), so each must be
listed once and be unique. Every refusal names the manifest and the line (the header is line 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fracsight.data.boxes import Box, BoxProblem, box_problem, describe_box, parse_boxes, read_yolo_boxes
from fracsight.data.ids import case_id
from fracsight.data.labels import ACCEPTED_LABELS, REGIONS, parse_label
from fracsight.data.table import read_table

__all__ = ["LABEL_COLUMNS", "ManifestError", "ManifestRow", "read_manifest"]

LABEL_COLUMNS = ("label", "fractured")
_HARDWARE = {
    **dict.fromkeys(("", "0", "0.0", "false", "no"), False),
    **dict.fromkeys(("1", "1.0", "true", "yes"), True),
}
_SHOWN = 5  # lines named in a message before "and N more"


class ManifestError(ValueError):
    """The manifest cannot be used as written; the message names the file and the line."""


@dataclass(frozen=True)
class ManifestRow:
    """One labelled image of a manifest."""

    line: int  # in the file (header = 1)
    text: str  # the path as written
    path: Path  # the image file, resolved against the manifest's folder
    id: str  # the case id: the file name without extension
    label: int | None  # 1 fractured, 0 not; None for an empty cell (only with ``unlabelled_ok``)
    region: str = "unknown"  # lower case; "unknown" when empty
    region_flags: tuple[str, ...] = ()  # of REGIONS, in that order; empty = not known
    hardware: bool = False
    boxes: tuple[Box, ...] | None = None  # None: the manifest has no boxes column
    group: str = ""
    original_sha256: str = ""  # content hashes of the original image, when the file is a copy
    original_pixel_sha256: str = ""
    columns: dict[str, str] = field(default_factory=dict)  # every column as written


def _lines(lines: list[int]) -> str:
    more = f" and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else ""
    return ", ".join(map(str, lines[:_SHOWN])) + more


def read_manifest(
    path: str | Path, *, unlabelled_ok: bool = False, check_boxes: bool = True
) -> list[ManifestRow]:
    """Every row of the manifest at ``path``, checked.

    ``unlabelled_ok`` keeps rows with an empty label (the audit reports them); ``check_boxes``
    refuses boxes with no area or outside their image (:func:`~fracsight.data.boxes.box_problem`),
    reading each boxed image's size from its header. A box cell naming a YOLO file always needs
    that size.
    """
    path = Path(path)
    header, raw_rows = read_table(path, "manifest")
    label_column = next((c for c in LABEL_COLUMNS if c in header), None)
    missing = [c for c in ("path", "label") if c not in header and not (c == "label" and label_column)]
    if missing:
        raise ManifestError(f"manifest {path}: missing column(s) {missing}; has {sorted(header)}")
    rows, bad_labels = [], []
    for line, cells in enumerate(raw_rows, start=2):
        where = f"manifest {path} line {line}"
        text = cells["path"]
        if not text:
            raise ManifestError(f"{where}: column 'path' is empty")
        label = parse_label(cells[label_column])  # type: ignore[index]
        if label is None and not (unlabelled_ok and not cells[label_column]):  # type: ignore[index]
            bad_labels.append((line, cells[label_column]))  # type: ignore[index]
            continue
        image = Path(text) if Path(text).is_absolute() else path.parent / text
        region = cells.get("region", "").lower() or "unknown"
        rows.append(
            ManifestRow(
                line=line,
                text=text,
                path=image,
                id=case_id(text, from_path=True),
                label=label,
                region=region,
                region_flags=_region_flags(where, cells.get("region_flags", ""), region),
                hardware=_hardware(where, cells.get("hardware", "")),
                boxes=_boxes(where, cells["boxes"], image, check_boxes) if "boxes" in header else None,
                group=cells.get("group", ""),
                original_sha256=cells.get("original_sha256", ""),
                original_pixel_sha256=cells.get("original_pixel_sha256", ""),
                columns=cells,
            )
        )
    if bad_labels:
        (line, value), more = bad_labels[0], [n for n, _ in bad_labels[1:]]
        raise ManifestError(
            f"manifest {path} line {line}: label {value!r} in column {label_column!r} is not a fracture label"
            + (f" (nor on lines {_lines(more)})" if more else "")
            + f"; accepted: {ACCEPTED_LABELS}"
        )
    if not rows:
        raise ManifestError(f"manifest {path} lists no images")
    _check_unique_ids(path, rows)
    _check_groups(path, rows)
    return rows


def _region_flags(where: str, text: str, region: str) -> tuple[str, ...]:
    """The ``region_flags`` cell as a tuple in REGIONS order; without it, ``region`` itself."""
    if not text:
        return (region,) if region in REGIONS else ()
    flags = {f.strip().lower() for f in text.split(";") if f.strip()}
    unknown = flags - set(REGIONS)
    if unknown:
        raise ManifestError(
            f"{where}: region_flags {text!r} names {', '.join(sorted(unknown))}; "
            f"accepted: {', '.join(REGIONS)}, joined by ';'"
        )
    return tuple(r for r in REGIONS if r in flags)


def _hardware(where: str, text: str) -> bool:
    if text.lower() not in _HARDWARE:
        raise ManifestError(
            f"{where}: hardware {text!r} is not a yes/no value; "
            f"accepted: {', '.join(k for k in _HARDWARE if k)} or empty (any case)"
        )
    return _HARDWARE[text.lower()]


def _boxes(where: str, text: str, image: Path, check: bool) -> tuple[Box, ...]:
    """The ``boxes`` cell: JSON boxes, or a YOLO file's boxes in the image's displayed pixels."""
    where = f"{where}: column 'boxes'"
    size = None
    if text.lower().endswith(".txt"):
        file = Path(text) if Path(text).is_absolute() else image.parent / text
        if not file.is_file():
            raise FileNotFoundError(f"{where}: box file {file} does not exist")
        size = _image_size(where, image)
        try:
            boxes = tuple(read_yolo_boxes(file, size[0], size[1]))
        except ValueError as exc:
            raise ManifestError(f"{where}: {exc}") from None
    else:
        try:
            boxes = parse_boxes(text)
        except ValueError as exc:
            raise ManifestError(f"{where}: {exc}") from None
    if check and boxes:
        size = size or _image_size(where, image)
        for k, box in enumerate(boxes):
            problem = box_problem(box, size)
            if problem is not None and problem[0] is not BoxProblem.OVERHANG:
                raise ManifestError(f"{where}: {describe_box(k, box)} {problem[1]}")
    return boxes


def _image_size(where: str, image: Path) -> tuple[int, int]:
    from fracsight.io import RefusedInput, image_size

    try:
        size = image_size(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"{where}: image {image} does not exist") from None
    except RefusedInput as exc:
        raise ManifestError(f"{where}: the boxes' image cannot be read: {exc.reason}") from None
    return size.width, size.height


def _check_unique_ids(path: Path, rows: list[ManifestRow]) -> None:
    """An image's id is its file name without extension: the key of split files, predictions and
    evaluation. Two rows with one id would be mixed up (the same file twice, or IM0001 in two folders)."""
    first: dict[str, int] = {}
    clashes = []
    for row in rows:
        if row.id in first:
            clashes.append(f"lines {first[row.id]} and {row.line} ({row.id!r})")
        first.setdefault(row.id, row.line)
    if clashes:
        more = f" and {len(clashes) - _SHOWN} more" if len(clashes) > _SHOWN else ""
        raise ManifestError(
            f"manifest {path}: {len(clashes)} image(s) listed twice or sharing a file name: "
            f"{', '.join(clashes[:_SHOWN])}{more}; an image is identified by its file name without "
            "extension, so each must be listed once and be unique (rename or copy the files)"
        )


def _check_groups(path: Path, rows: list[ManifestRow]) -> None:
    """A group on some rows only is refused: training would drop the given groups and re-derive all."""
    blank = [row.line for row in rows if not row.group]
    if blank and len(blank) < len(rows):
        raise ManifestError(
            f"manifest {path}: column 'group' is empty on {len(blank)} of {len(rows)} rows (lines "
            f"{_lines(blank)}); give a group on every row, or leave the column empty to group "
            "duplicates from the pixels"
        )
