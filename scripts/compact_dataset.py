"""Make a compact training copy of a FracAtlas folder: a manifest plus small grayscale JPEGs.

Why: a GPU machine reached over a small file transfer (or a laptop) does not need the
full-size images when training runs at 384 px. Images are stored as displayed (EXIF
orientation applied), downscaled to ``--side`` px on the longer side, and boxes are scaled
to match. Duplicate groups are computed on the ORIGINAL images and written to the
manifest's ``group`` column, so training splits exactly as ``fracsight audit`` groups.

    python scripts/compact_dataset.py ../shared/data/fracatlas cache/fracatlas384 --side 384
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from PIL import Image, ImageFile, ImageOps

from fracsight.data.duplicates import group_images
from fracsight.training.examples import load_examples, write_manifest


def _load(path: str) -> Image.Image:
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # FracAtlas has truncated files; keep what decodes
    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("L")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("dest")
    parser.add_argument("--side", type=int, default=384)
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    dest = Path(args.dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    examples = load_examples(args.source)
    groups = group_images([e.path for e in examples])
    out = []
    for ex, group in zip(examples, groups, strict=True):
        image = _load(ex.path)
        scale = min(1.0, args.side / max(image.size))
        if scale < 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        target = dest / "images" / f"{ex.image_id}.jpg"
        image.save(target, quality=args.quality)
        boxes = tuple(tuple(v * scale for v in b) for b in ex.boxes)
        out.append(dataclasses.replace(ex, path=str(target), boxes=boxes, group=f"g{group}"))
    write_manifest(out, dest / "manifest.csv", relative_to=dest)
    total = sum(p.stat().st_size for p in (dest / "images").iterdir())
    print(f"{len(out)} images, {total / 1e6:.1f} MB, {len(set(groups))} groups -> {dest / 'manifest.csv'}")


if __name__ == "__main__":
    main()
