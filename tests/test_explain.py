"""``fracsight.explain``: the heat map's outline around its peak (what the DICOM presentation state draws)."""

from __future__ import annotations

import numpy as np

from fracsight.explain import heatmap_outline
from fracsight.preprocess import letterbox_geometry


def test_outline_follows_the_hot_cells_around_the_peak() -> None:
    """The presentation state's outline: hot cells 4-connected to the peak, traced along cell edges,
    in image pixels; a separate hot spot is left out."""
    heat = np.zeros((8, 8), dtype=np.float32)
    heat[2:4, 3:6] = 0.6  # a 3 x 2 block of cells around the peak
    heat[3, 4] = 0.9
    heat[4, 4] = 0.5  # a cell hanging below it: at half the peak or more
    heat[7, 0] = 0.8  # elsewhere, not connected
    box = letterbox_geometry(160, 160, 16)  # square image, 2 px cells, no padding, scale 0.1
    points = heatmap_outline(heat, box)
    cell = 2 / box.scale  # one cell in image pixels
    corners = [(x / cell, y / cell) for x, y in points]
    assert corners[0] == corners[-1]
    assert sorted(set(corners)) == sorted({(3, 2), (6, 2), (6, 4), (5, 4), (5, 5), (4, 5), (4, 4), (3, 4)})
    assert all(0 <= v <= 160 for point in points for v in point)
