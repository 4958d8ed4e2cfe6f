"""Batch augmentation on the training device: geometric and intensity changes a radiograph can have.

Applied to images and their box masks together (one affine grid), so box supervision stays
aligned. Quarter turns (0, 90, 180 or 270 degrees, equally likely) together with the mirror
give all eight orientations a radiograph can be stored in: devices and PACS store images
turned, and a model that saw only one orientation reads turned images far worse (held-out
ROC AUC 0.90 upright, 0.66 at 90 degrees, for the model trained without them). Everything
runs as tensor ops on the GPU when there is one: the CPU never becomes the bottleneck of a
GPU training run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    flip: float = 0.5  # probability of a left-right flip (left and right limbs look alike)
    quarter_turns: bool = True  # add a random multiple of 90 degrees to the rotation
    rotate_deg: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.05  # fraction of the image side
    brightness: float = 0.1  # additive, in [-1, 1] units
    contrast: tuple[float, float] = (0.85, 1.15)


def augment(
    images: torch.Tensor, masks: torch.Tensor, aug: Augmentation, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N,1,S,S) in [-1,1], masks (N,1,S,S) in [0,1] -> augmented copies."""
    n, device = images.shape[0], images.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, device=device, generator=generator) * (hi - lo) + lo

    angle = uniform(-aug.rotate_deg, aug.rotate_deg) * (math.pi / 180.0)
    if aug.quarter_turns:
        turns = torch.randint(0, 4, (n,), device=device, generator=generator)
        angle = angle + turns.to(angle.dtype) * (math.pi / 2)
    scale = uniform(*aug.scale)
    flip = torch.where(torch.rand(n, device=device, generator=generator) < aug.flip, -1.0, 1.0)
    tx, ty = uniform(-aug.shift, aug.shift) * 2, uniform(-aug.shift, aug.shift) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1
    ).to(images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    # Sample (x + 1) so that what comes in from outside the image is black (-1), like the letterbox.
    out = F.grid_sample(images + 1.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1.0
    out_masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    contrast = uniform(*aug.contrast).view(n, 1, 1, 1)
    brightness = uniform(-aug.brightness, aug.brightness).view(n, 1, 1, 1)
    out = ((out + 1.0) * contrast - 1.0 + brightness).clamp(-1.0, 1.0)
    return out, out_masks
