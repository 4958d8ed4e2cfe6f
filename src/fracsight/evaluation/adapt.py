"""Writing a site-adapted COPY of a model: same network, new thresholds or temperature in its card.

The original model is never modified. The copy's card keeps the original ``model_id``
(the weights are identical) and records each adaptation in ``adaptations``: what was
changed, from which data (file, n, fractured), on which date, for what target and with
what result (with its CI), and the values it replaced.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fracsight._version import __version__
from fracsight.evaluation.calibration import TemperatureFit
from fracsight.evaluation.operating_points import ThresholdChoice
from fracsight.model_card import ModelCard, card_path

__all__ = ["write_model_copy", "card_with_thresholds", "card_with_temperature"]


def write_model_copy(
    model_path: str | Path, out_path: str | Path, card: Mapping[str, Any]
) -> tuple[Path, Path]:
    """Copy ``NAME.onnx`` to ``OUT.onnx``, write ``card`` as ``OUT.card.json``; never overwrite the source.

    The card is checked as every command checks it before anything is written.
    """
    source, target = Path(model_path), Path(out_path)
    if target.suffix.lower() != ".onnx":
        raise ValueError(f"output model {target} must end in .onnx (its card is written beside it)")
    if not source.is_file():
        raise FileNotFoundError(f"model {source} does not exist")
    if target.exists() and target.resolve() == source.resolve():
        raise ValueError(f"output model {target} is the input model: write the adapted copy to a new path")
    target_card = card_path(target)
    checked = ModelCard(card, target_card)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    target_card.write_text(json.dumps(checked.to_dict(), indent=2) + "\n")
    return target, target_card


def _estimate(e) -> dict:
    return e.to_dict()


def card_with_thresholds(
    card: Mapping[str, Any],
    choice: ThresholdChoice,
    data: str,
    date: str,
    data_description: str | None = None,
) -> dict[str, Any]:
    """A new card with the chosen thresholds and a record of where they came from."""
    new = copy.deepcopy(dict(card))
    previous = dict(card.get("thresholds", {}))
    new["thresholds"] = choice.thresholds()
    doubt, fracture = choice.doubt, choice.fracture
    sens, spec = doubt.achieved(), fracture.achieved()
    new["threshold_source"] = (
        f"chosen by fracsight thresholds on {data_description or data} (n={choice.n}, {choice.n_positive} "
        f"fractured) on {date}: 'doubt' for sensitivity >= {doubt.target} (achieved {sens.value:.3f}, 95% CI "
        f"{sens.lower:.3f}-{sens.upper:.3f}), 'fracture' for specificity >= {fracture.target} (achieved "
        f"{spec.value:.3f}, 95% CI {spec.lower:.3f}-{spec.upper:.3f}); measured on the same cases, so "
        "confirm on independent data"
    )
    new["threshold_choice"] = choice.to_dict()
    new.setdefault("adaptations", []).append(
        {
            "kind": "thresholds",
            "tool": f"fracsight thresholds {__version__}",
            "date": date,
            "data": data,
            "n": choice.n,
            "n_positive": choice.n_positive,
            "targets": {"sensitivity": doubt.target, "specificity": fracture.target},
            "achieved": {"doubt_sensitivity": _estimate(sens), "fracture_specificity": _estimate(spec)},
            "single_threshold": choice.collapsed,
            "previous_thresholds": previous,
            "new_thresholds": choice.thresholds(),
        }
    )
    return new


def _moved_threshold(value: float, previous_t: float, temperature: float) -> float:
    """The threshold at ``temperature`` that cuts at the same raw logit as ``value`` did at ``previous_t``.

    Not clipped like probabilities from a file: 0 and 1 cut at -inf and +inf and stay 0 and 1 at any
    temperature, and a clipped 0 would move above the probability of the lowest images.
    """
    if value <= 0.0 or value >= 1.0:
        return value
    z = previous_t * (math.log(value) - math.log1p(-value)) / temperature
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))  # no overflow


def card_with_temperature(
    card: Mapping[str, Any],
    fit: TemperatureFit,
    data: str,
    date: str,
    calibration: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A new card with the fitted temperature; thresholds are moved so that every category stays the same.

    A threshold t at temperature T0 corresponds to the raw logit T0 * logit(t); at the new
    temperature T the same logit gives probability sigmoid(T0 * logit(t) / T). Without this,
    recalibrating would silently move both operating points.
    """
    new = copy.deepcopy(dict(card))
    previous_t = float(card.get("temperature", 1.0))
    previous_thresholds = dict(card.get("thresholds", {}))
    moved = {
        name: _moved_threshold(float(value), previous_t, fit.temperature)
        for name, value in previous_thresholds.items()
    }
    new["temperature"] = fit.temperature
    new["thresholds"] = moved
    new.setdefault("adaptations", []).append(
        {
            "kind": "temperature",
            "tool": f"fracsight calibrate {__version__}",
            "date": date,
            "data": data,
            **fit.to_dict(),
            "calibration": calibration,
            "previous_thresholds": previous_thresholds,
            "new_thresholds": moved,
            "thresholds_note": "thresholds moved to the same raw logits: every image keeps its category",
        }
    )
    return new
