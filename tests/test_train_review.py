"""Review of ``fracsight train``: resume safety, input checks, box masks and the model card."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fracsight.training.examples import Example, load_examples

pytest.importorskip("torch")

# Fast enough that a run which should have been refused still ends in seconds (and fails the test).
_FAST = ["--size", "64", "--folds", "2", "--epochs", "1", "--final-epochs", "1", "--max-steps", "1"]
_FAST += ["--batch-size", "2", "--workers", "1", "--test-fraction", "0.25", "--device", "cpu"]


def _manifest(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "region", "hardware", "boxes", "group"])
        writer.writerows(rows)
    return path


def _jpegs(sample_images: list[Path], sample_labels: dict[str, int]) -> list[tuple[Path, int]]:
    return [(p, sample_labels[p.name]) for p in sample_images if p.name in sample_labels]


# ---------------------------------------------------------------------------------------------
# --resume


def test_resume_with_changed_options_is_refused(
    tmp_path: Path,
    sample_images: list[Path],
    sample_labels: dict[str, int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run started at 64 px must not be continued at 96 px with another seed (mixed models)."""
    from fracsight.cli import main
    from fracsight.training.examples import load_examples
    from fracsight.training.loop import RunConfig
    from fracsight.training.train import TrainConfig, _run_identity, _write_run

    rows = [
        [str(p), y, "hand", 0, "[]", f"g{i}"] for i, (p, y) in enumerate(_jpegs(sample_images, sample_labels))
    ]
    manifest = _manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "run"
    out.mkdir()
    (out / "fold0").mkdir()
    cfg = TrainConfig(
        data=str(manifest),
        out=str(out),
        folds=2,
        test_fraction=0.25,
        final_epochs=1,
        run=RunConfig(size=64, epochs=1, batch_size=2, max_steps=1),
    )
    _write_run(out, cfg, _run_identity(cfg, load_examples(manifest), None))
    args = ["train", str(manifest), "--out", str(out), *_FAST, "--size", "96", "--seed", "3", "--resume"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "run.size: 64 then, 96 now" in err and "run.seed: 0 then, 3 now" in err
    assert not (out / "split.csv").exists()


def _toy_set(n: int = 8):
    """Eight small random images as the batch source train_run takes (default augmentation)."""
    import torch

    from fracsight.training.loop import ImageSource, RunConfig, TrainingSet

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 64, 64), dtype=np.uint8)
    regions = np.eye(4, dtype=np.int8)[np.arange(n) % 4]
    regions[0] = -1  # one image whose region is not known
    data = TrainingSet.from_arrays(
        images, np.zeros((n, 64, 64), np.uint8), np.arange(n) % 2, regions, torch.device("cpu")
    )
    return ImageSource(data, RunConfig().augmentation)


def test_resumed_run_ends_with_the_weights_of_an_unbroken_run(tmp_path: Path) -> None:
    """Augmentation and dropout draws continue after --resume instead of restarting from the seed."""
    import torch

    from fracsight.training.loop import RunConfig, train_run

    data = _toy_set()
    cfg = RunConfig(size=64, epochs=2, batch_size=4, pretrained=False)
    device, idx = torch.device("cpu"), np.arange(8)
    unbroken = train_run(cfg, data, idx, None, device, tmp_path / "a.pt")

    class Killed(Exception):
        pass

    def kill_in_epoch_two(message: str) -> None:
        if message.startswith("epoch 2/"):
            raise Killed

    with pytest.raises(Killed):
        train_run(cfg, data, idx, None, device, tmp_path / "b.pt", progress=kill_in_epoch_two)
    resumed = train_run(cfg, data, idx, None, device, tmp_path / "b.pt")
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in unbroken.history]
    for name, value in unbroken.state.items():
        assert torch.equal(value, resumed.state[name]), name


def test_resume_on_another_kind_of_device_does_not_crash(tmp_path: Path) -> None:
    """A run stopped on a GPU may be resumed on a CPU (device is free on resume): a CUDA
    generator's saved state does not fit a CPU generator, so those draws are re-seeded."""
    import torch

    from fracsight.training.loop import RunConfig, train_run

    data = _toy_set()
    cfg = RunConfig(size=64, epochs=2, batch_size=4, pretrained=False)
    device, idx, checkpoint = torch.device("cpu"), np.arange(8), tmp_path / "g.pt"

    def stop_in_epoch_two(message: str) -> None:
        if message.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, data, idx, None, device, checkpoint, progress=stop_in_epoch_two)
    saved = torch.load(checkpoint, weights_only=False)
    # What a CUDA run leaves: its generator state is 16 bytes (a CPU one is 5056).
    saved["torch_rng"].update(device_type="cuda", augment=torch.zeros(16, dtype=torch.uint8))
    torch.save(saved, checkpoint)
    resumed = train_run(cfg, data, idx, None, device, checkpoint)
    assert len(resumed.history) == 2


def test_resume_of_a_run_that_hit_its_step_limit_trains_no_more(tmp_path: Path) -> None:
    import torch

    from fracsight.training.loop import RunConfig, train_run

    data = _toy_set()
    cfg = RunConfig(size=64, epochs=3, batch_size=4, pretrained=False, max_steps=2)
    args = (cfg, data, np.arange(8), None, torch.device("cpu"), tmp_path / "c.pt")
    first = train_run(*args)
    again = train_run(*args)  # killed after the checkpoint, before the weights were kept
    assert len(first.history) == len(again.history) == 1


def test_a_kill_while_saving_leaves_no_half_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from fracsight.training import train

    def dies_while_writing(obj: object, path: object) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(train.torch, "save", dies_while_writing)
    with pytest.raises(KeyboardInterrupt):
        train._save_state({"w": torch.zeros(2)}, tmp_path / "best.pt")
    assert not (tmp_path / "best.pt").exists()  # --resume retrains it rather than failing to load it


# ---------------------------------------------------------------------------------------------
# Inputs


@pytest.mark.parametrize(
    ("labels", "groups", "message"),
    [
        ("zeros", "distinct", "training needs fractured (1) and non-fractured (0) images"),
        ("given", "one", "each fold needs both classes"),
    ],
)
def test_data_that_cannot_fill_the_folds_is_refused_before_training(
    tmp_path: Path,
    sample_images: list[Path],
    sample_labels: dict[str, int],
    capsys: pytest.CaptureFixture[str],
    labels: str,
    groups: str,
    message: str,
) -> None:
    from fracsight.cli import main

    rows = [
        [str(p), 0 if labels == "zeros" else y, "hand", 0, "[]", f"g{i}" if groups == "distinct" else "g"]
        for i, (p, y) in enumerate(_jpegs(sample_images, sample_labels))
    ]
    manifest = _manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "run"
    assert main(["train", str(manifest), "--out", str(out), *_FAST]) == 2
    err = capsys.readouterr().err
    assert message in err and "m.csv" in err
    assert not list(out.glob("*/*.pt"))


def test_cuda_on_a_machine_without_it_is_a_clear_error(
    tmp_path: Path, sample_images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from fracsight.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    manifest = _manifest(tmp_path / "m.csv", [[str(sample_images[0]), 1, "hand", 0, "[]", "a"]])
    for device, message in (("cuda", "CUDA is not available"), ("gpu", "not auto, cpu, cuda or cuda:N")):
        out = tmp_path / device
        assert main(["train", str(manifest), "--out", str(out), "--device", device]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()  # nothing left behind that would then ask for --resume


def test_manifest_hardware_spellings(tmp_path: Path, sample_images: list[Path]) -> None:
    image = str(sample_images[0])
    spellings = ("yes", "No", "TRUE", "0", "1", "")
    copies = [shutil.copyfile(image, tmp_path / f"h{i}.jpg") for i in range(len(spellings))]
    rows = [[str(c), 1, "hand", h, "[]", "a"] for c, h in zip(copies, spellings, strict=True)]
    parsed = [e.hardware for e in load_examples(_manifest(tmp_path / "m.csv", rows))]
    assert parsed == [True, False, True, False, True, False]
    bad = _manifest(tmp_path / "bad.csv", [[image, 1, "hand", "maybe", "[]", "a"]])
    with pytest.raises(ValueError, match=r"bad.csv line 2: hardware 'maybe' is not a yes/no value"):
        load_examples(bad)


def test_manifest_reversed_box_is_refused(tmp_path: Path, sample_images: list[Path]) -> None:
    # [x, y, width, height] written where [x0, y0, x1, y1] is expected.
    bad = _manifest(tmp_path / "m.csv", [[str(sample_images[0]), 1, "hand", 0, "[[120, 80, 40, 30]]", "a"]])
    with pytest.raises(
        ValueError, match=r"m.csv line 2: column 'boxes': box 0 .* has no area \(needs x1 > x0"
    ):
        load_examples(bad)


def test_manifest_with_groups_on_some_rows_only_is_refused(tmp_path: Path, sample_images: list[Path]) -> None:
    rows = [
        [str(p), 1, "hand", 0, "[]", "patient7" if i < 2 else ""] for i, p in enumerate(sample_images[:4])
    ]
    with pytest.raises(ValueError, match=r"column 'group' is empty on 2 of 4 rows \(lines 4, 5\)"):
        load_examples(_manifest(tmp_path / "m.csv", rows))


def test_manifest_with_one_name_in_two_folders_is_refused(tmp_path: Path, sample_images: list[Path]) -> None:
    """IM0001 in two patients' folders: the name is the image's id downstream, so it must be unique."""
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copyfile(sample_images[0], tmp_path / folder / "IM0001.jpg")
    rows = [[f"{folder}/IM0001.jpg", 1, "hand", 0, "[]", folder] for folder in ("a", "b")]
    with pytest.raises(
        ValueError, match=r"1 image\(s\) listed twice or sharing a file name: lines 2 and 3 \('IM0001'"
    ):
        load_examples(_manifest(tmp_path / "m.csv", rows))


def test_box_off_the_image_marks_no_cell(sample_images: list[Path]) -> None:
    from fracsight.training.arrays import _prepare_one

    image = str(next(p for p in sample_images if p.name == "IMG0000001.jpg"))

    def mask(*boxes: tuple[float, float, float, float]) -> np.ndarray:
        result = _prepare_one((Example(image, "x", 1, boxes=boxes), 64))
        assert not isinstance(result, str), result
        return result[1]

    assert mask((-300, -300, -100, -100)).sum() == 0  # wholly above and left of the image
    np.testing.assert_array_equal(mask((-50, -50, 60, 60)), mask((0, 0, 60, 60)))  # clipped
    np.testing.assert_array_equal(mask((300, 20, 5000, 80)), mask((300, 20, 1e9, 80)))


# ---------------------------------------------------------------------------------------------
# Command and card


def test_card_command_is_the_parsed_command_not_the_callers_argv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from fracsight.cli import build_parser
    from fracsight.cli.train import _command

    monkeypatch.chdir(tmp_path)
    Path("my data.csv").write_text("path,label\n")  # the data must exist: it is checked when parsed
    monkeypatch.setattr("sys.argv", ["pytest", "-k", "something"])
    args = build_parser().parse_args(["train", "my data.csv", "--out", "o", "--no-distill", "--epochs", "3"])
    command = _command(args, args.func.keywords["parser"])
    assert command.startswith("fracsight train 'my data.csv' --out o ")
    assert "--epochs 3" in command and "--no-distill" in command and "--size 384" in command
    assert "pytest" not in command and "--final-epochs" not in command and "--resume" not in command


def test_card_without_students_rates_the_thresholds_and_names_the_device(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from fracsight.training.card import write_card
    from fracsight.training.loop import RunConfig
    from fracsight.training.train import TrainConfig

    rng = np.random.default_rng(0)
    labels = np.array([1] * 30 + [0] * 60)
    with open(tmp_path / "predictions_oof.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "label", "fold", "probability"])
        for i, y in enumerate(labels):
            writer.writerow([f"i{i}", y, i % 2, f"{1 / (1 + np.exp(-rng.normal(2 * y - 1, 1))):.6f}"])
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    cfg = TrainConfig(data="m.csv", out=str(tmp_path), folds=2, distill=False, run=RunConfig(size=64))
    data = SimpleNamespace(labels=labels, refused=[], examples=[Example("x", "x", 0, group="g")])
    summaries = [{"val_auc": 0.7}, {"val_auc": 0.8}]
    test = np.zeros(len(labels), dtype=bool)
    card = write_card(cfg, tmp_path, onnx, data, np.arange(len(labels)), test, summaries, 3, 1e-6, "cpu")
    oof = card["metrics"]["cross_validation"]["out_of_fold"]
    assert {"at_doubt", "at_fracture"} <= set(oof)  # the thresholds were chosen on these scores
    assert oof["at_doubt"]["sensitivity"]["lower"] is not None
    markdown = (tmp_path / "model.card.md").read_text()
    assert "training machine (CPU, bf16" in markdown and "table above" not in markdown
    assert json.loads((tmp_path / "model.card.json").read_text())["recipe"]["training_device"] == "cpu"
