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


def _mirror_mean(both: Outputs, n: int) -> Outputs:
    """Outputs of a batch [images, mirrored images] -> the mean of each image and its mirror."""
    heatmap = (both.cells[:n] + torch.flip(both.cells[n:], dims=[2])) * 0.5
    logit, region, features = ((t[:n] + t[n:]) * 0.5 for t in (both.logit, both.region, both.features))
    return Outputs(logit, heatmap, region, features)


def _with_mirror(image: torch.Tensor) -> torch.Tensor:
    return torch.cat([image, torch.flip(image, dims=[3])], dim=0)


class WithFlipTTA(nn.Module):
    """The model's answer averaged over the image and its left-right mirror (map mirrored back)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> Outputs:
        return _mirror_mean(self.model(_with_mirror(image)), image.shape[0])


def _trunk_state(model: FractureNet) -> dict[str, torch.Tensor]:
    """The backbone's weights and statistics before its last block: what the CPU route freezes."""
    backbone = model.backbone
    last = range(backbone.trunk_blocks, len(backbone._blocks))
    top = (*(f"_blocks.{j}." for j in last), "_conv_head.", "_bn1.")
    return {k: v for k, v in backbone.state_dict().items() if not k.startswith(top)}


class FoldEnsembleTTA(nn.Module):
    """The fold models as one shipped model: their mean probability, each model's answer first
    averaged over the image and its mirror (as their out-of-fold scores were), heat maps, region
    logits and features averaged.

    Why: thresholds chosen on the fold models' out-of-fold scores held on held-out images for
    their ensemble but not for their weights' average (training/README.md, v4). Fold models of
    the CPU route share the frozen ImageNet trunk, so the graph runs it once and only the last
    block and heads once per fold model; with trained trunks each model runs whole.
    """

    def __init__(self, members: list[FractureNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        first = _trunk_state(members[0])
        self.shared_trunk = all(
            all(torch.equal(first[k], v) for k, v in _trunk_state(m).items()) for m in members[1:]
        )

    def forward(self, image: torch.Tensor) -> Outputs:
        n, both = image.shape[0], _with_mirror(image)
        if self.shared_trunk:
            mid, deep = self.members[0].backbone.trunk(both.expand(-1, 3, -1, -1))
            outs = [_mirror_mean(m.from_trunk(mid, deep), n) for m in self.members]
        else:
            outs = [_mirror_mean(m(both), n) for m in self.members]
        return combine_members(outs)


def combine_members(outs: list[Outputs]) -> Outputs:
    """Several models' answers on the same images -> one: the logit of their mean probability,
    the mean of the rest."""
    probability = torch.stack([torch.sigmoid(o.logit) for o in outs]).mean(0).clamp(1e-7, 1 - 1e-7)
    logit = torch.log(probability) - torch.log1p(-probability)
    cells, region, features = (torch.stack([o[i] for o in outs]).mean(0) for i in (1, 2, 3))
    return Outputs(logit, cells, region, features)


def shipped_graph(model: nn.Module) -> nn.Module:
    """The module that is exported: an ensemble carries its mirror pass, a single model gets one."""
    return model if isinstance(model, FoldEnsembleTTA) else WithFlipTTA(model)


def export_onnx(model: FractureNet | FoldEnsembleTTA, size: int, path: Path) -> None:
    model = model.float().to("cpu").eval()
    model = model.to(memory_format=torch.contiguous_format)
    export_graph(shipped_graph(model).eval(), size, path)


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


def check_onnx(model: FractureNet | FoldEnsembleTTA, path: Path, images: np.ndarray) -> float:
    """Largest absolute difference between torch and ONNX Runtime outputs on ``images``.

    ``images`` is float32 (N, 1, S, S) model input; raises if the outputs disagree.
    """
    import onnxruntime as ort

    model = model.float().to("cpu").eval()
    with torch.no_grad():
        reference = shipped_graph(model)(torch.from_numpy(images))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(list(OUTPUT_NAMES), {"image": images})
    diff = max(float(np.abs(o - r.numpy()).max()) for o, r in zip(outputs, reference, strict=True))
    if diff > 1e-3:
        raise RuntimeError(f"ONNX export disagrees with torch: max abs difference {diff:.2e} > 1e-3")
    return diff
