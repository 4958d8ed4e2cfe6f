"""The model card: one model's identity, input size, operating points and temperature, and the
category its operating points give a probability.

Every model is an ONNX file ``NAME.onnx`` with its card ``NAME.card.json`` beside it (the one
path rule: :func:`card_path`). :class:`ModelCard` is the one reader and checker of that file:
inference, evaluation, site adaptation and reader studies all take their thresholds from it, so a
card one command accepts, every command accepts, and every refusal names the file.

Written by ``fracsight train`` (:mod:`fracsight.training.card`) and, for site-adapted copies, by
:mod:`fracsight.evaluation.adapt`. Imports only :mod:`fracsight.decide` (the categories and how
thresholds give them) and :mod:`fracsight.safety` (the out-of-scope check it carries): it sits below
the inference core.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from fracsight.decide import Category, categorise
from fracsight.safety import ScopeCheck

__all__ = [
    "DEFAULT_MODEL",
    "ModelCard",
    "ModelCardError",
    "ModelIdentity",
    "TrainingImages",
    "card_path",
    "default_card_path",
]

# The model shipped in the package; ``fracsight`` uses it when no model is named.
DEFAULT_MODEL = Path(__file__).parent / "models" / "default.onnx"
CARD_SUFFIX = ".card.json"


@dataclass(frozen=True)
class ModelIdentity:
    """Which model gave an answer, as every output records it: a result that leaves its folder
    can still be traced to the exact ONNX file (``onnx_sha256``) and its operating points."""

    model_id: str
    version: str | None
    onnx_sha256: str | None
    thresholds: Mapping[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.model_id,
            "version": self.version,
            "onnx_sha256": self.onnx_sha256,
            "thresholds": dict(self.thresholds),
        }


class ModelCardError(ValueError):
    """A model card that cannot be read or lacks what fracsight needs; the message names the file."""


def card_path(model_path: str | Path) -> Path:
    """``NAME.onnx`` -> ``NAME.card.json``: where every model's card lives."""
    return Path(model_path).with_suffix(CARD_SUFFIX)


def default_card_path() -> Path:
    """The shipped model's card."""
    return card_path(DEFAULT_MODEL)


_HEX_DIGESTS = re.compile(r"^([0-9a-f]{8,64}( [0-9a-f]{8,64})*)?$")


@dataclass(frozen=True)
class TrainingImages:
    """The images a model was trained on, by content hash (:mod:`fracsight.data.image_hashes`): the
    first digits of each file's SHA-256 and of its pixels' SHA-256. Kept in the card as
    ``training_images``, each set as one space-separated string so the card stays compact."""

    description: str  # which images, from which data
    n: int
    files: frozenset[str]
    pixels: frozenset[str]

    @classmethod
    def of(cls, description: str, files: Iterable[str], pixels: Iterable[str | None]) -> TrainingImages:
        files = list(files)
        return cls(description, len(files), frozenset(files), frozenset(p for p in pixels if p))

    def record(self) -> dict[str, Any]:
        """The card's ``training_images`` entry."""
        return {
            "description": self.description,
            "n": self.n,
            "hashes": "first hex digits of SHA-256: 'files' of each file's bytes, 'pixels' of its pixels "
            "as fracsight.io reads them (shape, float32 values); see fracsight.data.image_hashes",
            "files": " ".join(sorted(self.files)),
            "pixels": " ".join(sorted(self.pixels)),
        }

    def includes(self, file_sha256: str, pixel_sha256: str | None) -> bool:
        """Whether an image with these SHA-256 hex digests (full, or as long as the card's) is one of them."""
        k = len(next(iter(self.files), ""))
        return file_sha256[:k] in self.files or (pixel_sha256 is not None and pixel_sha256[:k] in self.pixels)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(card: Mapping[str, Any], where: str) -> None:
    """Refuse what no command can use: every check names ``where`` (the card's file)."""
    if "model_id" not in card:
        raise ModelCardError(f"{where}: model card lacks 'model_id'")
    t = card.get("thresholds")
    if t is None:
        raise ModelCardError(f"{where}: model card lacks 'thresholds'")
    if not (isinstance(t, dict) and all(_is_number(t.get(k)) for k in ("doubt", "fracture"))):
        raise ModelCardError(f"{where}: thresholds {t!r} must give numbers for 'doubt' and 'fracture'")
    odd = {name: value for name, value in t.items() if not (_is_number(value) and 0.0 <= value <= 1.0)}
    if odd:
        raise ModelCardError(f"{where}: thresholds {odd} must be numbers in [0, 1]")
    if not (t["doubt"] <= t["fracture"]):
        raise ModelCardError(f"{where}: thresholds {t} must satisfy 0 <= doubt <= fracture <= 1")
    size = card.get("input_size", 1)
    if not (isinstance(size, int) and not isinstance(size, bool) and size > 0):
        raise ModelCardError(f"{where}: input_size {size!r} must be a positive whole number of pixels")
    temperature = card.get("temperature", 1.0)
    if not (_is_number(temperature) and temperature > 0):
        raise ModelCardError(f"{where}: temperature {temperature!r} must be a number > 0")
    images = card.get("training_images")
    if images is not None and not (
        isinstance(images, dict)
        and isinstance(images.get("n"), int)
        and all(isinstance(images.get(k), str) and _HEX_DIGESTS.match(images[k]) for k in ("files", "pixels"))
    ):
        raise ModelCardError(
            f"{where}: training_images must give 'n' and 'files' and 'pixels' as space-separated hex digests"
        )
    if card.get("out_of_scope") is not None:
        try:
            ScopeCheck.from_card(card["out_of_scope"])
        except ValueError as exc:
            raise ModelCardError(f"{where}: {exc}") from exc


class ModelCard(Mapping[str, Any]):
    """A checked model card: typed properties for what fracsight uses, and read-only access to the
    whole JSON document (``card["recipe"]``, ``card.get("heatmap_stride")``) for what it reports."""

    def __init__(self, data: Mapping[str, Any], path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        where = str(self.path) if self.path is not None else "model card"
        if not isinstance(data, Mapping):
            raise ModelCardError(f"{where}: a model card is a JSON object, not {type(data).__name__}")
        _check(data, where)
        self._data = copy.deepcopy(dict(data))

    @classmethod
    def read(cls, path: str | Path) -> ModelCard:
        """The card in ``path`` (a ``.card.json`` file)."""
        path = Path(path)
        if not path.is_file():
            what = "is a folder, not a model card file" if path.is_dir() else "model card missing"
            raise FileNotFoundError(f"{path}: {what}; every model needs its card beside it")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ModelCardError(f"{path}: not a model card (not UTF-8 text)") from None
        except json.JSONDecodeError as exc:
            raise ModelCardError(
                f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
            ) from None
        return cls(data, path)

    @classmethod
    def for_model(cls, model_path: str | Path | None = None) -> ModelCard:
        """The card beside ``model_path`` (default: the shipped model)."""
        return cls.read(card_path(model_path or DEFAULT_MODEL))

    # Mapping: the card's JSON, read-only (copies, so a caller cannot change the checked card).
    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of the whole card, for writing a changed card (site adaptation)."""
        return copy.deepcopy(self._data)

    @property
    def model_id(self) -> str:
        return str(self._data["model_id"])

    @property
    def version(self) -> str | None:
        """The model's version as the card states it (``version``), or None for cards without one."""
        value = self._data.get("version")
        return None if value is None else str(value)

    @property
    def input_size(self) -> int:
        """Side of the square model input in pixels; inference needs it, reader studies do not."""
        if "input_size" not in self._data:
            raise ModelCardError(f"{self.path or 'model card'}: model card lacks 'input_size'")
        return int(self._data["input_size"])

    @property
    def thresholds(self) -> dict[str, float]:
        """Operating points by name: 'doubt' and 'fracture' always (checked), others as the card has them."""
        return {name: float(value) for name, value in self._data["thresholds"].items()}

    @property
    def threshold_source(self) -> str:
        return str(self._data.get("threshold_source", "model card"))

    @property
    def temperature(self) -> float:
        return float(self._data.get("temperature", 1.0))

    @property
    def training_images(self) -> TrainingImages | None:
        """The images the model was trained on, or None for a card that does not record them."""
        record = self._data.get("training_images")
        if record is None:
            return None
        return TrainingImages(
            description=str(record.get("description", "")),
            n=int(record["n"]),
            files=frozenset(record["files"].split()),
            pixels=frozenset(record["pixels"].split()),
        )

    @cached_property
    def onnx_sha256(self) -> str | None:
        """SHA-256 of the ONNX file beside the card (None for a card read without its model)."""
        if self.path is None or not self.path.name.endswith(CARD_SUFFIX):
            return None
        model = self.path.with_name(self.path.name[: -len(CARD_SUFFIX)] + ".onnx")
        return hashlib.sha256(model.read_bytes()).hexdigest() if model.is_file() else None

    @cached_property
    def identity(self) -> ModelIdentity:
        return ModelIdentity(self.model_id, self.version, self.onnx_sha256, self.thresholds)

    @cached_property
    def scope_check(self) -> ScopeCheck | None:
        """The fitted out-of-scope check (:mod:`fracsight.safety`), or None for a card without one."""
        section = self._data.get("out_of_scope")
        return None if section is None else ScopeCheck.from_card(section)

    @property
    def region_labels(self) -> list[str]:
        """The region head's labels, in the order of its outputs (empty for a model without one)."""
        return [str(label) for label in self._data.get("region_labels") or []]

    def categorise(self, probability: float) -> Category:
        """The answer this model's operating points give ``probability``."""
        return categorise(probability, self.thresholds)
