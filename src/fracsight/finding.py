"""What analysing one input gives every surface: a :class:`Finding`, or a :class:`Refusal` with its
reason. There is one record form (:meth:`Finding.to_record`, :meth:`Refusal.to_record`), read
back by :meth:`Finding.from_record`, and one flat row of it (:func:`record_row`): ``predict`` (CSV
and JSON), ``batch`` (Parquet), the web API, its store and the DICOM node all go through them, so a
result means the same wherever it is read.

Built by :mod:`fracsight.inference` from the model card's category and identity
(:mod:`fracsight.model_card`) and the heat map's geometry (:mod:`fracsight.explain`,
:mod:`fracsight.preprocess`); nothing below it imports it, so it can carry methods that use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fracsight import explain
from fracsight._version import __version__
from fracsight.decide import Category
from fracsight.explain import (
    CAPTION,
    heatmap_outline,
    heatmap_peak,
    heatmap_to_image,
)
from fracsight.io.radiograph import Radiograph, RefusedInput
from fracsight.io.safe_text import is_uid
from fracsight.model_card import ModelIdentity
from fracsight.preprocess import Letterbox, letterbox_geometry
from fracsight.safety import Scope

__all__ = [
    "ROW_COLUMNS",
    "ROW_DETAIL_COLUMNS",
    "Finding",
    "Outcome",
    "Refusal",
    "SourceIds",
    "record_row",
    "write_heatmap",
]

# Reason codes beyond the RefusedInput kinds (``RefusedInput.code`` and its subclasses'):
MISSING = "missing"  # no such file, or a link to one that is gone
READ_ERROR = "read_error"  # the reader failed in a way it does not name (a bug, or a new format)
# error_code of an analysed input whose heat-map picture could not be written (its answer stands).
HEATMAP_NOT_WRITTEN = "heatmap_not_written"

# The columns of a result row, in order, wherever results are a table (predict's CSV, batch's
# Parquet, which adds its own after these): the first five as they always were, then what ties a
# row to its model and, for DICOM, to its study and image once the file leaves its folder; last the
# scope check (fracsight.safety): its distance score, the region head's region, and why an image is
# out of scope (or where its Body Part Examined disagrees with the image).
ROW_COLUMNS = (
    "path",
    "probability",
    "category",
    "heatmap",
    "error",
    "error_code",
    "model_id",
    "model_version",
    "onnx_sha256",
    "study_uid",
    "series_uid",
    "sop_uid",
    "ood_score",
    "region",
    "scope_reason",
)
# What a row carries beyond ROW_COLUMNS where a table has room for it (batch's Parquet): where the
# heat map peaks and the image's size, as the record gives them, then the timings in ms.
ROW_DETAIL_COLUMNS = ("peak_x", "peak_y", "width", "height", "decode_ms", "preprocess_ms", "model_ms")


@dataclass(frozen=True)
class SourceIds:
    """The DICOM identifiers of the analysed image, so a result can be matched to its study once
    it leaves its folder; None for files without them (PNG, JPEG) or with malformed ones."""

    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None

    @classmethod
    def of(cls, radiograph: Radiograph) -> SourceIds:
        header = radiograph.dicom
        if header is None:
            return cls()

        def uid(keyword: str) -> str | None:
            value = str(header.get(keyword, "") or "").strip().rstrip("\0")
            return value if is_uid(value) else None  # a damaged value may hold other data

        return cls(uid("StudyInstanceUID"), uid("SeriesInstanceUID"), uid("SOPInstanceUID"))

    def to_record(self) -> dict[str, str | None]:
        return {"study_uid": self.study_uid, "series_uid": self.series_uid, "sop_uid": self.sop_uid}


@dataclass(frozen=True)
class Finding:
    """Probability, category and heat map for one radiograph, with the model that produced them.

    ``heatmap`` is the model's map over the square model input (grid cells, values in
    [0, 1]); :meth:`heatmap_on_image` resamples it to the original image's pixels.
    """

    probability: float
    category: Category
    heatmap: np.ndarray
    letterbox: Letterbox
    model: ModelIdentity
    source: str = ""
    ids: SourceIds = field(default_factory=SourceIds)
    timings_ms: dict[str, float] = field(default_factory=dict)
    # Inside what the model knows? None where the model was run without the check.
    scope: Scope | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability {self.probability!r} is outside [0, 1]")
        if self.heatmap.ndim != 2:
            raise ValueError(f"heatmap must be 2-D, got shape {self.heatmap.shape}")

    @property
    def model_id(self) -> str:
        return self.model.model_id

    def heatmap_on_image(self) -> np.ndarray:
        """The heat map resampled to the original image (H x W, float32 in [0, 1])."""
        return heatmap_to_image(self.heatmap, self.letterbox)

    def peak(self) -> tuple[float, float]:
        """(x, y) of the heat map's peak in original image pixels (:func:`fracsight.explain.heatmap_peak`),
        the point ``fracsight evaluate`` scores against expert boxes."""
        return heatmap_peak(self.heatmap, self.letterbox)

    def outline(self, level: float = 0.5) -> list[tuple[float, float]]:
        """The hot region around the peak as a closed polygon in original image pixels
        (:func:`fracsight.explain.heatmap_outline`)."""
        return heatmap_outline(self.heatmap, self.letterbox, level)

    def to_record(self) -> dict[str, Any]:
        """The finding as JSON-ready values: the one record every surface writes and the store
        keeps (the heat map itself travels as a picture or an array, not here).

        ``probability`` is the full float: every surface that shows fewer digits rounds it itself.
        """
        x, y = self.peak()
        return {
            "path": self.source,
            "probability": self.probability,
            "category": self.category.value,
            "peak": {"x": round(x, 1), "y": round(y, 1)},
            "image": {"width": self.letterbox.width, "height": self.letterbox.height},
            "model": self.model.to_dict(),
            **self.ids.to_record(),
            "timings_ms": {name: round(ms, 1) for name, ms in self.timings_ms.items()},
            **({} if self.scope is None else {"scope": self.scope.to_record()}),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], heatmap: np.ndarray, input_size: int) -> Finding:
        """The finding a :meth:`to_record` describes, with its heat map and the model's input size
        (the record keeps the image's size; where it sat in the model input follows from both)."""
        model = record["model"]
        image = record["image"]
        return cls(
            probability=float(record["probability"]),
            category=Category(record["category"]),
            heatmap=np.asarray(heatmap, dtype=np.float32),
            letterbox=letterbox_geometry(int(image["height"]), int(image["width"]), int(input_size)),
            model=ModelIdentity(
                model_id=model["id"],
                version=model.get("version"),
                onnx_sha256=model.get("onnx_sha256"),
                thresholds=dict(model.get("thresholds") or {}),
            ),
            source=record.get("path") or "",
            ids=SourceIds(record.get("study_uid"), record.get("series_uid"), record.get("sop_uid")),
            timings_ms=dict(record.get("timings_ms") or {}),
            scope=Scope.from_record(record["scope"]) if record.get("scope") else None,
        )

    def png_text(self) -> dict[str, str]:
        """PNG text chunks for this finding's heat-map picture: the answer, the model (id, version,
        ONNX sha256) and the DICOM UIDs, so the picture stays traceable once it leaves its folder.
        Never the file's name, which may be a patient's."""
        text = {
            "Software": f"fracsight {__version__}",
            "Description": CAPTION,
            "fracsight:probability": f"{self.probability:.6f}",
            "fracsight:category": self.category.value,
            "fracsight:out_of_scope_reason": self.scope.reason if self.scope else None,
            "fracsight:model_id": self.model.model_id,
            "fracsight:model_version": self.model.version,
            "fracsight:onnx_sha256": self.model.onnx_sha256,
            **{f"fracsight:{key}": value for key, value in self.ids.to_record().items()},
        }
        return {key: value for key, value in text.items() if value is not None}


@dataclass(frozen=True)
class Refusal:
    """An input that was not analysed: ``code`` one stable word (``RefusedInput.code``, or
    ``missing`` / ``read_error``), ``reason`` what a user can act on (never patient data)."""

    source: str
    code: str
    reason: str

    @classmethod
    def of(cls, error: RefusedInput, source: str | None = None) -> Refusal:
        return cls(source if source is not None else error.path, error.code, error.reason)

    def to_record(self) -> dict[str, Any]:
        """The refusal as the same record form as :meth:`Finding.to_record`."""
        return {"path": self.source, "error_code": self.code, "error": self.reason}


# What analysing one input gives: never an exception for a bad input.
Outcome = Finding | Refusal


def record_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A Finding's or Refusal's record (with ``heatmap`` where one was written) as one flat row of
    :data:`ROW_COLUMNS` and :data:`ROW_DETAIL_COLUMNS`, values as they are (None where nothing
    applies): the one flattening, which the CSV formats and the Parquet types."""
    model = record.get("model") or {}
    peak = record.get("peak") or {}
    image = record.get("image") or {}
    timings = record.get("timings_ms") or {}
    scope = record.get("scope") or {}
    flat = {
        "ood_score": scope.get("score"),
        "region": scope.get("region"),
        "scope_reason": scope.get("reason") or scope.get("note"),
        "model_id": model.get("id"),
        "model_version": model.get("version"),
        "onnx_sha256": model.get("onnx_sha256"),
        "peak_x": peak.get("x"),
        "peak_y": peak.get("y"),
        "width": image.get("width"),
        "height": image.get("height"),
        "decode_ms": timings.get("decode"),
        "preprocess_ms": timings.get("preprocess"),
        "model_ms": timings.get("model"),
    }
    return {c: flat[c] if c in flat else record.get(c) for c in (*ROW_COLUMNS, *ROW_DETAIL_COLUMNS)}


def write_heatmap(
    finding: Finding, pixels: np.ndarray, target: Path, max_side: int | None = explain.OVERLAY_MAX_SIDE
) -> dict[str, str]:
    """Draw ``finding``'s overlay on the radiograph's ``pixels`` into ``target`` (whole or not at
    all, with :meth:`Finding.png_text`), its longer side at most ``max_side`` (None or 0: the
    pixels' size). Returns the record fields that say where it went, or why
    it did not (``error_code`` :data:`HEATMAP_NOT_WRITTEN`): a full disk or an odd image costs
    that picture, never the batch."""
    try:
        explain.save_png(explain.overlay_image(pixels, finding, max_side), target, finding.png_text())
    except OSError as exc:
        return {
            "error_code": HEATMAP_NOT_WRITTEN,
            "error": f"analysed, but its heat map could not be written: {exc.strerror or exc}",
        }
    except Exception as exc:  # noqa: BLE001 - one odd image must not stop the batch
        return {
            "error_code": HEATMAP_NOT_WRITTEN,
            "error": f"analysed, but its heat map could not be drawn ({type(exc).__name__})",
        }
    return {"heatmap": str(target)}
