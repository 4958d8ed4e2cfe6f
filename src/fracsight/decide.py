"""What an answer means: the one owner of fracsight's categories, operating points and the
study-level answer.

A category's word, its meaning for the reader, its rank in a worklist, its colour on every picture
and page, and its code in a DICOM structured report sit in one table (:data:`CATEGORIES`); the
CLI, the overlay pictures, the store, the web page and the DICOM results all read it, so no
surface ranks, names or colours an answer its own way. The model card supplies the thresholds;
:func:`categorise` turns a probability into a category with them, and :func:`study_answer` turns
the answers of a study's images into the study's.

Imports nothing of fracsight: everything above it (the model card, the heat-map pictures, the
Finding, the services) may use it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "CATEGORIES",
    "CODING_SCHEME",
    "Category",
    "CategoryInfo",
    "OperatingPoint",
    "OperatingPointName",
    "StudyAnswer",
    "categorise",
    "decide",
    "info",
    "rank",
    "study_answer",
    "vocabulary",
]

# The private DICOM coding scheme of fracsight's categories and operating points (private scheme
# designators start with 99, PS3.3 8.2); declared in every SR that uses it.
CODING_SCHEME = "99FRACSIGHT"


class Category(str, enum.Enum):
    """The answers shown to a clinician: three by the model's two operating points, and
    ``out_of_scope`` where the image is outside what the model knows (:mod:`fracsight.safety`)."""

    FRACTURE = "fracture"  # probability >= the high-specificity threshold
    DOUBT = "doubt"  # between the two thresholds: look again
    NO_FRACTURE = "no_fracture"  # below the high-sensitivity threshold
    OUT_OF_SCOPE = "out_of_scope"  # the image is outside what the model knows: not scored


class OperatingPointName(str, enum.Enum):
    """The model's named operating points (keys of the model card's ``thresholds``)."""

    FRACTURE = "fracture"  # high specificity: at or above it, "fracture"
    DOUBT = "doubt"  # high sensitivity: below it, "no fracture"


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold on the probability: a named one from a model card, or one a user asked for."""

    name: str
    threshold: float
    source: str = ""

    def __post_init__(self) -> None:
        if math.isnan(self.threshold) or not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"operating point {self.name!r}: threshold {self.threshold!r} is outside [0, 1]")


@dataclass(frozen=True)
class CategoryInfo:
    """Everything a surface needs to show one category."""

    category: Category
    rank: int  # worklist order: 0 is the most suspicious
    word: str  # as written on pictures and in captions
    meaning: str  # what it means for the reader, with the operating point it follows from
    colour: tuple[int, int, int]  # sRGB, on overlays, badges and outlines
    dicom_code: str  # code value in CODING_SCHEME
    dicom_meaning: str  # code meaning in an SR

    @property
    def colour_hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.colour)


CATEGORIES: dict[Category, CategoryInfo] = {
    c.category: c
    for c in (
        CategoryInfo(
            Category.FRACTURE, 0, "fracture",
            "at or above the model's high-specificity threshold: a fracture is likely",
            (230, 40, 40), "fracture", "Fracture likely",
        ),
        CategoryInfo(
            Category.DOUBT, 1, "doubt",
            "between the model's two thresholds: at or above its high-sensitivity threshold; look again",
            (245, 170, 20), "doubt", "Doubt: look again",
        ),
        CategoryInfo(
            Category.OUT_OF_SCOPE, 2, "outside what the model knows",
            "the image is unlike the radiographs the model was trained on (or of a body region it was "
            "not trained for): it is not scored; read it without the AI",
            (150, 120, 230), "out-of-scope", "Outside what the model knows: not scored",
        ),
        CategoryInfo(
            Category.NO_FRACTURE, 3, "no fracture",
            "below the model's high-sensitivity threshold: no fracture found by the model",
            (60, 170, 75), "no-fracture", "No fracture found by the model",
        ),
    )
}  # fmt: skip
# Where studies without an analysed image go in a worklist: after every category.
UNRANKED = len(CATEGORIES)


def info(category: Category | str) -> CategoryInfo:
    """The table entry of a category (given as the enum or its value)."""
    return CATEGORIES[Category(category)]


def rank(category: Category | str | None) -> int:
    """Worklist rank of a category value; anything else (refused, queued, None) ranks last."""
    try:
        return CATEGORIES[Category(category)].rank
    except ValueError:
        return UNRANKED


def categorise(probability: float, thresholds: Mapping[str, float]) -> Category:
    """``fracture`` at or above the high-specificity threshold, ``doubt`` at or above the
    high-sensitivity one, else ``no_fracture``."""
    if probability >= thresholds[OperatingPointName.FRACTURE.value]:
        return Category.FRACTURE
    if probability >= thresholds[OperatingPointName.DOUBT.value]:
        return Category.DOUBT
    return Category.NO_FRACTURE


def decide(probability: float, thresholds: Mapping[str, float], out_of_scope: bool = False) -> Category:
    """The category shown for one image: ``out_of_scope`` when the scope check flagged it (its
    probability is then not an answer), else :func:`categorise`."""
    return Category.OUT_OF_SCOPE if out_of_scope else categorise(probability, thresholds)


@dataclass(frozen=True)
class StudyAnswer:
    """A study's answer: the category and probability of its most suspicious analysed image."""

    category: Category
    probability: float
    images: int  # how many analysed images it is taken over


def study_answer(answers: Iterable[tuple[Category | str | None, float | None]]) -> StudyAnswer | None:
    """The study's answer from its images' (category, probability): the best-ranked category
    first, then the highest probability. Images without a category (refused, pending) do not
    count; None when no image was analysed."""
    analysed = [(Category(c), float(p or 0.0)) for c, p in answers if rank(c) < UNRANKED]
    if not analysed:
        return None
    category, probability = min(analysed, key=lambda a: (CATEGORIES[a[0]].rank, -a[1]))
    return StudyAnswer(category, probability, len(analysed))


def vocabulary() -> list[dict[str, object]]:
    """The table as JSON for pages and APIs, in rank order."""
    return [
        {
            "category": entry.category.value,
            "rank": entry.rank,
            "word": entry.word,
            "meaning": entry.meaning,
            "colour": entry.colour_hex,
        }
        for entry in sorted(CATEGORIES.values(), key=lambda c: c.rank)
    ]
