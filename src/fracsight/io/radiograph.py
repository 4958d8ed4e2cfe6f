"""The one in-memory form of an input image, and the errors raised when refusing one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


class RefusedInput(ValueError):
    """An input that fracsight will not analyse; ``reason`` says why in words a user can act on,
    ``code`` says which kind of refusal in one stable word a program can act on."""

    code = "refused"

    def __init__(self, path: str, reason: str, code: str | None = None) -> None:
        self.path = str(path)
        self.reason = reason
        if code is not None:
            self.code = code
        super().__init__(f"{path}: {reason}")


class UnreadableImage(RefusedInput):
    """The file is empty, truncated, corrupt, too large or in a format we cannot decode."""

    code = "unreadable"


class NotARadiograph(RefusedInput):
    """The file decodes but is not a single-frame projection radiograph (CT, MR, photo, cine...)."""

    code = "not_a_radiograph"


@dataclass(frozen=True)
class Radiograph:
    """A decoded radiograph in the one intensity convention used everywhere downstream.

    ``pixels`` is a 2-D float32 array in [0, 1] where higher means brighter on a
    conventional display (bone and metal white, air black): MONOCHROME1 is already
    inverted and DICOM Modality/VOI LUTs are already applied.
    ``metadata`` holds non-identifying facts only (format, modality, bits stored, ...),
    safe to log. ``dicom`` keeps the DICOM header (no pixel data) for building results.
    ``model_base``: set only by a reader asked to reduce the image (:mod:`fracsight.io.reduced`),
    the first steps of the model's preprocessing already done on the full image.
    """

    pixels: np.ndarray
    source: str
    format: str
    metadata: dict[str, Any] = field(default_factory=dict)
    dicom: Any = None
    model_base: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))
