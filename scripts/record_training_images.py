"""Record in a model card which images the model was trained on, for a model trained before cards did.

Run once for the shipped model v2 (trained on compact copies of the FracAtlas images whose
manifest did not yet carry the originals' hashes): the 'dev' rows of its run's split.csv are the
images every fold and the final model were trained on, and their ORIGINAL files are hashed here,
since those are what a user evaluates. New cards get this record from ``fracsight train``.

    python scripts/record_training_images.py ../shared/data/fracatlas training/default-run/split.csv \\
        src/fracsight/models/default.card.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fracsight.data.image_hashes import DIGEST_CHARS, image_digests
from fracsight.data.split_file import split_ids
from fracsight.model_card import TrainingImages
from fracsight.training.card import record_training_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fracatlas", type=Path, help="the FracAtlas folder the run's images came from")
    parser.add_argument("split_file", type=Path, help="the run's split.csv")
    parser.add_argument("card", type=Path, help="the model card to record them in (NAME.card.json)")
    args = parser.parse_args()
    files = {p.stem: p for p in (args.fracatlas / "images").glob("*/*.jpg")}
    dev = sorted(split_ids(args.split_file, "dev"))
    missing = [i for i in dev if i not in files]
    if missing:
        raise SystemExit(
            f"{len(missing)} development images are not in {args.fracatlas} (first: {missing[:5]})"
        )
    digests = [image_digests(files[i]) for i in dev]
    images = TrainingImages.of(
        f"the {len(dev)} development images of FracAtlas: the 'dev' rows of {args.split_file} (its "
        f"'test' rows are held out: --split-file {args.split_file} --split test)",
        [d.file[:DIGEST_CHARS] for d in digests],
        [d.pixels[:DIGEST_CHARS] if d.pixels else None for d in digests],
    )
    record_training_images(args.card, images)
    refused = sum(d.pixels is None for d in digests)
    print(
        f"{args.card}: {images.n} training images recorded: {len(images.files)} distinct file hashes "
        f"(identical files share one), {len(images.pixels)} distinct pixel hashes ({refused} files "
        "fracsight.io refuses have none)"
    )


if __name__ == "__main__":
    main()
