"""Decode and prepare a training set once, into compact uint8 arrays held in memory.

Images go through the same :func:`fracsight.io.read_radiograph` and
:func:`fracsight.preprocess.prepare` as at inference; boxes become a mask in the same
letterbox coordinates. uint8 keeps 3,000 images at 384 px under 0.5 GB.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from fracsight.preprocess import prepare
from fracsight.training.examples import Example

log = logging.getLogger(__name__)


@dataclass
class PreparedSet:
    images: np.ndarray  # (N, S, S) uint8, 0..255 <-> -1..1
    masks: np.ndarray  # (N, S, S) uint8, 1 inside an expert box
    labels: np.ndarray  # (N,) int
    regions: np.ndarray  # (N, 4) int8: 0/1 per region of REGIONS, -1 on rows whose regions are unknown
    examples: list[Example]  # the N examples that could be read
    refused: list[tuple[str, str]]  # (path, reason) for those that could not


def _prepare_one(args: tuple[Example, int]) -> tuple[np.ndarray, np.ndarray] | str:
    from fracsight.io import RefusedInput, read_radiograph

    example, size = args
    try:
        radiograph = read_radiograph(example.path)
    except RefusedInput as exc:
        return exc.reason
    try:
        image, box = prepare(radiograph.pixels, size)
    except ValueError as exc:
        return str(exc)
    mask = np.zeros((size, size), dtype=np.uint8)
    for x0, y0, x1, y1 in example.boxes:
        # Clip to the image first: a corner off the image must neither mark the letterbox
        # padding nor, once negative, become a negative slice index (which counts from the end).
        x0, x1 = np.clip([x0, x1], 0, box.width)
        y0, y1 = np.clip([y0, y1], 0, box.height)
        if x1 <= x0 or y1 <= y0:
            continue
        ax, ay = box.to_model(x0, y0)
        bx, by = box.to_model(x1, y1)
        c0, r0 = max(0, int(np.floor(ax))), max(0, int(np.floor(ay)))
        c1, r1 = min(size, int(np.ceil(bx))), min(size, int(np.ceil(by)))
        mask[r0:r1, c0:c1] = 1
    return np.round((image + 1.0) * 127.5).astype(np.uint8), mask


def prepare_examples(examples: list[Example], size: int, workers: int = 2) -> PreparedSet:
    jobs = [(ex, size) for ex in examples]
    if workers > 1 and len(jobs) > 16:
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(_prepare_one, jobs, chunksize=16))
    else:
        results = [_prepare_one(job) for job in jobs]
    images, masks, kept, refused = [], [], [], []
    for ex, result in zip(examples, results, strict=True):
        if isinstance(result, str):
            refused.append((ex.path, result))
            continue
        images.append(result[0])
        masks.append(result[1])
        kept.append(ex)
    for path, reason in refused:
        log.warning("training image skipped: %s: %s", path, reason)
    if not kept:
        raise ValueError("no training image could be read")
    return PreparedSet(
        images=np.stack(images),
        masks=np.stack(masks),
        labels=np.array([ex.label for ex in kept], dtype=np.int64),
        regions=np.array([ex.region_targets() or [-1] * 4 for ex in kept], dtype=np.int8).reshape(-1, 4),
        examples=kept,
        refused=refused,
    )
