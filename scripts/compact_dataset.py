"""Make a compact training copy of a FracAtlas folder: a manifest plus small grayscale JPEGs.

Why: a GPU machine reached over a small file transfer (or a laptop) does not need the
full-size images when training runs at 384 px. Images are read by fracsight.io as every command
reads them (as displayed: EXIF orientation applied; a truncated JPEG with under 90% of its rows is
refused and left out, as training on the originals would leave it out), downscaled to ``--side``
px on the longer side, and boxes are scaled to match. Duplicate groups are computed on the
ORIGINAL images and written to the manifest's ``group`` column, so training splits exactly as
``fracsight audit`` groups; the original files' content hashes go to ``original_sha256`` and
``original_pixel_sha256``, so the model card names the images the user has, not these copies.

    python scripts/compact_dataset.py ../shared/data/fracatlas cache/fracatlas384 --side 384
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from fracsight.data.duplicates import group_images
from fracsight.data.image_hashes import DIGEST_CHARS, file_sha256, pixel_sha256
from fracsight.io import RefusedInput, read_radiograph
from fracsight.training.examples import load_examples, write_manifest


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
        try:
            pixels = read_radiograph(ex.path).pixels
        except RefusedInput as exc:
            print(f"left out {ex.path}: {exc.reason}", file=sys.stderr)
            continue
        image = Image.fromarray(np.rint(pixels * 255.0).astype(np.uint8), mode="L")
        scale = min(1.0, args.side / max(image.size))
        if scale < 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        target = dest / "images" / f"{ex.image_id}.jpg"
        image.save(target, quality=args.quality)
        boxes = tuple(tuple(v * scale for v in b) for b in ex.boxes)
        out.append(
            dataclasses.replace(
                ex,
                path=str(target),
                boxes=boxes,
                group=f"g{group}",
                original_sha256=file_sha256(ex.path)[:DIGEST_CHARS],
                original_pixel_sha256=pixel_sha256(pixels)[:DIGEST_CHARS],
            )
        )
    write_manifest(out, dest / "manifest.csv", relative_to=dest)
    total = sum(p.stat().st_size for p in (dest / "images").iterdir())
    print(f"{len(out)} images, {total / 1e6:.1f} MB, {len(set(groups))} groups -> {dest / 'manifest.csv'}")


if __name__ == "__main__":
    main()
