"""List a run's false positives on the development split: the non-fractured images its
out-of-fold scores put at or above the model card's "fracture" and "doubt" thresholds.

Why: the model card names the classes of non-fractured images the model calls fractures
(hardware, growth plates, bone lesions, ...) with examples from the development data; this
lists those images, counts them by region and by FracAtlas's hardware flag, and writes the
top ones (and optionally thumbnails) for a person to look at. Only development rows are read:
rows with a negative fold, a ``split`` of ``test``, or marked ``test`` in the run's
``split.csv`` are left out. The tables print as Markdown, ready to paste.

``--review`` reads a person's classification of images (``image_id,class,also,note``; ``class``
one of :data:`CLASSES`, ``also`` further classes separated by ``;``, a trailing ``?`` meaning
"possibly") and counts the classes among the listed images; images it lacks are counted as
"not reviewed", so a new model's list shows what is left to look at.

    python scripts/false_positive_review.py training/default-run \
        --card src/fracsight/models/default.card.json --top 40 \
        --review training/false-positives-review.csv --sheet /tmp/fp-sheet
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fracsight.data.split_file import read_split_file
from fracsight.model_card import ModelCard, default_card_path

ROOT = Path(__file__).resolve().parents[1]
THUMB_SIDE = 256
NOT_REVIEWED = "not reviewed"
# What a person may see on a non-fractured image the model scores high (training/false-positives.md).
CLASSES = (
    "orthopaedic hardware",
    "metal outside the bone",
    "open growth plates",
    "cast or splint",
    "bone lesion",
    "degenerative change",
    "healed fracture or deformity",
    "overlapping bones or projection",
    "text or film artefacts",
    "nothing obvious",
)


@dataclass(frozen=True)
class Review:
    """A person's reading of one image: the main finding, further ones, a note."""

    main: str
    also: tuple[str, ...]
    note: str


@dataclass(frozen=True)
class Row:
    """One out-of-fold prediction of a non-fractured development image."""

    image_id: str
    path: str
    region: str
    hardware: bool
    probability: float


def _test_ids(run: Path) -> set[str]:
    """Image ids the run's ``split.csv`` (if any) puts in the held-out test split."""
    split = run / "split.csv"
    if not split.is_file():
        return set()
    return {ident for ident, name in read_split_file(split).items() if name == "test"}


def read_negatives(predictions: Path) -> tuple[list[Row], int]:
    """The non-fractured development rows, and how many test rows were left out."""
    test_ids = _test_ids(predictions.parent)
    rows, dropped = [], 0
    with open(predictions, newline="") as fh:
        for r in csv.DictReader(fh):
            is_test = r["image_id"] in test_ids or r.get("split") == "test" or int(r.get("fold") or 0) < 0
            if is_test:
                dropped += 1
            elif int(r["label"]) == 0:
                hardware = r["hardware"] == "1"
                rows.append(Row(r["image_id"], r["path"], r["region"], hardware, float(r["probability"])))
    return rows, dropped


def _pct(k: int, n: int) -> str:
    return f"{k / n:.1%}" if n else "-"


def _share(k: int, n: int) -> str:
    return f"{k}/{n} ({_pct(k, n)})"


def tables(negatives: Sequence[Row], thresholds: dict[str, float]) -> list[str]:
    """Markdown lines: false positives at each threshold by region and by the hardware flag."""
    cut = {name: thresholds[name] for name in ("fracture", "doubt")}
    hits = {name: [r for r in negatives if r.probability >= t] for name, t in cut.items()}
    regions = sorted({r.region for r in negatives})
    all_by_region = Counter(r.region for r in negatives)
    lines = [
        f"{len(negatives)} non-fractured development images; thresholds "
        + ", ".join(f"{name} {t:.4f}" for name, t in cut.items()),
        "",
        "| region | non-fractured | >= fracture | share | >= doubt | share |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for region in [*regions, "all"]:
        n = len(negatives) if region == "all" else all_by_region[region]
        k = {name: sum(region in ("all", r.region) for r in hits[name]) for name in cut}
        f, d = k["fracture"], k["doubt"]
        lines.append(f"| {region} | {n} | {f} | {_pct(f, n)} | {d} | {_pct(d, n)} |")
    hardware_all = sum(r.hardware for r in negatives)
    lines += [
        "",
        "| FracAtlas hardware flag | among all non-fractured | among >= fracture | among >= doubt |",
        "|---|---:|---:|---:|",
        f"| hardware = 1 | {_share(hardware_all, len(negatives))} | "
        f"{_share(sum(r.hardware for r in hits['fracture']), len(hits['fracture']))} | "
        f"{_share(sum(r.hardware for r in hits['doubt']), len(hits['doubt']))} |",
    ]
    return lines


def top(negatives: Sequence[Row], threshold: float, n: int) -> list[Row]:
    """The ``n`` highest-scored non-fractured images at or above ``threshold``, highest first."""
    above = [r for r in negatives if r.probability >= threshold]
    return sorted(above, key=lambda r: (-r.probability, r.image_id))[:n]


def read_review(path: Path) -> dict[str, Review]:
    """``image_id -> Review``; refuses a class outside :data:`CLASSES` so counts stay comparable."""
    reviews = {}
    with open(path, newline="") as fh:
        for line, r in enumerate(csv.DictReader(fh), 2):
            also = tuple(a.strip() for a in (r.get("also") or "").split(";") if a.strip())
            for name in (r["class"], *also):
                if name.rstrip("?") not in CLASSES:
                    raise SystemExit(f"{path}:{line}: class {name!r} is not one of {', '.join(CLASSES)}")
            reviews[r["image_id"]] = Review(r["class"], also, r.get("note") or "")
    return reviews


def class_table(rows: Sequence[Row], reviews: dict[str, Review], examples: int = 3) -> list[str]:
    """Markdown lines: how many listed images have each class as main finding, besides it, or
    possibly besides it; examples are main findings first."""
    seen = [reviews[r.image_id] for r in rows if r.image_id in reviews]
    ids = [r.image_id for r in rows if r.image_id in reviews]
    also = Counter(a for review in seen for a in review.also)
    lines = ["| class | main finding | also seen | possibly | examples |", "|---|---:|---:|---:|---|"]
    for name in CLASSES:
        main = [i for i, review in zip(ids, seen, strict=True) if review.main == name]
        besides = [i for i, review in zip(ids, seen, strict=True) if name in review.also]
        cited = ", ".join((main + besides)[:examples])
        lines.append(f"| {name} | {len(main)} | {also[name]} | {also[name + '?']} | {cited} |")
    missing = [r.image_id for r in rows if r.image_id not in reviews]
    if missing:
        lines.append(f"| {NOT_REVIEWED} | {len(missing)} | | | {', '.join(missing[:examples])} |")
    return lines


def write_csv(rows: Sequence[Row], path: Path, reviews: dict[str, Review] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["rank", "image_id", "region", "hardware", "probability", "class", "also", "note"])
        for rank, r in enumerate(rows, 1):
            seen = (reviews or {}).get(r.image_id)
            cells = [seen.main, ";".join(seen.also), seen.note] if seen else ["", "", ""]
            w.writerow([rank, r.image_id, r.region, int(r.hardware), f"{r.probability:.6f}", *cells])


def write_sheet(rows: Sequence[Row], folder: Path, root: Path, side: int = THUMB_SIDE) -> int:
    """One PNG per image, longer side ``side`` px, named by rank and id; returns how many were written.

    Thumbnails are for looking only: decoded as fracsight decodes any image (bone white, DICOM
    MONOCHROME1 already inverted), so they look as the model's input looks before resizing.
    """
    from PIL import Image

    from fracsight.io import RefusedInput, read_radiograph

    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for rank, r in enumerate(rows, 1):
        try:
            pixels = read_radiograph(root / r.path).pixels
        except (FileNotFoundError, RefusedInput) as error:
            print(f"rank {rank}: not readable ({type(error).__name__})", file=sys.stderr)
            continue
        image = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8))
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        image.save(folder / f"{rank:03d}_{r.image_id}.png")
        written += 1
    return written


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("run", type=Path, help="run folder with predictions_oof.csv (or the CSV itself)")
    add("--card", type=Path, default=default_card_path(), help="model card with the thresholds")
    add("--top", type=int, default=40, help="how many of the highest-scored to list")
    add("--csv", type=Path, help="where to write the top list (default: RUN/false_positives.csv)")
    add("--review", type=Path, help="a person's classes for images (image_id,class,also,note)")
    add("--sheet", type=Path, help="folder for PNG thumbnails of the top list")
    add("--side", type=int, default=THUMB_SIDE, help="thumbnails' longer side in pixels")
    add("--root", type=Path, default=ROOT, help="what the CSV's relative paths are relative to")
    args = parser.parse_args(argv)

    predictions = args.run if args.run.is_file() else args.run / "predictions_oof.csv"
    thresholds = ModelCard.read(args.card).thresholds
    negatives, dropped = read_negatives(predictions)
    print(f"{predictions}: {len(negatives)} non-fractured development rows ({dropped} test rows left out)")
    print(f"card {args.card}")
    print()
    print("\n".join(tables(negatives, thresholds)))

    listed = top(negatives, thresholds["doubt"], args.top)
    reviews = read_review(args.review) if args.review else {}
    out = args.csv or predictions.parent / "false_positives.csv"
    write_csv(listed, out, reviews)
    print()
    print(f"top {len(listed)} at or above 'doubt', highest first -> {out}")
    print()
    print("| rank | image_id | region | hardware | probability | category | class |")
    print("|---:|---|---|---:|---:|---|---|")
    for rank, r in enumerate(listed, 1):
        category = "fracture" if r.probability >= thresholds["fracture"] else "doubt"
        seen = reviews[r.image_id].main if r.image_id in reviews else NOT_REVIEWED
        cells = [rank, r.image_id, r.region, int(r.hardware), f"{r.probability:.3f}", category, seen]
        print("| " + " | ".join(map(str, cells)) + " |")
    if args.review:
        print()
        print(f"classes among the top {len(listed)} ({args.review})")
        print()
        print("\n".join(class_table(listed, reviews)))
    if args.sheet:
        written = write_sheet(listed, args.sheet, args.root, args.side)
        print(f"\n{written} thumbnails -> {args.sheet}")


if __name__ == "__main__":
    main()
