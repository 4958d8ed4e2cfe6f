"""Export a trained FractureNet to ONNX, with flip test-time augmentation inside the graph.

The exported graph takes ``image`` (N, 1, S, S) float32 in [-1, 1] (the output of
:func:`fracsight.preprocess.prepare`) and returns ``logit`` (N,) and ``heatmap`` (N, h, w)
cell logits, ``region`` (N, 4) region logits and ``features`` (N, 1280) pooled features,
each the mean over the image and its left-right mirror. Probability and temperature are
applied outside the graph (``fracsight.inference``), so calibration never needs a re-export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from fracsight.training.network import FractureNet, Outputs

OPSET = 17
OUTPUT_NAMES = ("logit", "heatmap", "region", "features")


class WithFlipTTA(nn.Module):
    """The model's answer averaged over the image and its left-right mirror (map mirrored back)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Outputs:
        n = image.shape[0]
        both = self.model(torch.cat([image, torch.flip(image, dims=[3])], dim=0))
        heatmap = (both.cells[:n] + torch.flip(both.cells[n:], dims=[2])) * 0.5
        logit, region, features = ((t[:n] + t[n:]) * 0.5 for t in (both.logit, both.region, both.features))
        return Outputs(logit, heatmap, region, features)


def export_onnx(model: FractureNet, size: int, path: Path) -> None:
    model = model.float().to("cpu").eval()
    model = model.to(memory_format=torch.contiguous_format)
    export_graph(WithFlipTTA(model).eval(), size, path)


def export_graph(graph: nn.Module, size: int, path: Path) -> None:
    """Write any module mapping ``image`` to :class:`Outputs` with fracsight's ONNX interface."""
    example = torch.zeros(2, 1, size, size)
    torch.onnx.export(
        graph,
        (example,),
        str(path),
        input_names=["image"],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={name: {0: "batch"} for name in ("image", *OUTPUT_NAMES)},
        opset_version=OPSET,
        dynamo=False,
    )


def check_onnx(model: FractureNet, path: Path, images: np.ndarray) -> float:
    """Largest absolute difference between torch and ONNX Runtime outputs on ``images``.

    ``images`` is float32 (N, 1, S, S) model input; raises if the outputs disagree.
    """
    import onnxruntime as ort

    model = model.float().to("cpu").eval()
    with torch.no_grad():
        reference = WithFlipTTA(model)(torch.from_numpy(images))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(list(OUTPUT_NAMES), {"image": images})
    diff = max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outputs, reference, strict=True))
    if diff > 1e-3:
        raise RuntimeError(f"ONNX export disagrees with torch: max abs difference {diff:.2e} > 1e-3")
    return diff
