"""One reader and checker of model cards: every command refuses a broken card the same way, naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fracsight.model_card import (
    DEFAULT_MODEL,
    Category,
    ModelCard,
    ModelCardError,
    card_path,
    categorise,
    default_card_path,
)
from fracsight.reader_study import load_ai_predictions

GOOD = {"model_id": "m-1", "input_size": 384, "thresholds": {"doubt": 0.2, "fracture": 0.6}}


def test_path_rule_and_shipped_card() -> None:
    assert card_path("a/b/site.onnx") == Path("a/b/site.card.json")
    assert default_card_path() == card_path(DEFAULT_MODEL)
    card = ModelCard.for_model()
    assert card.path == default_card_path() and card.input_size == 384
    assert card.model_id.startswith("default-") and card.onnx_sha256 is not None
    assert card.onnx_sha256[:12] == card.model_id.rsplit("-", 1)[-1]  # the id names the weights
    assert card["thresholds"] == card.thresholds and card.get("nothing") is None


def test_categories_follow_the_two_thresholds() -> None:
    card = ModelCard(GOOD)
    assert [card.categorise(p) for p in (0.1, 0.2, 0.59, 0.6)] == [
        Category.NO_FRACTURE,
        Category.DOUBT,
        Category.DOUBT,
        Category.FRACTURE,
    ]
    assert categorise(0.6, card.thresholds) is Category.FRACTURE


def test_card_is_read_only() -> None:
    card = ModelCard(GOOD)
    card["thresholds"]["doubt"] = 0.9  # a copy: the checked card cannot be changed behind its back
    assert card.thresholds["doubt"] == 0.2
    assert card.to_dict() == GOOD and card.temperature == 1.0 and card.version is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"bad\.card\.json: not valid JSON \(line 1, column 2"),
        ("[1, 2]", r"bad\.card\.json: a model card is a JSON object, not list"),
        (json.dumps({**GOOD, "thresholds": {"doubt": 0.2, "fracture": 1.5}}), r"bad\.card\.json: thresholds"),
        (json.dumps({**GOOD, "thresholds": {"doubt": 0.2, "fracture": 0.6, "x": "y"}}), r"bad\.card\.json"),
        (json.dumps({"thresholds": GOOD["thresholds"]}), r"bad\.card\.json: model card lacks 'model_id'"),
    ],
)
def test_broken_cards_are_refused_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.card.json"
    path.write_text(text)
    with pytest.raises(ModelCardError, match=message):
        ModelCard.read(path)


def test_missing_card_and_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.card\.json: model card missing"):
        ModelCard.for_model(tmp_path / "nowhere.onnx")
    with pytest.raises(FileNotFoundError, match="is a folder"):
        ModelCard.read(tmp_path)


def test_reader_study_refuses_a_broken_card_naming_it(tmp_path: Path) -> None:
    ai = tmp_path / "ai.csv"
    ai.write_text("case_id,probability\nc1,0.5\n")
    broken = tmp_path / "model.card.json"
    broken.write_text("{")
    with pytest.raises(ModelCardError, match=r"model\.card\.json: not valid JSON"):
        load_ai_predictions(ai, ("c1",), card=broken)
