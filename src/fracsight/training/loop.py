"""One training run: a FractureNet fitted on some images, validated on others.

Used for every cross-validation fold and for the final (distilled) model, so all of them
share one recipe: AdamW with a lower backbone rate, one warm-up epoch then cosine decay,
class-weighted BCE, an auxiliary per-cell loss against expert-box masks (weak supervision
of the heat map), a small loss for the region probe, bf16 autocast and channels-last,
checkpoint every epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fracsight.training.augment import Augmentation, augment
from fracsight.training.network import FractureNet, Outputs

log = logging.getLogger(__name__)


@dataclass
class RunConfig:
    size: int = 384
    variant: str = "lite0"
    pretrained: bool = True
    epochs: int = 25
    batch_size: int = 64
    lr_head: float = 1e-3
    lr_backbone: float = 3e-4
    weight_decay: float = 1e-2
    patience: int = 8  # epochs without a better validation AUC before stopping
    heatmap_stride: int = 16  # 16: 24 x 24 cells at 384 px; 32: 12 x 12 (the v1 model)
    box_weight: float = 1.0
    box_positive_weight: float = 10.0
    # "linear": a 1x1 convolution reads the stride-16 features (v1-v3); "conv": network.LocalisationHead (v4)
    localisation: str = "linear"
    # Weight of the pointing loss: on images with boxes, minus the log of the share of the map's
    # softmax that falls in a box cell. The box loss above scores every cell on its own; this one
    # scores what the reader is shown, where the map's maximum lies.
    point_weight: float = 0.0
    region_weight: float = 0.1  # the region probe reads detached features: this weight never
    # changes the fracture head, it only sets how fast the probe learns
    distill_weight: float = 0.5  # share of the loss taken from the teacher ensemble, when given
    max_steps: int | None = None  # stop after this many optimiser steps (smoke tests)
    seed: int = 0
    # The CPU route (training/frozen.py): ImageNet trunk frozen, its output cached once per image
    # and orientation, only the last block and the heads trained; no other augmentation.
    frozen_trunk: bool = False
    augmentation: Augmentation = field(default_factory=Augmentation)


@dataclass
class TrainingSet:
    """The whole prepared set as tensors on the training device, indexed by the runs' index arrays."""

    images: torch.Tensor  # (N, S, S) uint8
    masks: torch.Tensor  # (N, S, S) uint8, 1 inside an expert box
    labels: torch.Tensor  # (N,) int64
    regions: torch.Tensor  # (N, 4) float, 0/1 per region of REGIONS; -1 on rows whose regions are unknown

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        masks: np.ndarray,
        labels: np.ndarray,
        regions: np.ndarray,
        device: torch.device,
    ) -> TrainingSet:
        def put(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(a)).to(device)  # a copy: mmap-loaded arrays are read-only

        return cls(put(images), put(masks), put(labels), put(regions).float())


@dataclass
class RunResult:
    state: dict[str, torch.Tensor]  # weights of the best epoch (or the last, without validation)
    best_epoch: int
    best_auc: float | None
    history: list[dict[str, float]]


def auc_score(labels: np.ndarray, scores: np.ndarray) -> float:
    from fracsight.evaluation.metrics import roc_auc

    return float(roc_auc(scores, labels))


def pick_device(name: str = "auto") -> torch.device:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; refused up front rather than failing mid-run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and name != "cuda" and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ValueError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"--device {name}: CUDA is not available here (torch {torch.__version__}, "
                f"built for CUDA {torch.version.cuda or 'none'}); use --device cpu or auto"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def to_input(batch_u8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, S, S) -> float (N, 1, S, S) in [-1, 1]."""
    return batch_u8.unsqueeze(1).float().mul_(2.0 / 255.0).sub_(1.0)


@dataclass
class Predictions:
    logits: np.ndarray  # (N,) image logits
    maps: np.ndarray  # (N, h, w) cell logits, in the coordinates of the image as given
    regions: np.ndarray  # (N, 4) region logits


@torch.no_grad()
def predict(
    model: FractureNet, images: torch.Tensor, batch_size: int = 128, tta: bool = True, turns: int = 0
) -> Predictions:
    """The model's answers for uint8 images on its device, averaged with the mirror image (``tta``),
    as the exported graph does. ``turns`` quarter-turns every image first (to measure orientation)."""
    model.eval()
    device = next(model.parameters()).device
    logits, maps, regions = [], [], []
    for start in range(0, len(images), batch_size):
        x = to_input(images[start : start + batch_size].to(device, non_blocking=True))
        if turns % 4:
            x = torch.rot90(x, turns, dims=(2, 3))
        with _autocast(device):
            out: Outputs = model(_channels_last(x, device))
            logit, cells, region = out.logit, out.cells, out.region
            if tta:
                flip = model(_channels_last(torch.flip(x, dims=[3]), device))
                logit = (logit + flip.logit) / 2
                cells = (cells + torch.flip(flip.cells, dims=[2])) / 2
                region = (region + flip.region) / 2
        if turns % 4:
            cells = torch.rot90(cells, -turns, dims=(1, 2))
        logits.append(logit.float().cpu())
        maps.append(cells.float().cpu())
        regions.append(region.float().cpu())
    return Predictions(torch.cat(logits).numpy(), torch.cat(maps).numpy(), torch.cat(regions).numpy())


def _autocast(device: torch.device):
    # bf16 with channels-last is the fastest measured setting on both GPU and CPU (see README).
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _channels_last(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def build_model(cfg: RunConfig, device: torch.device) -> FractureNet:
    model = FractureNet(cfg.variant, heatmap_stride=cfg.heatmap_stride, localisation=cfg.localisation)
    if cfg.pretrained:
        model.backbone.load_imagenet(cfg.variant)
    model.to(device)
    model.to(memory_format=torch.channels_last)
    return model


class ImageSource:
    """Batches for the whole network: augmented images from a :class:`TrainingSet` on the device."""

    def __init__(self, data: TrainingSet, augmentation: Augmentation) -> None:
        self.data = data
        self.augmentation = augmentation
        self.labels, self.regions = data.labels, data.regions

    def param_groups(self, model: FractureNet, cfg: RunConfig) -> list[dict]:
        head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
        return [
            {"params": list(model.backbone.parameters()), "lr": cfg.lr_backbone},
            {"params": head, "lr": cfg.lr_head},
        ]

    def batch(
        self,
        model: FractureNet,
        idx: torch.Tensor,
        gen: torch.Generator,
        teachers: list[FractureNet] | None,
    ) -> tuple[Outputs, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """(outputs, cell targets from the boxes, teachers' mean probability and map or None)."""
        device = idx.device
        x = to_input(self.data.images[idx])
        m = self.data.masks[idx].unsqueeze(1).float()
        x, m = augment(x, m, self.augmentation, gen)
        x = _channels_last(x, device)
        soft = None
        with _autocast(device):
            out = model(x)
            if teachers:
                with torch.no_grad():
                    outs = [t(x) for t in teachers]
                    soft = (
                        torch.stack([torch.sigmoid(o.logit.float()) for o in outs]).mean(0),
                        torch.stack([torch.sigmoid(o.cells.float()) for o in outs]).mean(0),
                    )
        cell_target = F.adaptive_max_pool2d(m, out.cells.shape[-2:]).squeeze(1)
        return out, cell_target, soft

    def predict(self, model: FractureNet, idx: np.ndarray, turns: int = 0) -> Predictions:
        device = self.data.images.device
        return predict(model, self.data.images[torch.as_tensor(idx, device=device)], turns=turns)


def train_run(
    cfg: RunConfig,
    source: ImageSource,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    device: torch.device,
    checkpoint: Path,
    teachers: list[FractureNet] | None = None,
    progress: Callable[[str], None] | None = None,
) -> RunResult:
    """Train on ``train_idx``; early-stop on validation AUC over ``val_idx`` when given.

    ``source`` gives the batches: :class:`ImageSource` (the whole network on augmented images)
    or ``frozen.CacheSource`` (the CPU route: the last block and heads on the cached trunk).
    With ``teachers``, the loss mixes the hard label with the teachers' mean probability and
    mean cell map on the same augmented batch (knowledge distillation).
    Resumes from ``checkpoint`` when it exists.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    model = build_model(cfg, device)
    optimiser = torch.optim.AdamW(source.param_groups(model, cfg), weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(train_idx) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = min(steps_per_epoch, total // 5 + 1)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_factor)
    labels = source.labels
    y = labels.float()
    n_pos = float(labels[torch.as_tensor(train_idx, device=labels.device)].sum())
    pos_weight = torch.tensor((len(train_idx) - n_pos) / max(n_pos, 1.0), device=device)

    history: list[dict[str, float]] = []
    best = {"auc": -1.0, "epoch": -1, "state": None}
    start_epoch, step = 0, 0
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        scheduler.load_state_dict(saved["scheduler"])
        start_epoch, step, history, best = saved["epoch"] + 1, saved["step"], saved["history"], saved["best"]
        rng = saved["rng"]
        if "torch_rng" in saved:  # absent from checkpoints of older versions
            _set_torch_rng(saved["torch_rng"], gen, device)
        log.info("resumed %s at epoch %d", checkpoint, start_epoch)

    stale = 0 if best["epoch"] < 0 else (start_epoch - 1 - best["epoch"])
    if _stopped(cfg, step, stale, val_idx):
        start_epoch = cfg.epochs  # it had stopped (steps or patience) before the checkpoint was kept
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        order = rng.permutation(train_idx)
        losses = []
        # A bar within the epoch for people at a terminal (a CPU epoch takes minutes);
        # tqdm turns itself off when stderr is not a terminal, so logs keep one line per epoch.
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
            disable=None,
            file=sys.stderr,
        )
        for b in range(steps_per_epoch):
            idx = torch.as_tensor(order[b * cfg.batch_size : (b + 1) * cfg.batch_size], device=device)
            out, cell_target, soft = source.batch(model, idx, gen, teachers)
            loss = _loss(cfg, out, y[idx], cell_target, source.regions[idx], pos_weight, soft)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            if cfg.max_steps is not None and step >= cfg.max_steps:
                break
        bar.close()
        record = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0}
        if val_idx is not None and len(val_idx):
            logits = source.predict(model, val_idx).logits
            val_labels = labels[torch.as_tensor(val_idx, device=labels.device)].cpu().numpy()
            record["val_auc"] = (
                auc_score(val_labels, logits) if 0 < val_labels.sum() < len(val_labels) else 0.5
            )
            if record["val_auc"] > best["auc"]:
                best = {"auc": record["val_auc"], "epoch": epoch, "state": _cpu_state(model)}
                stale = 0
            else:
                stale += 1
        else:
            best = {"auc": -1.0, "epoch": epoch, "state": _cpu_state(model)}
        history.append(record)
        if progress:
            progress(
                f"epoch {epoch + 1}/{cfg.epochs} loss {record['loss']:.4f}"
                + (f" val_auc {record['val_auc']:.4f}" if "val_auc" in record else "")
                + f" ({record['seconds']:.1f} s)"
            )
        save_atomically(
            {
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "step": step,
                "history": history,
                "best": best,
                "rng": rng,
                "torch_rng": _torch_rng(gen, device),
            },
            checkpoint,
        )
        if _stopped(cfg, step, stale, val_idx):
            log.info("stopped at epoch %d (best %d)", epoch, best["epoch"])
            break
    return RunResult(
        state=best["state"],
        best_epoch=int(best["epoch"]),
        best_auc=None if best["auc"] < 0 else float(best["auc"]),
        history=history,
    )


def _loss(
    cfg: RunConfig,
    out: Outputs,
    target: torch.Tensor,
    cell_target: torch.Tensor,
    region_target: torch.Tensor,
    pos_weight: torch.Tensor,
    soft: tuple[torch.Tensor, torch.Tensor] | None,
) -> torch.Tensor:
    """Class-weighted BCE on the image, box supervision of the map, distillation, region probe."""
    logit, cells = out.logit.float(), out.cells.float()
    loss = F.binary_cross_entropy_with_logits(logit, target, pos_weight=pos_weight)
    # Box supervision: fractured images with boxes, and every non-fractured image (all zero).
    has_box = cell_target.flatten(1).amax(1) > 0
    supervised = has_box | (target < 0.5)
    if cfg.box_weight > 0 and bool(supervised.any()):
        weight = 1.0 + (cfg.box_positive_weight - 1.0) * cell_target
        cell_loss = F.binary_cross_entropy_with_logits(cells, cell_target, weight=weight, reduction="none")
        loss = loss + cfg.box_weight * cell_loss[supervised].mean()
    if cfg.point_weight > 0 and bool(has_box.any()):
        share = cells[has_box].flatten(1).log_softmax(1)
        inside = cell_target[has_box].flatten(1) > 0
        in_box = torch.logsumexp(share.masked_fill(~inside, float("-inf")), dim=1)
        loss = loss - cfg.point_weight * in_box.mean()
    if soft is not None:
        w = cfg.distill_weight
        loss = (1 - w) * loss + w * (
            F.binary_cross_entropy_with_logits(logit, soft[0])
            + F.binary_cross_entropy_with_logits(cells, soft[1])
        )
    known = region_target[:, 0] >= 0
    if cfg.region_weight > 0 and bool(known.any()):
        loss = loss + cfg.region_weight * F.binary_cross_entropy_with_logits(
            out.region.float()[known], region_target[known]
        )
    return loss


def save_atomically(obj: object, path: Path) -> None:
    """``torch.save`` to a file beside ``path``, then rename: a run killed while writing leaves no
    half-written checkpoint for ``--resume`` to trip on."""
    partial = path.with_name(path.name + ".partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def _stopped(cfg: RunConfig, step: int, stale: int, val_idx: np.ndarray | None) -> bool:
    """The step limit or the early-stopping patience is reached."""
    if cfg.max_steps is not None and step >= cfg.max_steps:
        return True
    return val_idx is not None and len(val_idx) > 0 and stale >= cfg.patience


def _torch_rng(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor | None]:
    """The torch random states (augmentation draws, dropout) to checkpoint with the weights.

    Without them a resumed run would redraw its augmentations and dropout from the seed, and
    end with other weights than the run that was never stopped.
    """
    return {
        "device_type": device.type,
        "augment": gen.get_state(),
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def _set_torch_rng(
    states: dict[str, torch.Tensor | None], gen: torch.Generator, device: torch.device
) -> None:
    # The checkpoint was loaded with map_location=device; the setters want CPU byte tensors.
    torch.set_rng_state(states["cpu"].cpu())
    if states.get("device_type", device.type) != device.type:
        # Resumed on another kind of device (allowed): its generators have another state format,
        # so the augmentation draws restart from the seed; the result then differs from an unbroken run.
        log.warning(
            "resumed on %s, checkpoint from %s: augmentation draws re-seeded",
            device.type,
            states.get("device_type"),
        )
        return
    gen.set_state(states["augment"].cpu())
    if device.type == "cuda" and states["cuda"] is not None:
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in copy.copy(model.state_dict()).items()}


def load_trained(state: dict[str, torch.Tensor], cfg: RunConfig, device: torch.device) -> FractureNet:
    model = FractureNet(cfg.variant, heatmap_stride=cfg.heatmap_stride, localisation=cfg.localisation)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.to(device).eval()
    model.to(memory_format=torch.channels_last)
    return model
