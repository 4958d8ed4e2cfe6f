"""From probability to the answer shown to a clinician, by the model's two operating points."""

from __future__ import annotations

import json
from pathlib import Path

from fracsight.finding import Category


def categorise(probability: float, thresholds: dict[str, float]) -> Category:
    """``fracture`` at or above the high-specificity threshold, ``doubt`` at or above the
    high-sensitivity one, else ``no_fracture``."""
    if probability >= thresholds["fracture"]:
        return Category.FRACTURE
    if probability >= thresholds["doubt"]:
        return Category.DOUBT
    return Category.NO_FRACTURE


def load_card(model_path: str | Path) -> dict:
    """The model card beside ``NAME.onnx`` (``NAME.card.json``), checked for what inference needs."""
    path = Path(model_path).with_suffix(".card.json")
    if not path.exists():
        raise FileNotFoundError(f"{path}: model card missing; every model needs its card beside it")
    card = json.loads(path.read_text())
    for key in ("model_id", "input_size", "thresholds"):
        if key not in card:
            raise ValueError(f"{path}: model card lacks {key!r}")
    t = card["thresholds"]
    if not (0.0 <= t.get("doubt", -1) <= t.get("fracture", -1) <= 1.0):
        raise ValueError(f"{path}: thresholds {t} must satisfy 0 <= doubt <= fracture <= 1")
    card.setdefault("temperature", 1.0)
    if card["temperature"] <= 0:
        raise ValueError(f"{path}: temperature {card['temperature']} must be > 0")
    return card
