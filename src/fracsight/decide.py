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


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_card(model_path: str | Path) -> dict:
    """The model card beside ``NAME.onnx`` (``NAME.card.json``), checked for what inference needs."""
    path = Path(model_path).with_suffix(".card.json")
    if not path.exists():
        raise FileNotFoundError(f"{path}: model card missing; every model needs its card beside it")
    card = json.loads(path.read_text())
    if not isinstance(card, dict):
        raise ValueError(f"{path}: a model card is a JSON object, not {type(card).__name__}")
    for key in ("model_id", "input_size", "thresholds"):
        if key not in card:
            raise ValueError(f"{path}: model card lacks {key!r}")
    size = card["input_size"]
    if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        raise ValueError(f"{path}: input_size {size!r} must be a positive whole number of pixels")
    t = card["thresholds"]
    if not (isinstance(t, dict) and all(_is_number(t.get(k)) for k in ("doubt", "fracture"))):
        raise ValueError(f"{path}: thresholds {t!r} must give numbers for 'doubt' and 'fracture'")
    if not (0.0 <= t["doubt"] <= t["fracture"] <= 1.0):
        raise ValueError(f"{path}: thresholds {t} must satisfy 0 <= doubt <= fracture <= 1")
    card.setdefault("temperature", 1.0)
    if not (_is_number(card["temperature"]) and card["temperature"] > 0):
        raise ValueError(f"{path}: temperature {card['temperature']!r} must be a number > 0")
    return card
