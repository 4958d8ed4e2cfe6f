"""Choosing thresholds for target rates, and writing them (or a temperature) into a model copy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fracsight.decide import categorise
from fracsight.evaluation.adapt import card_with_temperature, card_with_thresholds, write_model_copy
from fracsight.evaluation.calibration import fit_temperature, logits_from_probabilities
from fracsight.evaluation.metrics import binary_rates
from fracsight.evaluation.operating_points import (
    choose_thresholds,
    threshold_for_sensitivity,
    threshold_for_specificity,
)


def _scores(seed: int, n: int = 600, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-rng.normal(2.0 * y - 1.0, 1.2)))
    return (np.round(p, 2) if ties else p), y


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_threshold_is_the_highest_that_reaches_the_target(ties: bool, target: float) -> None:
    p, y = _scores(1, ties=ties)
    t = threshold_for_sensitivity(p, y, target)
    assert binary_rates(p, y, t).sensitivity.value >= target
    kept = np.unique(p[p >= t])  # kept[0]: the lowest score still called positive
    assert binary_rates(p, y, np.nextafter(kept[0], 1.0)).sensitivity.value < target
    lower = p[p < t]
    if lower.size:  # halfway between observed scores, never on one
        assert t == pytest.approx((kept[0] + lower.max()) / 2)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_specificity_threshold_is_the_lowest_that_reaches_the_target(ties: bool, target: float) -> None:
    p, y = _scores(2, ties=ties)
    t = threshold_for_specificity(p, y, target)
    assert binary_rates(p, y, t).specificity.value >= target
    below = np.unique(p[p < t])  # below[-1]: the highest score still called negative
    assert binary_rates(p, y, below[-1]).specificity.value < target
    higher = p[p >= t]
    if higher.size:
        assert t == pytest.approx((below[-1] + higher.min()) / 2)


def test_thresholds_chosen_on_rounded_scores_keep_every_case_on_its_side() -> None:
    """`fracsight predict` writes 4 decimals; a case whose score was rounded up must not fall
    below a threshold chosen on the rounded value once the model gives its exact score."""
    exact = np.array([0.9, 0.8, 0.69996, 0.6, 0.3, 0.2, 0.10004, 0.05, 0.6, 0.4])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    rounded = np.round(exact, 4)
    choice = choose_thresholds(rounded, y, target_sensitivity=0.75, target_specificity=0.5)
    for t in choice.thresholds().values():
        assert np.array_equal(exact >= t, rounded >= t)


def test_choose_thresholds_orders_the_operating_points_and_reports_cis() -> None:
    p, y = _scores(3)
    choice = choose_thresholds(p, y, target_sensitivity=0.95, target_specificity=0.9)
    assert not choice.collapsed
    assert choice.doubt.threshold <= choice.fracture.threshold
    sens = choice.doubt.achieved()
    spec = choice.fracture.achieved()
    assert sens.value >= 0.95 and spec.value >= 0.9
    assert sens.lower < sens.value <= sens.upper and spec.lower < spec.value <= spec.upper
    assert (choice.n, choice.n_positive) == (y.size, int(y.sum()))
    assert set(choice.to_dict()) >= {"doubt", "fracture", "n", "n_positive", "collapsed"}


def test_one_threshold_serves_both_targets_when_the_model_separates_well() -> None:
    p = np.r_[np.linspace(0.0, 0.4, 50), np.linspace(0.6, 1.0, 50)]
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    choice = choose_thresholds(p, y, 0.9, 0.9)
    assert choice.collapsed
    assert choice.doubt.threshold == choice.fracture.threshold
    assert choice.doubt.achieved().value >= 0.9 and choice.fracture.achieved().value >= 0.9


def test_targets_outside_the_unit_interval_are_refused() -> None:
    p, y = _scores(4)
    with pytest.raises(ValueError, match="target sensitivity"):
        choose_thresholds(p, y, 1.2, 0.9)


def _card() -> dict:
    return {
        "model_id": "m-1",
        "input_size": 64,
        "thresholds": {"fracture": 0.7, "doubt": 0.25},
        "temperature": 1.0,
        "threshold_source": "development data",
        "data": {},
        "metrics": {},
    }


def test_threshold_copy_records_where_the_thresholds_came_from(tmp_path) -> None:
    p, y = _scores(5)
    choice = choose_thresholds(p, y, 0.95, 0.9)
    model = tmp_path / "base.onnx"
    model.write_bytes(b"onnx bytes stand-in")  # copied byte for byte; content not interpreted here
    (tmp_path / "base.card.json").write_text(json.dumps(_card()))
    card = card_with_thresholds(_card(), choice, "site.csv", "2025-01-31")
    onnx_path, card_path = write_model_copy(model, tmp_path / "site" / "adapted.onnx", card)
    assert onnx_path.read_bytes() == model.read_bytes()
    written = json.loads(card_path.read_text())
    assert written["thresholds"] == choice.thresholds()
    assert "site.csv" in written["threshold_source"] and "2025-01-31" in written["threshold_source"]
    record = written["adaptations"][-1]
    assert record["n"] == y.size and record["previous_thresholds"] == _card()["thresholds"]
    assert (
        record["achieved"]["doubt_sensitivity"]["lower"] <= record["achieved"]["doubt_sensitivity"]["value"]
    )
    assert json.loads((tmp_path / "base.card.json").read_text()) == _card()  # original untouched
    with pytest.raises(ValueError, match="is the input model"):
        write_model_copy(model, model, card)


def test_temperature_copy_keeps_every_category() -> None:
    rng = np.random.default_rng(6)
    raw = rng.normal(0, 3, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-raw / 2.0))).astype(int)
    p_before = 1 / (1 + np.exp(-raw))  # the model's probabilities at temperature 1
    fit = fit_temperature(logits_from_probabilities(p_before, 1.0), y)
    card = card_with_temperature(_card(), fit, "validation.csv", "2025-02-01")
    p_after = 1 / (1 + np.exp(-raw / card["temperature"]))
    before = [categorise(v, _card()["thresholds"]) for v in p_before]
    after = [categorise(v, card["thresholds"]) for v in p_after]
    assert before == after
    assert card["temperature"] == pytest.approx(2.0, rel=0.15)
    assert card["adaptations"][-1]["previous_temperature"] == 1.0
