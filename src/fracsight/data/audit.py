"""Data audit: what in a dataset would make an evaluation on it dishonest, found before training.

Checks, each a :class:`DefectKind`:

* unreadable and truncated images, as :func:`fracsight.io.read_radiograph` finds them (a truncated
  JPEG with under 90% of its rows is refused there, so it is flagged but not compared with others);
* exact and near duplicates (see :mod:`fracsight.data.duplicates`): a group counts once as
  evidence, so duplicates inflate n; across splits they leak test images into training; with
  different labels, one of the labels is wrong;
* labels that contradict the box annotations: fractured without a box, not fractured with a box,
  boxes that are empty or fall outside the image;
* for FracAtlas, the folder label disagreeing with dataset.csv; with a split file, images the
  split file does not place (or ids it names that are not in the dataset).

The class balance per region (and per split) is reported, not judged.

Inputs: a FracAtlas folder, or a manifest CSV read by :mod:`fracsight.data.manifest` (an empty
label is reported here, not refused); a split file read by :mod:`fracsight.data.split_file`.
"""

from __future__ import annotations

import enum
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from fracsight.data.boxes import BOX_TOLERANCE_PX, Box, box_problem, describe_box
from fracsight.data.duplicates import (
    DEFAULT_MAX_DISTANCE,
    DEFAULT_MIN_CORRELATION,
    DuplicateKind,
    ImageScan,
    find_duplicate_pairs,
    groups_from_pairs,
    scan_images,
)
from fracsight.data.ids import case_id
from fracsight.data.manifest import read_manifest
from fracsight.data.split_file import read_split_file

log = logging.getLogger(__name__)


class AuditInputError(ValueError):
    """The dataset, manifest or split file cannot be audited as given."""


class DefectKind(str, enum.Enum):
    """What can break honest evaluation; the values are the names used in JSON and ``--fail-on``."""

    UNREADABLE = "unreadable"
    TRUNCATED = "truncated"
    DUPLICATES = "duplicates"  # a group of exact or near duplicates
    CROSS_SPLIT_DUPLICATES = "cross_split_duplicates"
    CONFLICTING_LABELS = "conflicting_labels"  # a duplicate group whose members carry different labels
    FRACTURED_WITHOUT_BOXES = "fractured_without_boxes"
    NEGATIVE_WITH_BOXES = "negative_with_boxes"
    BAD_BOX = "bad_box"  # empty, inverted or outside the image
    LABEL_SOURCES_DISAGREE = "label_sources_disagree"
    MISSING_LABEL = "missing_label"
    SPLIT_FILE_MISMATCH = "split_file_mismatch"


_WHY = {
    DefectKind.UNREADABLE: "cannot be decoded: silently dropped or crashing in evaluation",
    DefectKind.TRUNCATED: "the file ends early: the missing part decodes as flat grey",
    DefectKind.DUPLICATES: "one radiograph counted several times: inflates n and narrows CIs",
    DefectKind.CROSS_SPLIT_DUPLICATES: "the same radiograph in two splits: test leaks into training",
    DefectKind.CONFLICTING_LABELS: "the same radiograph with different labels: one label is wrong",
    DefectKind.FRACTURED_WITHOUT_BOXES: "positive label without a box: cannot score localisation",
    DefectKind.NEGATIVE_WITH_BOXES: "negative label with a fracture box: label or box is wrong",
    DefectKind.BAD_BOX: "box empty, inverted or outside the image",
    DefectKind.LABEL_SOURCES_DISAGREE: "folder and table give different labels",
    DefectKind.MISSING_LABEL: "no label: cannot be used for evaluation",
    DefectKind.SPLIT_FILE_MISMATCH: "split file and dataset disagree on which images exist",
}


@dataclass(frozen=True)
class AuditRecord:
    """One image as the audit sees it; ``boxes`` is None when the dataset has no box annotations."""

    id: str  # as the dataset names the image (manifest path as written, FracAtlas file name)
    path: Path
    label: bool | None
    region: str = "unknown"
    boxes: tuple[Box, ...] | None = None
    hardware: bool | None = None
    split: str | None = None
    other_label: bool | None = None  # a second label source (FracAtlas dataset.csv), if any


@dataclass(frozen=True)
class Defect:
    kind: DefectKind
    ids: tuple[str, ...]
    detail: str


@dataclass(frozen=True)
class DuplicateGroup:
    """Images recognised as one radiograph, with their labels and splits."""

    group: int
    kind: DuplicateKind  # EXACT when every member has identical pixels
    members: tuple[str, ...]
    labels: tuple[bool | None, ...]
    splits: tuple[str | None, ...]
    pairs: tuple[tuple[str, str, str, float, float], ...]  # (a, b, kind, dHash distance, correlation)

    @property
    def conflicting_labels(self) -> bool:
        return len({lab for lab in self.labels if lab is not None}) > 1

    @property
    def cross_split(self) -> bool:
        return len({s for s in self.splits if s is not None}) > 1


@dataclass(frozen=True)
class BalanceRow:
    split: str  # "all" when there is no split file
    region: str
    n: int
    fractured: int
    not_fractured: int
    unlabelled: int

    @property
    def fractured_share(self) -> float | None:
        labelled = self.fractured + self.not_fractured
        return self.fractured / labelled if labelled else None


@dataclass
class AuditReport:
    dataset: str
    source: str  # "fracatlas" or "manifest"
    records: list[AuditRecord]
    scans: list[ImageScan]
    groups: list[int]  # duplicate-group id per record
    duplicate_groups: list[DuplicateGroup]
    defects: list[Defect]
    balance: list[BalanceRow]
    parameters: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[DefectKind, int]:
        found = Counter(d.kind for d in self.defects)
        return {kind: found.get(kind, 0) for kind in DefectKind}

    def found(self, kinds: Sequence[DefectKind] | None = None) -> bool:
        """Whether any defect (of ``kinds``, or of any kind) was found."""
        wanted = set(kinds) if kinds is not None else set(DefectKind)
        return any(d.kind in wanted for d in self.defects)

    def to_json(self) -> dict[str, object]:
        by_id = {r.id: i for i, r in enumerate(self.records)}
        return {
            "dataset": self.dataset,
            "source": self.source,
            "n_images": len(self.records),
            "n_distinct_radiographs": len(set(self.groups)),
            "parameters": self.parameters,
            "notes": self.notes,
            "counts": {k.value: v for k, v in self.counts().items()},
            "defects": [{"kind": d.kind.value, "ids": list(d.ids), "detail": d.detail} for d in self.defects],
            "duplicate_groups": [
                {
                    "group": g.group,
                    "kind": g.kind.value,
                    "members": list(g.members),
                    "labels": list(g.labels),
                    "splits": list(g.splits),
                    "conflicting_labels": g.conflicting_labels,
                    "cross_split": g.cross_split,
                    "pairs": [
                        {
                            "a": a,
                            "b": b,
                            "kind": k,
                            "dhash_distance": _finite(d),
                            "correlation": _finite(c, 5),
                        }
                        for a, b, k, d, c in g.pairs
                    ],
                }
                for g in self.duplicate_groups
            ],
            "balance": [asdict(b) | {"fractured_share": b.fractured_share} for b in self.balance],
            "images": [
                {
                    "id": r.id,
                    "path": str(r.path),
                    "label": r.label,
                    "region": r.region,
                    "split": r.split,
                    "hardware": r.hardware,
                    "n_boxes": None if r.boxes is None else len(r.boxes),
                    "duplicate_group": self.groups[by_id[r.id]],
                    "truncated": s.truncated,
                    "decoded_fraction": None if s.decoded_fraction is None else round(s.decoded_fraction, 4),
                    "error": s.error,
                    "width": s.fingerprint.width if s.fingerprint else None,
                    "height": s.fingerprint.height if s.fingerprint else None,
                }
                for r, s in zip(self.records, self.scans, strict=True)
            ],
        }


def _finite(value: float, digits: int | None = None) -> float | None:
    """A score for JSON: None when undefined (NaN correlation of a flat or mostly truncated pair, or an
    infinite dHash distance), since NaN and Infinity are not JSON and would make the file unreadable."""
    if not math.isfinite(value):
        return None
    return value if digits is None else round(value, digits)


# ----------------------------------------------------------------------------------------------
# Reading datasets


def records_from_manifest(path: Path) -> list[AuditRecord]:
    """Records from a manifest CSV (:mod:`fracsight.data.manifest`; empty labels kept as None)."""
    return [
        AuditRecord(
            id=row.text,
            path=row.path,
            label=None if row.label is None else bool(row.label),
            region=row.region,
            boxes=row.boxes,
            hardware=row.hardware if "hardware" in row.columns else None,
        )
        for row in read_manifest(path, unlabelled_ok=True, check_boxes=False)
    ]


def read_fracatlas(root: Path) -> list[AuditRecord]:
    from fracsight.data.fracatlas import load_fracatlas

    return [
        AuditRecord(
            id=im.image_id,
            path=im.path,
            label=im.fractured,
            region=im.region.value,
            boxes=im.boxes,
            hardware=im.hardware,
            other_label=im.csv_fractured,
        )
        for im in load_fracatlas(root)
    ]


def _attach_splits(
    records: list[AuditRecord], splits: dict[str, str]
) -> tuple[list[AuditRecord], list[Defect]]:
    """Match split ids to records by the one id rule (:mod:`fracsight.data.ids`); report what does not."""
    keys = {case_id(r.path.name, from_path=True): i for i, r in enumerate(records)}
    placed: dict[int, str] = {}
    unknown = []
    for ident, split in splits.items():
        i = keys.get(ident)
        if i is None:
            unknown.append(ident)
        else:
            placed[i] = split
    out = [replace(r, split=placed.get(i)) for i, r in enumerate(records)]
    defects = []
    unplaced = [r.id for i, r in enumerate(records) if i not in placed]
    if unplaced:
        defects.append(
            Defect(DefectKind.SPLIT_FILE_MISMATCH, tuple(unplaced), f"{len(unplaced)} images have no split")
        )
    if unknown:
        defects.append(
            Defect(
                DefectKind.SPLIT_FILE_MISMATCH,
                tuple(sorted(unknown)),
                f"{len(unknown)} split-file ids are not in the dataset",
            )
        )
    return out, defects


def load_records(dataset: Path) -> tuple[str, list[AuditRecord]]:
    """("fracatlas" | "manifest", records) for a FracAtlas folder or a manifest CSV."""
    if dataset.is_dir():
        if (dataset / "dataset.csv").is_file() and (dataset / "images").is_dir():
            return "fracatlas", read_fracatlas(dataset)
        raise AuditInputError(
            f"{dataset} is a folder but not a FracAtlas folder (no dataset.csv and images/); "
            "pass a FracAtlas folder or a manifest CSV (path,label[,region][,boxes])"
        )
    if dataset.is_file():
        return "manifest", records_from_manifest(dataset)
    raise FileNotFoundError(f"dataset {dataset} does not exist")


# ----------------------------------------------------------------------------------------------
# Checks


def _box_defects(record: AuditRecord, scan: ImageScan) -> list[Defect]:
    if record.boxes is None:
        return []
    out = []
    if record.label is True and not record.boxes:
        out.append(Defect(DefectKind.FRACTURED_WITHOUT_BOXES, (record.id,), "labelled fractured, no box"))
    if record.label is False and record.boxes:
        out.append(
            Defect(
                DefectKind.NEGATIVE_WITH_BOXES,
                (record.id,),
                f"labelled not fractured, {len(record.boxes)} box(es)",
            )
        )
    fp = scan.fingerprint
    for k, box in enumerate(record.boxes):
        problem = box_problem(box, (fp.width, fp.height) if fp is not None else None)
        if problem is not None:
            out.append(Defect(DefectKind.BAD_BOX, (record.id,), f"{describe_box(k, box)} {problem[1]}"))
    return out


def _duplicate_groups(
    records: list[AuditRecord], scans: list[ImageScan], max_distance: float, min_correlation: float
) -> tuple[list[int], list[DuplicateGroup]]:
    readable = [i for i, s in enumerate(scans) if s.fingerprint is not None]
    pairs = find_duplicate_pairs([scans[i].fingerprint for i in readable], max_distance, min_correlation)  # type: ignore[misc]
    global_pairs = [(readable[p.i], readable[p.j], p) for p in pairs]
    groups = groups_from_pairs(len(records), [(i, j) for i, j, _ in global_pairs])
    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    pairs_of: dict[int, list[tuple[str, str, str, float, float]]] = defaultdict(list)
    for i, j, p in global_pairs:
        pairs_of[groups[i]].append(
            (records[i].id, records[j].id, p.kind.value, round(p.dhash_distance, 2), p.correlation)
        )
    out = []
    for g in sorted(members, key=lambda g: members[g][0]):
        idx = members[g]
        if len(idx) < 2:
            continue
        digests = {scans[i].fingerprint.sha256 for i in idx}  # type: ignore[union-attr]
        out.append(
            DuplicateGroup(
                group=g,
                kind=DuplicateKind.EXACT if len(digests) == 1 else DuplicateKind.NEAR,
                members=tuple(records[i].id for i in idx),
                labels=tuple(records[i].label for i in idx),
                splits=tuple(records[i].split for i in idx),
                pairs=tuple(pairs_of[g]),
            )
        )
    return groups, out


def _balance(records: list[AuditRecord]) -> list[BalanceRow]:
    has_splits = any(r.split is not None for r in records)
    cells: dict[tuple[str, str], list[bool | None]] = defaultdict(list)
    for r in records:
        split = (r.split or "(none)") if has_splits else "all"
        cells[(split, r.region)].append(r.label)
        cells[(split, "all regions")].append(r.label)
    return [
        BalanceRow(split, region, len(labels), labels.count(True), labels.count(False), labels.count(None))
        for (split, region), labels in sorted(
            cells.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all regions", kv[0][1])
        )
    ]


def audit(
    dataset: str | Path,
    split_file: str | Path | None = None,
    max_distance: float = DEFAULT_MAX_DISTANCE,
    min_correlation: float = DEFAULT_MIN_CORRELATION,
    workers: int | None = None,
) -> AuditReport:
    """Run every check on ``dataset`` (FracAtlas folder or manifest CSV)."""
    dataset = Path(dataset)
    source, records = load_records(dataset)
    defects: list[Defect] = []
    if split_file is not None:
        records, split_defects = _attach_splits(records, read_split_file(split_file))
        defects += split_defects
    log.info("auditing %d images from %s", len(records), dataset)
    scans = scan_images([r.path for r in records], workers=workers)
    for r, s in zip(records, scans, strict=True):
        if s.fingerprint is None and not s.truncated:
            defects.append(Defect(DefectKind.UNREADABLE, (r.id,), s.error or "cannot be decoded"))
        if s.truncated:
            if s.fingerprint is not None and s.decoded_fraction is not None:
                # Floor, so a file missing a few blocks never reads as "100.0% decoded".
                share = math.floor(s.decoded_fraction * 1000) / 10
                detail = f"truncated; {share:.1f}% of pixels decoded"
            else:
                detail = f"truncated; refused by fracsight: {s.error}"
            defects.append(Defect(DefectKind.TRUNCATED, (r.id,), detail))
        if r.label is None:
            defects.append(Defect(DefectKind.MISSING_LABEL, (r.id,), "no label"))
        if r.other_label is not None and r.label is not None and r.other_label != r.label:
            defects.append(
                Defect(
                    DefectKind.LABEL_SOURCES_DISAGREE,
                    (r.id,),
                    f"folder says {'fractured' if r.label else 'not fractured'}, dataset.csv says "
                    f"{'fractured' if r.other_label else 'not fractured'}",
                )
            )
        defects += _box_defects(r, s)

    groups, dup_groups = _duplicate_groups(records, scans, max_distance, min_correlation)
    for g in dup_groups:
        defects.append(
            Defect(DefectKind.DUPLICATES, g.members, f"{g.kind.value} duplicates, {len(g.members)} images")
        )
        if g.cross_split:
            splits = sorted({s for s in g.splits if s is not None})
            defects.append(
                Defect(DefectKind.CROSS_SPLIT_DUPLICATES, g.members, f"in splits {', '.join(splits)}")
            )
        if g.conflicting_labels:
            labels = ", ".join(
                f"{m}={'fractured' if lab else 'not fractured'}"
                for m, lab in zip(g.members, g.labels, strict=True)
            )
            defects.append(Defect(DefectKind.CONFLICTING_LABELS, g.members, labels))

    notes = []
    if all(r.boxes is None for r in records):
        notes.append("no box annotations in this dataset: label/box checks were skipped")
    if split_file is None:
        notes.append("no split file given: cross-split leakage was not checked")
    return AuditReport(
        dataset=str(dataset),
        source=source,
        records=records,
        scans=scans,
        groups=groups,
        duplicate_groups=dup_groups,
        defects=defects,
        balance=_balance(records),
        parameters={
            "max_distance": max_distance,
            "min_correlation": min_correlation,
            "box_tolerance_px": BOX_TOLERANCE_PX,
            "split_file": str(split_file) if split_file else None,
        },
        notes=notes,
    )


# ----------------------------------------------------------------------------------------------
# Rendering


def _label_word(label: bool | None) -> str:
    return "unlabelled" if label is None else ("fractured" if label else "not fractured")


def summary_text(report: AuditReport, max_list: int = 200) -> str:
    """Readable summary: counts first, then the lists (each cut at ``max_list`` lines)."""
    counts = report.counts()
    lines = [
        f"Audit of {report.dataset} ({report.source}): {len(report.records)} images, "
        f"{len(set(report.groups))} distinct radiographs after grouping duplicates",
        "",
        "Defects found:",
    ]
    width = max(len(k.value) for k in DefectKind)
    for kind in DefectKind:
        lines.append(f"  {kind.value:<{width}}  {counts[kind]:>5}   {_WHY[kind]}")
    exact = sum(g.kind is DuplicateKind.EXACT for g in report.duplicate_groups)
    in_groups = sum(len(g.members) for g in report.duplicate_groups)
    near = len(report.duplicate_groups) - exact
    lines.append(f"  ({exact} exact and {near} near duplicate groups, {in_groups} images in them)")
    lines += [f"Note: {n}" for n in report.notes]

    lines += ["", "Class balance (fractured / not fractured):"]
    for b in report.balance:
        share = "" if b.fractured_share is None else f"  {b.fractured_share:6.1%} fractured"
        extra = f", {b.unlabelled} unlabelled" if b.unlabelled else ""
        lines.append(
            f"  {b.split:<10} {b.region:<12} n={b.n:<6} {b.fractured:>5} / {b.not_fractured:<5}{share}{extra}"
        )

    def listing(title: str, items: list[str]) -> None:
        if not items:
            return
        lines.extend(["", f"{title} ({len(items)}):"])
        lines.extend(f"  {item}" for item in items[:max_list])
        if len(items) > max_list:
            lines.append(f"  ... {len(items) - max_list} more (see the JSON)")

    by_kind: dict[DefectKind, list[Defect]] = defaultdict(list)
    for d in report.defects:
        by_kind[d.kind].append(d)
    listing("Unreadable", [f"{d.ids[0]}: {d.detail}" for d in by_kind[DefectKind.UNREADABLE]])
    listing("Truncated", [f"{d.ids[0]}: {d.detail}" for d in by_kind[DefectKind.TRUNCATED]])

    def group_line(g: DuplicateGroup) -> str:
        parts = []
        for m, lab, s in zip(g.members, g.labels, g.splits, strict=True):
            parts.append(f"{m} [{_label_word(lab)}{', ' + s if s else ''}]")
        return f"{g.kind.value}: " + "  ".join(parts)

    listing(
        "Duplicate groups with conflicting labels",
        [group_line(g) for g in report.duplicate_groups if g.conflicting_labels],
    )
    listing(
        "Duplicate groups across splits", [group_line(g) for g in report.duplicate_groups if g.cross_split]
    )
    listing("All duplicate groups", [group_line(g) for g in report.duplicate_groups])
    for kind in (
        DefectKind.FRACTURED_WITHOUT_BOXES,
        DefectKind.NEGATIVE_WITH_BOXES,
        DefectKind.BAD_BOX,
        DefectKind.LABEL_SOURCES_DISAGREE,
        DefectKind.MISSING_LABEL,
    ):
        listing(kind.value.replace("_", " ").capitalize(), [f"{d.ids[0]}: {d.detail}" for d in by_kind[kind]])
    listing(
        "Split file mismatch",
        [
            f"{d.detail}: {', '.join(d.ids[:10])}{' ...' if len(d.ids) > 10 else ''}"
            for d in by_kind[DefectKind.SPLIT_FILE_MISMATCH]
        ],
    )
    return "\n".join(lines) + "\n"


def _thumbnail_uri(path: Path) -> str | None:
    """A small PNG of the image as fracsight reads it, or None if it cannot be read."""
    from fracsight.io import RefusedInput, read_radiograph
    from fracsight.reporting.images import png_data_uri

    try:
        return png_data_uri(read_radiograph(path).pixels, max_side=160)
    except (RefusedInput, OSError):
        return None


def render_html(report: AuditReport, max_gallery_groups: int = 40) -> str:
    """A self-contained HTML page: counts, balance, and thumbnails of the duplicate groups that matter."""
    from fracsight.reporting import html as h

    counts = report.counts()
    body = [
        h.facts(
            [
                ("Dataset", f"{report.dataset} ({report.source})"),
                ("Images", str(len(report.records))),
                ("Distinct radiographs", str(len(set(report.groups)))),
                (
                    "Duplicate rule",
                    f"dHash distance <= {report.parameters['max_distance']} of 256 bits, or thumbnail "
                    f"correlation >= {report.parameters['min_correlation']}, or identical pixels",
                ),
            ]
        ),
        *[h.note(n, h.NoteKind.WARNING) for n in report.notes],
        h.section(
            "Defects",
            h.table(["Kind", "Count", "Why it matters"], [[k.value, counts[k], _WHY[k]] for k in DefectKind]),
        ),
        h.section(
            "Class balance",
            h.table(
                ["Split", "Region", "n", "Fractured", "Not fractured", "Unlabelled", "Fractured share"],
                [
                    [
                        b.split,
                        b.region,
                        b.n,
                        b.fractured,
                        b.not_fractured,
                        b.unlabelled,
                        "" if b.fractured_share is None else f"{b.fractured_share:.1%}",
                    ]
                    for b in report.balance
                ],
            ),
        ),
    ]
    path_of = {r.id: r.path for r in report.records}
    shown = sorted(
        report.duplicate_groups, key=lambda g: (not g.conflicting_labels, not g.cross_split, g.group)
    )
    galleries = []
    for g in shown[:max_gallery_groups]:
        items = []
        for m, lab, s in zip(g.members, g.labels, g.splits, strict=True):
            uri = _thumbnail_uri(path_of[m])
            if uri:
                items.append(h.GalleryItem(uri, f"{m} ({_label_word(lab)}{', ' + s if s else ''})"))
        flags = ", ".join(
            t
            for t, on in (("conflicting labels", g.conflicting_labels), ("across splits", g.cross_split))
            if on
        )
        galleries.append(
            h.section(
                f"Group {g.group}: {g.kind.value}{' - ' + flags if flags else ''}", h.gallery(items), level=3
            )
        )
    if galleries:
        more = len(shown) - len(galleries)
        galleries.append(h.paragraph(f"{more} more groups are listed in the JSON.") if more > 0 else "")
        body.append(h.section("Duplicate groups (conflicting labels and cross-split first)", galleries))
    rows = [
        [d.kind.value, ", ".join(d.ids), d.detail]
        for d in report.defects
        if d.kind is not DefectKind.DUPLICATES
    ]
    body.append(
        h.section(
            "All other defects", h.table(["Kind", "Images", "Detail"], rows) if rows else h.paragraph("None.")
        )
    )
    return h.page("Data audit", body, subtitle=report.dataset)
