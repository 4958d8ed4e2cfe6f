"""The CPU route: train only the top of the network on the trunk's output, computed once.

Without a GPU the whole recipe takes days on a 2-core CPU (about 1.3 s per image and step).
An ImageNet EfficientNet-Lite frozen up to its last block still serves fractures: on fold 0 of
the v2 split it reached validation AUC 0.915 against 0.928 for the whole network trained on a
GPU (training/README.md, "The CPU route"). So the trunk's two outputs (the stride-16 features
the fine heat map reads, and the last block's input) are computed once per image in each of the
eight orientations a radiograph can be stored in, with ONNX Runtime (about 15 ms an image and
orientation here), and kept on disk; training then runs the last block and the heads only,
a few milliseconds per image and step.

The price: no augmentation beyond the eight orientations (the cached features cannot be
rotated by small angles, scaled or brightened), and the trunk never adapts to radiographs.
The exported model is the whole network with the trunk's ImageNet weights, so inference is
unchanged.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.format import open_memmap

from fracsight.training.loop import Predictions, RunConfig, TrainingSet, build_model
from fracsight.training.network import FractureNet, Outputs

# (quarter turns, mirrored after the turn): index 2 * turns + mirror. Orientation (t, mirror) is
# what loop.predict(..., turns=t) reads for its mirror pass, so prediction reuses the cache.
ORIENTATIONS = tuple((turns, mirror) for turns in range(4) for mirror in (False, True))
_CHUNK = 32  # images between progress marks: a cut-off cache loses at most this many


def orient(x: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """Turn the last two axes by ``turns`` quarter turns, then mirror left-right."""
    x = torch.rot90(x, turns, dims=(-2, -1))
    return torch.flip(x, dims=[-1]) if mirror else x


def unorient(x: torch.Tensor, turns: int, mirror: bool) -> torch.Tensor:
    """The inverse of :func:`orient`: a heat map back in the coordinates of the image as given."""
    x = torch.flip(x, dims=[-1]) if mirror else x
    return torch.rot90(x, -turns, dims=(-2, -1))


@dataclass
class TrunkCache:
    """The trunk's outputs for every prepared image in every orientation (float16, memory-mapped)."""

    mid: np.ndarray  # (N, 8, C16, h16, w16) stride-16 features
    deep: np.ndarray  # (N, 8, C, h, w) the last block's input
    cells: np.ndarray  # (N, 8, H, W) uint8: expert-box cell targets on the heat map's grid


class _Trunk(torch.nn.Module):
    def __init__(self, model: FractureNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.backbone.trunk(image.expand(-1, 3, -1, -1))


def build_cache(
    data: TrainingSet, cfg: RunConfig, folder: Path, say=lambda m: print(m, file=sys.stderr)
) -> TrunkCache:
    """Compute (or finish computing) the trunk cache in ``folder``; a cut-off run continues."""
    import onnxruntime as ort

    folder.mkdir(parents=True, exist_ok=True)
    images, masks = data.images.cpu().numpy(), data.masks.cpu()
    _check_identity(folder, cache_identity(images, masks.numpy(), cfg))
    model = build_model(cfg, torch.device("cpu")).eval().to(memory_format=torch.contiguous_format)
    n, size = len(images), images.shape[-1]
    onnx_path = folder / "trunk.onnx"
    if not onnx_path.exists():
        partial = folder / "trunk.onnx.partial"
        torch.onnx.export(
            _Trunk(model),
            (torch.zeros(1, 1, size, size),),
            str(partial),
            input_names=["image"],
            output_names=["mid", "deep"],
            dynamic_axes={"image": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        partial.replace(onnx_path)
    with torch.no_grad():
        mid, deep = _Trunk(model)(torch.zeros(1, 1, size, size))
    cells_side = size // cfg.heatmap_stride
    shapes = {
        "mid": (n, len(ORIENTATIONS), *mid.shape[1:]),
        "deep": (n, len(ORIENTATIONS), *deep.shape[1:]),
        "cells": (n, len(ORIENTATIONS), cells_side, cells_side),
    }
    progress = folder / "progress.json"
    done = json.loads(progress.read_text())["images"] if progress.exists() else 0
    arrays = {
        name: open_memmap(
            folder / f"{name}.npy",
            mode="r+" if done else "w+",
            dtype=np.uint8 if name == "cells" else np.float16,
            shape=shape,
        )
        for name, shape in shapes.items()
    }
    if done < n:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        say(f"trunk cache: {n} images x {len(ORIENTATIONS)} orientations, {done} done")
        start, t0 = done, time.perf_counter()
        for i in range(done, n):
            x = torch.from_numpy(images[i]).float().mul_(2.0 / 255.0).sub_(1.0)[None, None]
            target = F.adaptive_max_pool2d(masks[i][None, None].float(), cells_side)[0, 0]
            for o, (turns, mirror) in enumerate(ORIENTATIONS):
                image = orient(x, turns, mirror).contiguous().numpy()
                arrays["mid"][i, o], arrays["deep"][i, o] = session.run(None, {"image": image})
                arrays["cells"][i, o] = orient(target, turns, mirror).numpy()
            if (i + 1) % _CHUNK == 0 or i + 1 == n:
                for array in arrays.values():
                    array.flush()
                progress.write_text(json.dumps({"images": i + 1}))
                rate = (i + 1 - start) / (time.perf_counter() - t0)
                if (i + 1) % (_CHUNK * 16) == 0 or i + 1 == n:
                    say(f"trunk cache: {i + 1}/{n} images ({rate:.1f} images/s)")
    del arrays
    return TrunkCache(*(np.load(folder / f"{name}.npy", mmap_mode="r") for name in ("mid", "deep", "cells")))


def cache_identity(images: np.ndarray, masks: np.ndarray, cfg: RunConfig) -> dict[str, object]:
    """What a cache's content depends on: the prepared images and box masks, the input size, the
    backbone and the heat-map grid. A cache shared between runs (``--trunk-cache``) must match."""
    digest = hashlib.sha256()
    for array in (images, masks):
        digest.update(np.ascontiguousarray(array).data)
    return {
        "images_sha256": digest.hexdigest(),
        "n_images": int(len(images)),
        "size": cfg.size,
        "variant": cfg.variant,
        "heatmap_stride": cfg.heatmap_stride,
    }


def _check_identity(folder: Path, identity: dict[str, object]) -> None:
    path = folder / "identity.json"
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded != identity:
            changed = ", ".join(k for k in identity if recorded.get(k) != identity[k])
            raise ValueError(
                f"{folder}: this trunk cache was computed for other images or settings ({changed}); "
                "give another --trunk-cache folder or remove this one"
            )
    elif any(folder.glob("*.npy")):
        raise ValueError(f"{folder}: a trunk cache without identity.json (an older fracsight): remove it")
    else:
        path.write_text(json.dumps(identity, indent=1))


def remove_cache(folder: Path) -> None:
    """The cache is only needed while training (several GB): removed once the run is done."""
    shutil.rmtree(folder, ignore_errors=True)


class CacheSource:
    """Batches for the CPU route: the cached trunk in a random orientation, for the top of the network.

    Same interface as ``loop.ImageSource``; float32 throughout (bf16 is emulated, and slower,
    on CPUs without it).
    """

    def __init__(self, cache: TrunkCache, data: TrainingSet) -> None:
        self.cache = cache
        self.labels, self.regions = data.labels.cpu(), data.regions.cpu()

    def param_groups(self, model: FractureNet, cfg: RunConfig) -> list[dict]:
        top = model.backbone.top_parameters()
        trained = {id(p) for p in top}
        trained |= {id(p) for n, p in model.named_parameters() if not n.startswith("backbone.")}
        for p in model.parameters():
            p.requires_grad_(id(p) in trained)
        # One rate for the last block and the heads: the probe that chose this route trained
        # them together at 1e-3 (the probe of bee0229).
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": cfg.lr_head}]

    def _outputs(self, model: FractureNet, idx: np.ndarray, o: np.ndarray) -> Outputs:
        mid = torch.from_numpy(np.asarray(self.cache.mid[idx, o], dtype=np.float32))
        deep = torch.from_numpy(np.asarray(self.cache.deep[idx, o], dtype=np.float32))
        return model.from_trunk(mid, deep)

    def batch(
        self, model: FractureNet, idx: torch.Tensor, gen: torch.Generator, teachers: list | None
    ) -> tuple[Outputs, torch.Tensor, None]:
        if teachers:
            raise ValueError("the CPU route (--frozen-trunk) trains without teachers (--no-distill)")
        rows = idx.cpu().numpy()
        o = torch.randint(0, len(ORIENTATIONS), (len(rows),), generator=gen).numpy()
        cell_target = torch.from_numpy(np.asarray(self.cache.cells[rows, o], dtype=np.float32))
        return self._outputs(model, rows, o), cell_target, None

    @torch.no_grad()
    def predict(
        self, model: FractureNet, idx: np.ndarray, turns: int = 0, batch_size: int = 128
    ) -> Predictions:
        """As ``loop.predict``: each image turned by ``turns``, averaged with its mirror."""
        model.eval()
        logits, maps, regions = [], [], []
        for start in range(0, len(idx), batch_size):
            rows = np.asarray(idx[start : start + batch_size])
            parts = []
            for mirror in (False, True):
                out = self._outputs(model, rows, np.full(len(rows), 2 * (turns % 4) + int(mirror)))
                parts.append((out.logit, unorient(out.cells, turns % 4, mirror), out.region))
            logits.append((parts[0][0] + parts[1][0]) / 2)
            maps.append((parts[0][1] + parts[1][1]) / 2)
            regions.append((parts[0][2] + parts[1][2]) / 2)
        return Predictions(torch.cat(logits).numpy(), torch.cat(maps).numpy(), torch.cat(regions).numpy())
