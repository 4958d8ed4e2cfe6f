"""The out-of-scope check (fracsight.safety): the fitted distance, body parts, the card section,
and the shipped model's answers on the bundled samples and on real out-of-scope images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fracsight.decide import Category
from fracsight.model_card import ModelCard, ModelCardError
from fracsight.safety import ScopeCheck, check_scope, fit_scope

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REGIONS = {"hand": 0.9, "leg": 0.05, "hip": 0.01, "shoulder": 0.02}


def _cloud(n: int, seed: int) -> np.ndarray:
    """Non-negative 'features' on a low-dimensional structure, like pooled activations."""
    basis = np.random.default_rng(100).normal(size=(5, 64))  # one kind of image: the same structure
    rng = np.random.default_rng(seed)
    return np.maximum(rng.normal(size=(n, 5)) @ basis + rng.normal(scale=0.1, size=(n, 64)) + 3, 0) ** 2


def test_fit_flags_what_lies_off_the_development_cloud() -> None:
    inside = _cloud(600, 0)
    check, oof = fit_scope(inside, np.arange(600) % 5, k=5, quantile=0.975)
    assert check.threshold == pytest.approx(np.quantile(oof, 0.975))
    assert 0.01 <= float(np.mean(oof > check.threshold)) <= 0.04  # the quantile, out of fold
    fresh = _cloud(400, 1)  # the same kind of image, not seen by the fit
    assert float(np.mean(check.scores(fresh) > check.threshold)) < 0.08
    rng = np.random.default_rng(2)
    other = np.maximum(rng.normal(size=(50, 64)) * 3 + 3, 0) ** 2  # another kind of image altogether
    assert float(np.mean(check.scores(other) > check.threshold)) > 0.95
    # One image at a time gives what the batch gives.
    assert check.score(other[0]) == pytest.approx(check.scores(other[:1])[0])


def test_card_section_round_trip_and_a_broken_one_is_refused() -> None:
    check, _ = fit_scope(_cloud(200, 3), np.arange(200) % 4, k=4, fitted_on="synthetic")
    again = ScopeCheck.from_card(json.loads(json.dumps(check.to_card())))
    probe = _cloud(5, 4)
    assert np.allclose(again.scores(probe), check.scores(probe), rtol=1e-4)
    assert again.threshold == check.threshold and again.fitted_on == "synthetic"
    card = dict(ModelCard.for_model().to_dict())
    card["out_of_scope"] = {**check.to_card(), "k": 7}  # more components than the arrays hold
    with pytest.raises(ModelCardError, match="out_of_scope"):
        ModelCard(card, "broken.card.json")


@pytest.mark.parametrize(
    ("part", "flagged", "noted"),
    [
        (None, False, False),
        ("HAND", False, False),
        ("CHEST", True, False),
        ("lspine", True, False),
        ("HIP", False, True),  # the header says hip, the image is a confident hand
        ("PELVIS", True, False),  # pelvis without the hip in view
        ("ELBOW", False, False),  # trained region not mapped: neither flagged nor compared
    ],
)
def test_body_part_examined(part: str | None, flagged: bool, noted: bool) -> None:
    scope = check_scope(None, None, REGIONS, part)
    assert scope.out_of_scope is flagged and (scope.note is not None) is noted
    assert scope.region == "hand"
    if flagged:
        assert part.upper() in scope.reason and "hand, leg, hip, shoulder" in scope.reason


def test_shipped_card_carries_a_fitted_check() -> None:
    card = ModelCard.for_model()
    check = card.scope_check
    assert check is not None and check.components.shape[1] == 1280
    assert "development split" in check.fitted_on  # says what it was fitted on
    rates = check.rates["in_scope"]
    assert rates["false_flag_rate"]["value"] <= 0.05 and "held-out" in rates["data"]


def test_the_dog_is_out_of_scope_and_the_fracatlas_samples_keep_their_answers(
    default_analyser, sample_images: list[Path]
) -> None:
    outcomes = {p.name: default_analyser.outcome(p) for p in sample_images}
    dog = outcomes.pop("hd_dx_image.dcm")
    assert dog.category == Category.OUT_OF_SCOPE and dog.scope.out_of_scope
    assert "unlike the radiographs" in dog.scope.reason
    assert 0.0 <= dog.probability <= 1.0  # kept, for research
    for name, finding in outcomes.items():
        assert finding.category != Category.OUT_OF_SCOPE, name
        assert finding.scope.score < default_analyser.scope_check.threshold


@pytest.mark.skipif(not (SHARED / "out-of-scope").is_dir(), reason="needs ../shared/data/out-of-scope")
def test_chest_radiographs_are_flagged(default_analyser) -> None:
    """A few real adult and paediatric chests (the measured rates over all of them are in the card)."""
    for folder in ("chest-adult", "chest-paediatric"):
        files = sorted((SHARED / "out-of-scope" / "images" / folder).glob("*"))[:8]
        answers = [default_analyser.outcome(p).category for p in files]
        assert sum(a == Category.OUT_OF_SCOPE for a in answers) >= 7, (folder, answers)
