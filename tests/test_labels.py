"""One rule for fracture labels: the same manifest passes (or fails) train, evaluate and audit alike."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from fracsight.data import audit
from fracsight.data.labels import ACCEPTED_LABELS, parse_label
from fracsight.evaluation.datasets import load_dataset
from fracsight.training import examples

FRACTURED = ["1", "1.0", "true", "TRUE", "yes", "Fractured", "fracture", "positive", " Positive "]
NOT_FRACTURED = ["0", "0.0", "false", "No", "non_fractured", "Not_Fractured", "no_fracture", "negative"]
REFUSED = ["", " ", "2", "-1", "0.5", "1.00", "01", "maybe", "y", "n", "fractured?", "nan", "non-fractured"]


@pytest.mark.parametrize("text", FRACTURED)
def test_fractured_spellings(text: str) -> None:
    assert parse_label(text) == 1


@pytest.mark.parametrize("text", NOT_FRACTURED)
def test_not_fractured_spellings(text: str) -> None:
    assert parse_label(text) == 0


@pytest.mark.parametrize("text", REFUSED)
def test_other_text_is_no_label(text: str) -> None:
    assert parse_label(text) is None


def test_accepted_spellings_are_listed_for_messages() -> None:
    for spelling in ("1.0", "true", "yes", "fractured", "non_fractured", "not_fractured", "negative"):
        assert spelling in ACCEPTED_LABELS


# ---------------------------------------------------------------------------------------------
# The same manifest through every command's reader


def _evaluate(path: Path) -> list[int]:
    return load_dataset(path).labels.fractured.tolist()


def _audit(path: Path) -> list[int]:
    return [int(record.label) for record in audit.records_from_manifest(path)]


def _train(path: Path) -> list[int]:
    return [example.label for example in examples.load_examples(path)]


READERS: dict[str, Callable[[Path], list[int]]] = {"evaluate": _evaluate, "audit": _audit, "train": _train}


def _manifest(folder: Path, images: list[Path], labels: list[str]) -> Path:
    """A ``path,label`` manifest of copies of the bundled JPEGs, as every command reads it."""
    lines = ["path,label"]
    for k, label in enumerate(labels):
        name = f"case{k}.jpg"
        shutil.copyfile(images[k], folder / name)
        lines.append(f"{name},{label}")
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("command", READERS)
def test_every_command_reads_the_same_labels(command: str, tmp_path: Path, sample_images: list[Path]) -> None:
    jpegs = [p for p in sample_images if p.suffix == ".jpg"]
    manifest = _manifest(tmp_path, jpegs, ["Fractured", "1.0", "non_fractured", "0", "Yes"])
    assert READERS[command](manifest) == [1, 1, 0, 0, 1]


@pytest.mark.parametrize("bad", ["2", "maybe"])
@pytest.mark.parametrize("command", READERS)
def test_every_command_refuses_the_same_labels(
    command: str, bad: str, tmp_path: Path, sample_images: list[Path]
) -> None:
    jpegs = [p for p in sample_images if p.suffix == ".jpg"]
    manifest = _manifest(tmp_path, jpegs, ["1", "0", bad])
    with pytest.raises(ValueError) as caught:
        READERS[command](manifest)
    message = str(caught.value)
    assert manifest.name in message and "'label'" in message and f"'{bad}'" in message
    assert "line 4" in message  # the header is line 1
    assert ACCEPTED_LABELS in message
