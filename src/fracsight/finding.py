"""The result of analysing one radiograph: what travels from inference to every surface."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np


class Category(str, enum.Enum):
    """The three answers shown to a clinician, by the model's two operating points."""

    FRACTURE = "fracture"  # probability >= the high-specificity threshold
    DOUBT = "doubt"  # between the two thresholds: look again
    NO_FRACTURE = "no_fracture"  # below the high-sensitivity threshold


@dataclass(frozen=True)
class Letterbox:
    """Where the original image sits inside the square model input (for mapping back)."""

    size: int  # side of the square model input, px
    scale: float  # model px per original px
    pad_x: int  # left padding, model px
    pad_y: int  # top padding, model px
    height: int  # original image height, px
    width: int  # original image width, px

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        return x * self.scale + self.pad_x, y * self.scale + self.pad_y

    def to_image(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.pad_x) / self.scale, (y - self.pad_y) / self.scale


@dataclass(frozen=True)
class Finding:
    """Probability, category and heat map for one radiograph, with the model that produced them.

    ``heatmap`` is the model's map over the square model input (grid cells, values in
    [0, 1]); :meth:`heatmap_on_image` resamples it to the original image's pixels.
    """

    probability: float
    category: Category
    heatmap: np.ndarray
    letterbox: Letterbox
    model_id: str
    timings_ms: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability {self.probability!r} is outside [0, 1]")
        if self.heatmap.ndim != 2:
            raise ValueError(f"heatmap must be 2-D, got shape {self.heatmap.shape}")

    def heatmap_on_image(self) -> np.ndarray:
        """The heat map resampled to the original image (H x W, float32 in [0, 1])."""
        from fracsight.explain import heatmap_to_image

        return heatmap_to_image(self.heatmap, self.letterbox)

    def peak(self) -> tuple[float, float]:
        """(x, y) of the heat map's maximum, in original image pixels."""
        from fracsight.explain import heatmap_peak

        return heatmap_peak(self.heatmap, self.letterbox)
