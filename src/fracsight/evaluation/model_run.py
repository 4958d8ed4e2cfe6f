"""Running a model over a labelled dataset, keeping what the report needs: findings and refusals."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fracsight.evaluation.inputs import CaseTable, ExcludedCase, LabelTable, PredictionTable
from fracsight.finding import Finding, Refusal
from fracsight.model_card import ModelCard

__all__ = ["ModelRun", "run_model", "FindingPictures"]

log = logging.getLogger(__name__)


@dataclass
class ModelRun:
    """The model's output on every labelled image: a finding, or the reason it refused the image."""

    predictions: PredictionTable
    findings: dict[str, Finding]  # case id -> finding (analysed cases only)
    card: ModelCard
    model_path: str


def run_model(labels: LabelTable, model_path: str | None = None, progress: bool = True) -> ModelRun:
    """Analyse each labelled image with ``fracsight.inference.Analyser`` (the shipped model by default)."""
    from fracsight.inference import Analyser

    if labels.images is None:
        raise ValueError(f"labels {labels.source} name no image files to run the model on")
    analyser = Analyser(model_path, decode_side=None)  # full resolution: boxes are in file pixels
    ids, probs, lines = [], [], []
    excluded: list[ExcludedCase] = []
    findings: dict[str, Finding] = {}
    paths = [str(p) for p in labels.images]
    bar = None
    if progress and len(paths) > 1:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc="evaluate")
    for case, finding in zip(labels.ids, analyser.outcomes(paths), strict=True):
        if isinstance(finding, Refusal):
            excluded.append(ExcludedCase(case, finding.reason))
        else:
            ids.append(case)
            probs.append(finding.probability)
            lines.append(0)
            findings[case] = finding
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    predictions = PredictionTable(
        source=f"model {analyser.model_id} run on {labels.source}",
        ids=ids,
        probabilities=np.asarray(probs, dtype=float),
        lines=lines,
        heatmaps=[None] * len(ids),
        images=[None] * len(ids),
        excluded=excluded,
    )
    return ModelRun(predictions, findings, analyser.card, str(analyser.model_path))


class FindingPictures:
    """Gallery pictures drawn from findings: the radiograph with the model's heat map over it."""

    draws_heatmaps = True

    def __init__(self, cases: CaseTable, findings: dict[str, Finding], max_side: int = 640) -> None:
        self.cases = cases
        self.findings = findings
        self.max_side = max_side

    def __call__(self, index: int) -> Image.Image | None:
        from fracsight.explain import overlay_image
        from fracsight.io import read_radiograph

        case = self.cases.ids[index]
        image_path = self.cases.images[index]
        finding = self.findings.get(case)
        if finding is None or not image_path:
            return None
        try:
            radiograph = read_radiograph(Path(image_path))
        except (OSError, ValueError) as exc:
            log.warning("gallery: cannot re-read case %s: %s", case, exc)
            return None
        return overlay_image(radiograph.pixels, finding, max_side=self.max_side)
