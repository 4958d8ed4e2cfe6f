"""The training-data guard: which of the given cases the model was trained on.

A model scores the images it learnt from far better than new ones (model v2: ROC AUC 0.974 on
all of FracAtlas, 0.908 on its held-out split), so a figure measured on them is no test.
The model card records the training images by content hash (:class:`fracsight.model_card.TrainingImages`);
``evaluate``, ``thresholds`` and ``calibrate`` hash each case's image file the same way before any
model runs, say how many match, and refuse to go on unless told ``--include-training-images``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from fracsight.data.image_hashes import file_sha256, image_digests
from fracsight.model_card import ModelCard, TrainingImages

__all__ = ["TrainingImagesError", "TrainingOverlap", "check_training_overlap", "find_training_images"]

INCLUDE_OPTION = "--include-training-images"


class TrainingImagesError(ValueError):
    """Cases the model was trained on were given as if they were a test."""


@dataclass(frozen=True)
class TrainingOverlap:
    """How many of the cases are the model's training images, and which."""

    model_id: str
    description: str  # the card's words for the training images
    n_cases: int
    trained_on: tuple[str, ...]  # ids of the cases the model was trained on
    n_unchecked: int  # cases with no image file to hash

    @property
    def n(self) -> int:
        return len(self.trained_on)

    def summary(self) -> str:
        """One line: how many of the cases the model was trained on, and how that was found."""
        text = (
            f"{self.n} of the {self.n_cases} cases are images model {self.model_id} was trained on "
            "(same file or same pixels as one of its training images)"
        )
        if self.n_unchecked:
            text += f"; {self.n_unchecked} could not be checked (no image file)"
        return text

    def caution(self) -> str:
        """The label every figure on these cases carries."""
        return (
            f"includes {self.n} of the {self.n_cases} cases the model was trained on: not a test, "
            "figures overstate how it does on new images"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "n_trained_on": self.n,
            "n_cases": self.n_cases,
            "n_unchecked": self.n_unchecked,
            "training_images": self.description,
            "ids": list(self.trained_on),
        }


def _is_training_image(images: TrainingImages, path: str) -> bool:
    file = file_sha256(path)
    if images.includes(file, None):
        return True
    return images.includes(file, image_digests(path, file=file).pixels)  # a lossless copy?


def find_training_images(
    card: ModelCard, ids: Sequence[str], images: Sequence[str | None] | None
) -> TrainingOverlap | None:
    """Which cases (``ids``, with their image files) the model was trained on; None when the card
    does not record its training images. Files are hashed in threads (hashing and decoding release
    the GIL); a file that cannot be read is no training image as far as this check can tell."""
    recorded = card.training_images
    if recorded is None:
        return None
    paths = list(images) if images is not None else [None] * len(ids)
    checkable = [(case, path) for case, path in zip(ids, paths, strict=True) if path and Path(path).is_file()]

    def trained(path: str) -> bool:
        try:
            return _is_training_image(recorded, path)
        except OSError:
            return False

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        found = list(pool.map(trained, [path for _, path in checkable]))
    return TrainingOverlap(
        model_id=card.model_id,
        description=recorded.description,
        n_cases=len(ids),
        trained_on=tuple(case for (case, _), hit in zip(checkable, found, strict=True) if hit),
        n_unchecked=len(ids) - len(checkable),
    )


def check_training_overlap(overlap: TrainingOverlap | None, include: bool) -> None:
    """Refuse cases the model was trained on unless ``include`` (``--include-training-images``)."""
    if overlap is None or not overlap.n or include:
        return
    raise TrainingImagesError(
        f"{overlap.summary()}: figures on them would not be a test. The card says it was trained on "
        f"{overlap.description}. Give cases it was not trained on, or pass {INCLUDE_OPTION} to report "
        "them anyway, every figure labelled as including training images"
    )
