"""Is this image inside what the model knows? The out-of-scope check, per image.

A fracture model scores anything that decodes: a chest radiograph, a dog's thorax, a photograph
all get a probability, often a confident one. This module says, from the model's own pooled
features and region head and from the DICOM header, when an image is unlike the radiographs the
model was trained on, with a reason a clinician can read:

* **distance** from the development data in feature space: the features (square-rooted: they are
  non-negative and heavy-tailed after the last activation and pooling) are projected on the
  leading principal components of the development images; the score is the mean squared
  Mahalanobis distance within those components plus the squared residual outside them (scaled
  to 1 on the development data), so a typical development image scores about 2. The threshold
  is a high quantile of out-of-fold scores (each fold's images scored by a fit on the other
  folds), so it is set on images the fit did not see;
* **body region**: DICOM Body Part Examined naming a region the model was not trained for (chest,
  spine, skull, abdomen, pelvis without the hip) flags the image; one that contradicts the region
  head's confident answer is reported, not flagged.

The fitted parameters live in the model card (``out_of_scope``), so the check travels with the
model and cannot be lost beside it. Imports nothing of fracsight; numpy only, a few microseconds
per image.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BODY_PART_REGIONS",
    "UNTRAINED_BODY_PARTS",
    "Scope",
    "ScopeCheck",
    "check_scope",
    "fit_scope",
]

# DICOM Body Part Examined defined terms (PS3.16 Annex L) of parts the model was not trained for.
UNTRAINED_BODY_PARTS = frozenset(
    "ABDOMEN ABDOMENPELVIS BREAST CHEST CHESTABDOMEN CHESTABDPELVIS COCCYX CSPINE HEAD HEADNECK HEART "
    "JAW LSPINE NECK SACRUM SKULL SPINE SSPINE TLSPINE TMJ TSPINE WHOLEBODY FACE ORBIT NOSE EAR "
    "MANDIBLE MAXILLA SINUS THORAX RIB RIBS STERNUM".split()
)
# Body parts the model was trained for, by the region head's label; the rest (ELBOW, ARM, ...)
# are neither flagged nor compared.
BODY_PART_REGIONS: dict[str, str] = {
    **dict.fromkeys("HAND FINGER THUMB WRIST".split(), "hand"),
    **dict.fromkeys("FOOT TOE ANKLE KNEE LEG LOWERLIMB TIBIA FIBULA CALCANEUS".split(), "leg"),
    **dict.fromkeys("HIP".split(), "hip"),
    **dict.fromkeys("SHOULDER CLAVICLE SCAPULA".split(), "shoulder"),
}
# The region head must be this sure of another region, and this unsure of the one the header
# names, before the two are said to disagree.
CONTRADICTION_SURE = 0.8
CONTRADICTION_UNSURE = 0.2
# Pelvis is in scope only where the region head sees the hip.
PELVIS_NEEDS_HIP = 0.5


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _decode(text: str, shape: tuple[int, ...]) -> np.ndarray:
    values = np.frombuffer(base64.b64decode(text), dtype="<f4")
    if values.size != int(np.prod(shape)):
        raise ValueError(f"out_of_scope: {values.size} values where {shape} were expected")
    return values.reshape(shape).astype(np.float64)


@dataclass(frozen=True)
class ScopeCheck:
    """The fitted distance check: where development images lie in feature space, and how far
    out an image may be before it is flagged."""

    mean: np.ndarray  # (D,) of the transformed features
    components: np.ndarray  # (k, D) leading principal axes
    variances: np.ndarray  # (k,) variance along each
    residual_scale: float  # mean squared residual outside the k axes, on the development data
    threshold: float  # a score above it is out of scope
    fitted_on: str = ""  # which images, for the card
    rates: Mapping[str, Any] = field(default_factory=dict)  # measured flag rates, for the card

    def score(self, features: np.ndarray) -> float:
        """Distance of one image's pooled features from the development data (about 2 inside)."""
        return float(self.scores(np.asarray(features).reshape(1, -1))[0])

    def scores(self, features: np.ndarray) -> np.ndarray:
        """:meth:`score` of each row of ``features`` (N, D)."""
        x = np.sqrt(np.maximum(np.asarray(features, dtype=np.float64), 0.0)) - self.mean
        z = x @ self.components.T
        inside = np.mean(z * z / self.variances, axis=1)
        outside = (np.sum(x * x, axis=1) - np.sum(z * z, axis=1)) / self.residual_scale
        return inside + outside

    def to_card(self) -> dict[str, Any]:
        """The card's ``out_of_scope`` section (arrays as base64 little-endian float32)."""
        k, d = self.components.shape
        return {
            "method": "sqrt features; PCA Mahalanobis within k components + scaled residual",
            "k": k,
            "dimensions": d,
            "mean": _encode(self.mean),
            "components": _encode(self.components),
            "variances": [float(v) for v in self.variances],
            "residual_scale": float(self.residual_scale),
            "threshold": float(self.threshold),
            "fitted_on": self.fitted_on,
            "rates": dict(self.rates),
        }

    @classmethod
    def from_card(cls, section: Mapping[str, Any]) -> ScopeCheck:
        """The check a card's ``out_of_scope`` section describes; ValueError names what is wrong."""
        try:
            k, d = int(section["k"]), int(section["dimensions"])
            check = cls(
                mean=_decode(section["mean"], (d,)),
                components=_decode(section["components"], (k, d)),
                variances=np.asarray(section["variances"], dtype=np.float64),
                residual_scale=float(section["residual_scale"]),
                threshold=float(section["threshold"]),
                fitted_on=str(section.get("fitted_on", "")),
                rates=dict(section.get("rates") or {}),
            )
        except (KeyError, TypeError, ValueError, base64.binascii.Error) as exc:
            raise ValueError(f"out_of_scope section is not usable ({type(exc).__name__}: {exc})") from exc
        if check.variances.shape != (k,) or np.any(check.variances <= 0) or check.residual_scale <= 0:
            raise ValueError("out_of_scope: variances and residual_scale must be positive, one per component")
        return check


@dataclass(frozen=True)
class Scope:
    """The check's answer for one image: flagged or not, why, and what the region head saw."""

    score: float | None  # the distance (None: the model has no fitted check)
    out_of_scope: bool
    reason: str | None  # why it is out of scope, in words for the reader
    region: str | None  # the region head's most likely region
    region_probabilities: Mapping[str, float] = field(default_factory=dict)
    body_part: str | None = None  # DICOM Body Part Examined, as given
    note: str | None = None  # a disagreement worth showing that does not flag the image

    def to_record(self) -> dict[str, Any]:
        return {
            "score": None if self.score is None else round(self.score, 4),
            "out_of_scope": self.out_of_scope,
            "reason": self.reason,
            "region": self.region,
            "region_probabilities": {k: round(v, 4) for k, v in self.region_probabilities.items()},
            "body_part": self.body_part,
            "note": self.note,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Scope:
        return cls(
            score=record.get("score"),
            out_of_scope=bool(record.get("out_of_scope")),
            reason=record.get("reason"),
            region=record.get("region"),
            region_probabilities=dict(record.get("region_probabilities") or {}),
            body_part=record.get("body_part"),
            note=record.get("note"),
        )


def check_scope(
    check: ScopeCheck | None,
    features: np.ndarray | None,
    region_probabilities: Mapping[str, float],
    body_part: str | None = None,
) -> Scope:
    """One image's scope from its features, its region head's probabilities and its DICOM Body
    Part Examined (None for files without one)."""
    regions = dict(region_probabilities)
    region = max(regions, key=regions.get) if regions else None
    part = (body_part or "").strip().upper() or None
    trained = ", ".join(regions) or "the regions it was trained on"
    reasons: list[str] = []
    note = None
    if part in UNTRAINED_BODY_PARTS or (part == "PELVIS" and regions.get("hip", 1.0) < PELVIS_NEEDS_HIP):
        reasons.append(f"Body Part Examined is {part}; the model knows {trained} radiographs")
    elif part in BODY_PART_REGIONS and region is not None:
        named = BODY_PART_REGIONS[part]
        if regions.get(named, 1.0) < CONTRADICTION_UNSURE and regions[region] >= CONTRADICTION_SURE:
            note = f"Body Part Examined is {part}, but the image looks like a {region} radiograph"
    score = None
    if check is not None and features is not None:
        score = check.score(features)
        if score > check.threshold:
            reasons.append("the image is unlike the radiographs the model was trained on")
    return Scope(score, bool(reasons), "; ".join(reasons) or None, region, regions, part, note)


def fit_scope(
    features: np.ndarray,
    folds: Sequence[int],
    k: int = 32,
    quantile: float = 0.975,
    fitted_on: str = "",
) -> tuple[ScopeCheck, np.ndarray]:
    """Fit the distance check on development ``features`` (N, D); the threshold is the
    ``quantile`` of out-of-fold scores (fold f scored by a fit on the other folds). Returns the
    check fitted on all rows and the out-of-fold scores."""
    features = np.asarray(features, dtype=np.float64)
    folds = np.asarray(folds)
    oof = np.zeros(len(features))
    for fold in np.unique(folds):
        held = folds == fold
        oof[held] = _fit(features[~held], k, 0.0).scores(features[held])
    threshold = float(np.quantile(oof, quantile))
    final = _fit(features, k, threshold)
    check = ScopeCheck(
        final.mean, final.components, final.variances, final.residual_scale, threshold, fitted_on
    )
    return check, oof


def _fit(features: np.ndarray, k: int, threshold: float) -> ScopeCheck:
    x = np.sqrt(np.maximum(features, 0.0))
    mean = x.mean(axis=0)
    centred = x - mean
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    components = axes[:k]
    variances = singular[:k] ** 2 / max(1, len(x) - 1)
    projected = centred @ components.T
    residual = float(np.mean(np.sum(centred * centred, axis=1) - np.sum(projected * projected, axis=1)))
    return ScopeCheck(mean, components, variances, residual, threshold)
