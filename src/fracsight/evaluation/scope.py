"""Fitting and measuring the out-of-scope check (:mod:`fracsight.safety`) on real images.

The check is fitted on the development split's pooled features, its threshold set on out-of-fold
scores (:func:`fracsight.safety.fit_scope`); it is then measured, never tuned, on the held-out
split (how often an in-scope radiograph is wrongly flagged) and on each out-of-distribution set
separately (AUROC of the score against the held-out radiographs, and how many are flagged), and
on what it does to the accuracy of what is still scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fracsight.evaluation.metrics import auc_with_ci, proportion
from fracsight.finding import Finding, Refusal
from fracsight.inference import Analyser
from fracsight.safety import ScopeCheck, check_scope

__all__ = [
    "ScopeInputs",
    "ScopeOutcomes",
    "accuracy_of",
    "accuracy_when_set_aside",
    "scope_inputs",
    "scope_outcomes",
    "scope_rates",
    "scope_rates_of",
]


@dataclass(frozen=True)
class ScopeInputs:
    """What the check reads for each analysed image of a set; refused files are counted apart."""

    paths: list[str]
    features: np.ndarray  # (N, D)
    regions: list[dict[str, float]]
    body_parts: list[str | None]
    probabilities: np.ndarray  # (N,) the model's fracture probability
    refused: dict[str, str]  # path -> error code

    def scores(self, check: ScopeCheck) -> np.ndarray:
        return check.scores(self.features) if len(self.paths) else np.zeros(0)

    def flagged(self, check: ScopeCheck | None) -> np.ndarray:
        """Whether each image is out of scope by the whole check (distance and body part)."""
        return np.array(
            [
                check_scope(check, f, r, b).out_of_scope
                for f, r, b in zip(self.features, self.regions, self.body_parts, strict=True)
            ],
            dtype=bool,
        )

    def outcomes(self, check: ScopeCheck) -> ScopeOutcomes:
        """What the whole check says of each image, for :func:`scope_rates_of`."""
        return ScopeOutcomes(
            self.paths, self.scores(check), self.flagged(check), self.probabilities, self.refused
        )


@dataclass(frozen=True)
class ScopeOutcomes:
    """What the check said of each analysed image of a set (its distance score and whether the
    whole check flagged it), as ``predict`` computed it; refused files are counted apart."""

    paths: list[str]
    scores: np.ndarray  # (N,) distance scores
    flagged: np.ndarray  # (N,) bool: out of scope by distance or body part
    probabilities: np.ndarray  # (N,) the model's fracture probability
    refused: dict[str, str]  # path -> why it was refused before the check

    @classmethod
    def of_findings(
        cls, findings: Mapping[str, Finding], refused: Mapping[str, str] | None = None
    ) -> ScopeOutcomes:
        """From findings the analyser made (the check's answer is in ``Finding.scope``); ValueError
        when a finding carries no distance score (a model without a fitted check)."""
        scores, flagged, probabilities = [], [], []
        for finding in findings.values():
            if finding.scope is None or finding.scope.score is None:
                raise ValueError(
                    f"model {finding.model_id} has no fitted out-of-scope check (no 'out_of_scope' "
                    "section in its card, or no 'features' output): the check cannot be measured"
                )
            scores.append(float(finding.scope.score))
            flagged.append(bool(finding.scope.out_of_scope))
            probabilities.append(float(finding.probability))
        return cls(
            list(findings),
            np.asarray(scores, dtype=float),
            np.asarray(flagged, dtype=bool),
            np.asarray(probabilities, dtype=float),
            dict(refused or {}),
        )


def scope_outcomes(analyser: Analyser, paths: Sequence[str | Path]) -> ScopeOutcomes:
    """Run ``analyser`` on ``paths`` exactly as ``predict`` does and keep the check's answers;
    files it refuses (unreadable, MR/CT, colour photographs) are counted as refused."""
    findings: dict[str, Finding] = {}
    refused: dict[str, str] = {}
    for path, outcome in zip(paths, analyser.outcomes([str(p) for p in paths]), strict=True):
        if isinstance(outcome, Refusal):
            refused[str(path)] = outcome.code
        else:
            findings[str(path)] = outcome
    return ScopeOutcomes.of_findings(findings, refused)


def scope_inputs(analyser: Analyser, paths: Sequence[str | Path]) -> ScopeInputs:
    """Decode, preprocess and run the model on ``paths`` (as predict does) and keep what the scope
    check reads."""
    kept, features, regions, parts, probabilities, refused = [], [], [], [], [], {}
    for path in paths:
        item = analyser.preparer.prepare(path)
        if item.refusal is not None:
            refused[str(path)] = item.refusal.code
            continue
        outputs = analyser.run_outputs(item.image[None])
        if outputs.features is None:
            raise ValueError(f"{analyser.model_path}: the model has no 'features' output for a scope check")
        kept.append(str(path))
        features.append(outputs.features[0])
        region = {} if outputs.region is None else outputs.region[0]
        regions.append(dict(zip(analyser.region_labels, map(float, region), strict=True)))
        parts.append((item.radiograph.metadata or {}).get("body_part"))
        probabilities.append(float(outputs.probability[0]))
    d = len(features[0]) if features else 0
    return ScopeInputs(
        kept,
        np.asarray(features, dtype=np.float64).reshape(len(kept), d),
        regions,
        parts,
        np.asarray(probabilities),
        refused,
    )


def scope_rates(
    check: ScopeCheck, inside: ScopeInputs, outside: Mapping[str, ScopeInputs], data: str
) -> dict[str, Any]:
    """The check measured: the false-flag rate on in-scope images and, per out-of-scope set, the
    AUROC of the distance score against them and the share flagged (Wilson and DeLong CIs).
    ``data`` says what the in-scope images are; it is written with every number."""
    return scope_rates_of(
        inside.outcomes(check), {name: images.outcomes(check) for name, images in outside.items()}, data
    )


def scope_rates_of(
    inside: ScopeOutcomes,
    outside: Mapping[str, ScopeOutcomes],
    data: str,
    outside_data: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """:func:`scope_rates` from the check's answers; ``outside_data`` names each out-of-scope
    set's images (written beside its numbers when given)."""
    inside_scores = inside.scores
    wrongly = int(inside.flagged.sum())
    rates: dict[str, Any] = {
        "in_scope": {
            "data": data,
            "n": len(inside.paths),
            "false_flag_rate": proportion(wrongly, len(inside.paths)).to_dict(),
        },
        "out_of_scope_sets": {},
    }
    for name, images in outside.items():
        entry: dict[str, Any] = {"n": len(images.paths), "refused_before_the_check": len(images.refused)}
        if outside_data and name in outside_data:
            entry = {"data": outside_data[name], **entry}
        if images.paths and len(inside_scores):
            labels = np.r_[np.zeros(len(inside_scores)), np.ones(len(images.scores))]
            entry["auroc"] = auc_with_ci(np.r_[inside_scores, images.scores], labels).to_dict()
        if images.paths:
            entry["flagged"] = proportion(int(images.flagged.sum()), len(images.paths)).to_dict()
        rates["out_of_scope_sets"][name] = entry
    return rates


def accuracy_when_set_aside(
    check: ScopeCheck, inside: ScopeInputs, labels: Sequence[int]
) -> dict[str, Any]:
    """ROC AUC of the fracture probability on all in-scope images and on those the check leaves
    scored: what setting flagged images aside does to the accuracy of the rest."""
    return accuracy_of(inside.probabilities, labels, inside.flagged(check))


def accuracy_of(
    probabilities: np.ndarray, labels: Sequence[int], flagged: np.ndarray, n_resamples: int = 0
) -> dict[str, Any]:
    """:func:`accuracy_when_set_aside` from probabilities and the check's flags."""
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=float)
    kept = ~np.asarray(flagged, dtype=bool)
    out = {"all": auc_with_ci(probabilities, labels, n_resamples).to_dict(), "n_all": int(len(labels))}
    if kept.sum() and labels[kept].min() != labels[kept].max():
        out["scored"] = auc_with_ci(probabilities[kept], labels[kept], n_resamples).to_dict()
    out["n_scored"] = int(kept.sum())
    return out
