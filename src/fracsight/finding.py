"""The result of analysing one radiograph: what travels from inference to every surface.

Built by :mod:`fracsight.inference` from the model card's category (:mod:`fracsight.model_card`) and
the heat map's geometry (:mod:`fracsight.explain`, :mod:`fracsight.preprocess`); nothing below it
imports it, so it can carry methods that use them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fracsight.explain import heatmap_peak, heatmap_to_image
from fracsight.model_card import Category
from fracsight.preprocess import Letterbox


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
        return heatmap_to_image(self.heatmap, self.letterbox)

    def peak(self) -> tuple[float, float]:
        """(x, y) of the heat map's peak in original image pixels (:func:`fracsight.explain.heatmap_peak`),
        the point ``fracsight evaluate`` scores against expert boxes."""
        return heatmap_peak(self.heatmap, self.letterbox)
