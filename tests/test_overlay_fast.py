"""The overlay's fast path gives the pictures the slow one gave: fracsight's own PNG encoder (read
back by Pillow pixel for pixel, text chunks included, no bigger than Pillow's file by much) and the
heat-map layer made channel by channel (the pixels of colouring every pixel at once)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fracsight import explain
from fracsight.io.png_encode import encode_png
from fracsight.preprocess import Letterbox, letterbox_geometry


def _smooth(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """A smooth picture with noise, like an overlay: compresses, and every filter byte matters."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 128 + 100 * np.sin(x / 17.0) * np.cos(y / 23.0)
    planes = [base + rng.normal(0, 6, base.shape) + 20 * c for c in range(channels)]
    return np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3), ("RGBA", 4)])
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (373, 454)])
def test_encoded_png_reads_back_pixel_for_pixel(mode: str, channels: int, shape: tuple[int, int]) -> None:
    pixels = _smooth(*shape, channels)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    read = Image.open(io.BytesIO(encode_png(image)))
    read.load()
    assert read.mode == mode and read.size == image.size
    assert np.array_equal(np.asarray(read), np.asarray(image))


def test_text_chunks_read_back_latin1_and_beyond() -> None:
    """Latin-1 text in tEXt, other text (a Greek reason) in iTXt, as Pillow's add_text writes it."""
    text = {"Software": "fracsight 1.0", "fracsight:reason": "hors du champ: épaule", "Note": "κάταγμα"}
    image = Image.fromarray(_smooth(20, 30, 3), "RGB")
    read = Image.open(io.BytesIO(encode_png(image, text)))
    read.load()
    assert read.text == text


def test_a_bad_keyword_is_refused() -> None:
    with pytest.raises(ValueError, match="keyword"):
        encode_png(Image.new("RGB", (2, 2)), {"": "x"})


def test_other_modes_go_through_pillow() -> None:
    image = Image.fromarray(_smooth(6, 8, 2), "LA")
    read = Image.open(io.BytesIO(encode_png(image, {"a": "b"})))
    read.load()
    assert read.mode == "LA" and np.array_equal(np.asarray(read), np.asarray(image))
    assert read.text == {"a": "b"}


def test_an_overlay_is_about_the_size_pillow_writes(sample_images, default_analyser) -> None:
    """The "up" filter alone compresses an overlay within 15% of Pillow's adaptive filters."""
    for path in sample_images:
        radiograph = default_analyser.read(path)
        overlay = explain.overlay_image(radiograph.pixels, default_analyser.analyse(radiograph))
        pillow = io.BytesIO()
        overlay.save(pillow, format="PNG", compress_level=1)
        ours = encode_png(overlay)
        assert len(ours) <= 1.15 * len(pillow.getvalue()), path.name


def _layer_by_pixel(heatmap: np.ndarray, box: Letterbox, size: tuple[int, int]) -> np.ndarray:
    """The layer as it was drawn before: the four channels of every pixel filled in one array."""
    width, height = size
    scaled = Letterbox(box.size, box.scale * box.width / width, box.pad_x, box.pad_y, height, width)
    heat = explain.heatmap_to_image(heatmap, scaled)
    rgba = np.empty(heat.shape + (4,), dtype=np.uint8)
    v = np.clip(heat, 0.0, 1.0)  # the yellow-to-red ramp as it was written then
    rgba[..., 0] = 255
    rgba[..., 1] = (230.0 * (1.0 - v)).astype(np.uint8)
    rgba[..., 2] = (40.0 * (1.0 - v)).astype(np.uint8)
    floor = explain.OVERLAY_FLOOR
    rgba[..., 3] = np.clip((heat - floor) * (0.55 * 255.0 / (1.0 - floor)), 0, 255)
    return rgba


@pytest.mark.parametrize(("height", "width"), [(454, 373), (1024, 1024), (40, 300)])
def test_layer_by_planes_is_the_layer_by_pixel(height: int, width: int) -> None:
    rng = np.random.default_rng(height)
    heatmap = rng.random((12, 12)).astype(np.float32)
    heatmap[3, 4], heatmap[5, 5] = 0.0, 1.0  # both ends of the scale
    box = letterbox_geometry(height, width, 384)
    layer = explain.heatmap_layer(heatmap, box, (width, height))
    assert layer.mode == "RGBA" and layer.size == (width, height)
    drawn = np.asarray(layer)
    exact = _layer_by_pixel(heatmap, box, (width, height))
    assert np.array_equal(drawn, exact)


def test_layer_ends_of_the_scale() -> None:
    """Below the floor: transparent yellow; at 1: red at the layer's full opacity."""
    box = letterbox_geometry(16, 16, 16)
    cold = np.asarray(explain.heatmap_layer(np.zeros((4, 4), np.float32), box, (8, 8)))
    hot = np.asarray(explain.heatmap_layer(np.ones((4, 4), np.float32), box, (8, 8)))
    assert (cold == (255, 230, 40, 0)).all()
    assert (hot == (255, 0, 0, int(0.55 * 255.0))).all()


def test_pooled_writer_writes_every_picture_in_input_order(
    tmp_path: Path, sample_images: list[Path], default_analyser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pictures are written by threads, finished out of order (the first is the slowest), and one
    fails: every other picture is written, whole, and the rows keep the input order, the failed
    one with its answer and the reason."""
    import errno
    import threading
    import time

    from fracsight.cli import predict
    from fracsight.cli.predict_output import HEATMAP_NOT_WRITTEN

    jpegs = [p for p in sample_images if p.suffix == ".jpg"]
    inputs = []
    for i, source in enumerate(jpegs * 2):  # ten inputs: more than the writers and a batch
        inputs.append(tmp_path / "in" / f"{i:02d}_{source.name}")
        inputs[-1].parent.mkdir(exist_ok=True)
        inputs[-1].write_bytes(source.read_bytes())
    failing = inputs[3].name
    real = explain._write_file
    threads: set[str] = set()

    def write(path: Path, data: bytes) -> None:
        threads.add(threading.current_thread().name)
        if inputs[0].name in path.name:
            time.sleep(0.3)  # the first picture finishes after later ones
        if failing in path.name:
            path.write_bytes(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(explain, "_write_file", write)
    heat = tmp_path / "heat"
    heat.mkdir()
    records = list(predict.rows(default_analyser, inputs, heat))
    assert [Path(r["path"]).name for r in records] == [p.name for p in inputs]
    assert all(r["probability"] is not None for r in records)
    failed = [r for r in records if r.get("error_code") == HEATMAP_NOT_WRITTEN]
    assert [Path(r["path"]).name for r in failed] == [failing]
    assert "No space left on device" in failed[0]["error"] and failed[0]["heatmap"] is None
    written = sorted(Path(r["heatmap"]) for r in records if r["heatmap"])
    assert len(written) == len(inputs) - 1
    assert sorted(heat.iterdir()) == written  # no partial file left, none missing
    for path in written:
        with Image.open(path) as picture:
            picture.load()  # whole
    assert all(name.startswith("heatmap") for name in threads)


def test_pooled_writer_stops_cleanly_when_the_caller_stops(
    tmp_path: Path, sample_images: list[Path], default_analyser
) -> None:
    """A caller that stops after the first row (Ctrl-C, a closed pipe) leaves no thread writing
    and no half-written picture."""
    import threading

    from fracsight.cli import predict

    heat = tmp_path / "heat"
    heat.mkdir()
    produced = predict.rows(default_analyser, sample_images * 2, heat)
    first = next(produced)
    produced.close()
    assert first["heatmap"] and Path(first["heatmap"]).exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("heatmap")]
    assert not [p for p in heat.iterdir() if p.name.endswith(".part")]
