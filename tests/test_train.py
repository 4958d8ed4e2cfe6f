"""Training: grouped splits, augmentation, manifests, and a CPU smoke run of ``fracsight train``."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from fracsight.training.examples import load_examples
from fracsight.training.splits import grouped_holdout, grouped_stratified_folds

# ---------------------------------------------------------------------------------------------
# Splits


def _random_grouped_labels(n: int = 200, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """n items in groups of 1 to 4 (like patients with several views), ~30 % positive groups."""
    rng = np.random.default_rng(seed)
    labels, groups, g = [], [], 0
    while len(labels) < n:
        size = int(rng.integers(1, 5))
        label = int(rng.random() < 0.3)
        labels += [label] * size
        groups += [g] * size
        g += 1
    return np.array(labels[:n]), np.array(groups[:n])


@pytest.mark.parametrize("n_folds", [2, 5])
def test_folds_keep_groups_together_and_balance_classes(n_folds: int) -> None:
    labels, groups = _random_grouped_labels()
    fold = grouped_stratified_folds(labels, groups, n_folds, seed=0)
    assert fold.shape == labels.shape
    assert set(fold.tolist()) == set(range(n_folds))
    for g in np.unique(groups):
        assert len(set(fold[groups == g].tolist())) == 1, f"group {g} straddles folds"
    overall = labels.mean()
    for k in range(n_folds):
        share = labels[fold == k].mean()
        assert abs(share - overall) < 0.1, f"fold {k}: {share:.2f} positive vs {overall:.2f} overall"
        assert abs((fold == k).sum() - len(labels) / n_folds) < 0.25 * len(labels) / n_folds


def test_folds_are_reproducible_by_seed() -> None:
    labels, groups = _random_grouped_labels()
    a = grouped_stratified_folds(labels, groups, 5, seed=11)
    np.testing.assert_array_equal(a, grouped_stratified_folds(labels, groups, 5, seed=11))
    assert not np.array_equal(a, grouped_stratified_folds(labels, groups, 5, seed=12))


def test_folds_need_two() -> None:
    with pytest.raises(ValueError, match="n_folds"):
        grouped_stratified_folds(np.array([0, 1]), np.array([0, 1]), 1, seed=0)


@pytest.mark.parametrize("fraction", [0.15, 0.25])
def test_holdout_fraction_and_groups(fraction: float) -> None:
    labels, groups = _random_grouped_labels()
    test = grouped_holdout(labels, groups, fraction, seed=0)
    assert test.dtype == bool
    assert abs(test.mean() - fraction) < 0.05
    for g in np.unique(groups):
        assert len(set(test[groups == g].tolist())) == 1, f"group {g} straddles the test split"
    assert abs(labels[test].mean() - labels.mean()) < 0.1


@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9])
def test_holdout_fraction_out_of_range(fraction: float) -> None:
    labels, groups = _random_grouped_labels()
    with pytest.raises(ValueError, match="test fraction"):
        grouped_holdout(labels, groups, fraction, seed=0)


# ---------------------------------------------------------------------------------------------
# Augmentation


def test_identity_augmentation_leaves_images_unchanged() -> None:
    torch = pytest.importorskip("torch")
    from fracsight.training.augment import Augmentation, augment

    images = torch.rand(3, 1, 32, 32) * 2 - 1
    masks = (torch.rand(3, 1, 32, 32) > 0.8).float()
    identity = Augmentation(
        flip=0.0,
        quarter_turns=False,
        rotate_deg=0.0,
        scale=(1.0, 1.0),
        shift=0.0,
        brightness=0.0,
        contrast=(1.0, 1.0),
    )
    out, out_masks = augment(images, masks, identity)
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_masks, masks)


def test_flip_moves_image_and_mask_together() -> None:
    torch = pytest.importorskip("torch")
    from fracsight.training.augment import Augmentation, augment

    images = torch.full((2, 1, 32, 32), -1.0)
    images[:, :, 8:16, 2:10] = 1.0  # a bright block on the left
    masks = (images > 0).float()
    flip = Augmentation(
        flip=1.0,
        quarter_turns=False,
        rotate_deg=0.0,
        scale=(1.0, 1.0),
        shift=0.0,
        brightness=0.0,
        contrast=(1.0, 1.0),
    )
    out, out_masks = augment(images, masks, flip)
    torch.testing.assert_close(out, torch.flip(images, dims=[3]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out_masks, torch.flip(masks, dims=[3]))


def test_quarter_turns_give_every_orientation_with_the_mask_turned_alike() -> None:
    """Each image comes out turned by 0, 90, 180 or 270 degrees, exactly, with its mask."""
    torch = pytest.importorskip("torch")
    from fracsight.training.augment import Augmentation, augment

    images = torch.full((64, 1, 32, 32), -1.0)
    images[:, :, 4:12, 2:26] = 1.0  # a wide block near the top: every turn looks different
    masks = (images > 0).float()
    turns_only = Augmentation(
        flip=0.0, rotate_deg=0.0, scale=(1.0, 1.0), shift=0.0, brightness=0.0, contrast=(1.0, 1.0)
    )
    out, out_masks = augment(images, masks, turns_only, torch.Generator().manual_seed(0))
    seen = set()
    for i in range(len(images)):
        turned = [torch.rot90(images[i], k, dims=(1, 2)) for k in range(4)]
        matches = [k for k, t in enumerate(turned) if torch.allclose(out[i], t, atol=1e-4)]
        assert len(matches) == 1, f"image {i} is not an exact quarter turn of its input"
        torch.testing.assert_close(out_masks[i], torch.rot90(masks[i], matches[0], dims=(1, 2)))
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_random_augmentation_stays_in_range_and_keeps_boxes_aligned() -> None:
    torch = pytest.importorskip("torch")
    from fracsight.training.augment import Augmentation, augment

    images = torch.full((8, 1, 64, 64), -1.0)
    images[:, :, 20:40, 24:44] = 1.0
    masks = (images > 0).float()
    gen = torch.Generator().manual_seed(0)
    out, out_masks = augment(images, masks, Augmentation(brightness=0.0, contrast=(1.0, 1.0)), gen)
    assert out.min() >= -1.0 and out.max() <= 1.0
    # The mask still covers the (moved) bright block: inside the mask the image is bright.
    inside = out[out_masks > 0.5]
    assert inside.numel() > 0 and inside.mean() > 0.8


# ---------------------------------------------------------------------------------------------
# Manifests

_HEADER = ["path", "label", "region", "hardware", "boxes", "group"]


def _write_rows(path: Path, rows: list[list]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(_HEADER)
        writer.writerows(rows)
    return path


def test_manifest_bad_label_names_the_row(tmp_path: Path, sample_images: list[Path]) -> None:
    manifest = _write_rows(
        tmp_path / "m.csv",
        [
            [str(sample_images[0]), "0", "leg", "0", "[]", "a"],
            [str(sample_images[1]), "1", "hand", "0", "[]", "b"],
            [str(sample_images[2]), "2", "hand", "0", "[]", "c"],
        ],
    )
    with pytest.raises(ValueError, match=r"line 4: label '2' in column 'label' is not a fracture label"):
        load_examples(manifest)


def test_manifest_bad_label_through_the_cli(
    tmp_path: Path, sample_images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from fracsight.cli import main

    manifest = _write_rows(tmp_path / "m.csv", [[str(sample_images[0]), "2", "leg", "0", "[]", "a"]])
    assert main(["train", str(manifest), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "line 2" in err and "'2'" in err


def test_manifest_bad_boxes_and_missing_columns(tmp_path: Path, sample_images: list[Path]) -> None:
    bad_box = _write_rows(
        tmp_path / "box.csv", [[str(sample_images[0]), "1", "leg", "0", "[[1, 2, 3]]", "a"]]
    )
    with pytest.raises(ValueError, match="line 2: column 'boxes': boxes must be a JSON list of"):
        load_examples(bad_box)
    not_json = _write_rows(tmp_path / "json.csv", [[str(sample_images[0]), "1", "leg", "0", "1,2,3,4", "a"]])
    with pytest.raises(ValueError, match="line 2: column 'boxes': boxes '1,2,3,4' are not JSON"):
        load_examples(not_json)
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("path,group\nx.jpg,a\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['label'\]"):
        load_examples(no_label)


def test_manifest_relative_paths_and_defaults(tmp_path: Path, sample_images: list[Path]) -> None:
    shutil.copyfile(sample_images[0], tmp_path / "a.jpg")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.jpg,1\n")
    (example,) = load_examples(manifest)
    assert Path(example.path) == tmp_path / "a.jpg"
    assert (example.label, example.region, example.hardware, example.boxes, example.group) == (
        1,
        "unknown",
        False,
        (),
        "",
    )


# ---------------------------------------------------------------------------------------------
# Smoke run of the whole recipe on 16 images at 64 px

_TRAIN_ARGS = [
    "--size",
    "64",
    "--folds",
    "2",
    "--epochs",
    "1",
    "--max-steps",
    "2",
    "--batch-size",
    "4",
    "--workers",
    "1",
    "--test-fraction",
    "0.25",
]


def _fracatlas_rows(root: Path) -> list[list]:
    """8 fractured images with boxes and 8 without fracture; pairs of one label share a group."""
    from fracsight.data.fracatlas import load_fracatlas

    items = sorted(load_fracatlas(root), key=lambda item: item.image_id)
    fractured = [i for i in items if i.fractured and i.boxes][:8]
    normal = [i for i in items if not i.fractured][:8]
    rows = []
    for n, item in enumerate(fractured + normal):
        boxes = json.dumps([[round(v, 1) for v in b] for b in item.boxes])
        rows.append(
            [str(item.path), int(item.fractured), item.region.value, int(item.hardware), boxes, f"g{n // 2}"]
        )
    return rows


def _sample_rows(samples: Path, labels: dict[str, int], folder: Path) -> list[list]:
    """Without the shared data: 16 variants of the bundled samples shaped like ``_fracatlas_rows``.

    8 fractured and 8 normal images in 8 groups of two variants of one sample (4 groups per class),
    so a held-out quarter, 2 folds and a given test split each still find whole groups of both
    classes; one group per sample (5 groups) is too few for a given test split. Variants of one
    sample in two groups stand in for two patients: this run tests the mechanics of splitting and
    training, not the accuracy of the model, and the positive variants' central box likewise stands
    in for an expert box.
    """
    variants = [
        lambda im: im,
        ImageOps.mirror,
        lambda im: im.crop((8, 8, im.width - 8, im.height - 8)),
        lambda im: im.point(lambda v: min(255, int(v * 0.9) + 12)),
    ]
    rows: list[list] = []
    for label in (1, 0):
        names = sorted(n for n, y in labels.items() if y == label)
        for j in range(4):
            # Group j: two variants of one sample; a sample's next group takes its next two variants.
            name = names[j % len(names)]
            stem = Path(name).stem
            for v in (2 * (j // len(names)), 2 * (j // len(names)) + 1):
                with Image.open(samples / name) as im:
                    image = variants[v](ImageOps.exif_transpose(im).convert("L"))
                path = folder / f"{stem}_v{v}.png"
                image.save(path)
                w, h = image.size
                boxes = json.dumps([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]] if label else [])
                rows.append([str(path), label, "unknown", 0, boxes, f"{stem}_{j // len(names)}"])
    return rows


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def manifest(
    tmp_path_factory: pytest.TempPathFactory, samples_dir: Path, sample_labels: dict[str, int]
) -> Path:
    folder = tmp_path_factory.mktemp("manifest")
    fracatlas = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fracatlas"
    if (fracatlas / "dataset.csv").is_file():
        rows = _fracatlas_rows(fracatlas)
    else:
        rows = _sample_rows(samples_dir, sample_labels, folder)
    assert len(rows) == 16 and sum(int(r[1]) for r in rows) == 8
    return _write_rows(folder / "manifest.csv", rows)


@pytest.fixture(scope="module")
def trained(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One fresh training run; the fresh model is copied aside before any test resumes the run."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from fracsight.cli import main

    out = tmp_path_factory.mktemp("train") / "run"
    code = main(["train", str(manifest), "--out", str(out), *_TRAIN_ARGS])
    fresh = tmp_path_factory.mktemp("fresh")
    for name in ("model.onnx", "model.card.json", "model.card.md"):
        if (out / name).exists():
            shutil.copyfile(out / name, fresh / name)
    return {"code": code, "out": out, "fresh": fresh, "manifest": manifest}


@pytest.fixture(scope="module")
def resumed(trained: dict) -> dict:
    from fracsight.cli import main

    out = trained["out"]
    checkpoints = sorted(out.glob("*/best.pt"))
    before = {p: p.stat().st_mtime_ns for p in checkpoints}
    code = main(["train", str(trained["manifest"]), "--out", str(out), *_TRAIN_ARGS, "--resume"])
    return {
        "code": code,
        "before": before,
        "after": {p: p.stat().st_mtime_ns for p in checkpoints},
    }


def _onnx_vs_checkpoint(onnx_path: Path, checkpoint: Path, localisation: str = "linear") -> float:
    """Largest |ONNX - torch| for the checkpoint's weights (with the graph's flip TTA) on random input."""
    import onnxruntime as ort
    import torch

    from fracsight.training.network import FractureNet

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = FractureNet("lite0", localisation=localisation)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model.eval()
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 64, 64)).astype(np.float32)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        out, flipped = model(xt), model(torch.flip(xt, dims=[3]))
        ref_logit = ((out.logit + flipped.logit) / 2).numpy()
        ref_map = ((out.cells + torch.flip(flipped.cells, dims=[2])) / 2).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got_logit, got_map = session.run(["logit", "heatmap"], {"image": x})
    return max(float(np.abs(got_logit - ref_logit).max()), float(np.abs(got_map - ref_map).max()))


@pytest.mark.slow
def test_train_writes_model_card_and_predictions(trained: dict) -> None:
    assert trained["code"] == 0
    out = trained["out"]
    for name in ("model.onnx", "model.card.json", "model.card.md", "split.csv", "predictions_oof.csv"):
        assert (out / name).is_file(), name
    card = json.loads((out / "model.card.json").read_text())
    assert card["model_id"] and card["input_size"] == 64
    assert 0.0 <= card["thresholds"]["doubt"] <= card["thresholds"]["fracture"] <= 1.0
    # The card names the ONNX file it describes, and is honest about how little data it saw.
    assert card["model_id"].endswith(_digest(out / "model.onnx")[:12])
    assert card["data"]["n_images"] == 16 and card["data"]["n_fractured"] == 8
    assert "too small" in card["metrics"]["cross_validation"]["out_of_fold"]["warning"]
    # How far each fold's own model lands from the pooled thresholds: one rate per fold.
    spread = card["metrics"]["cross_validation"]["per_fold_at_thresholds"]
    assert set(spread) == {"doubt", "fracture"}
    assert all(0.0 <= r <= 1.0 for r in spread["doubt"]["specificity"])
    assert len(spread["doubt"]["sensitivity"]) == 2 and "Fold to fold" in (out / "model.card.md").read_text()
    assert card["model_id"] in (out / "model.card.md").read_text()
    with open(out / "predictions_oof.csv", newline="") as fh:
        oof = list(csv.DictReader(fh))
    assert oof and all(0.0 <= float(r["probability"]) <= 1.0 for r in oof)


@pytest.mark.slow
def test_train_card_records_the_images_it_trained_on(trained: dict) -> None:
    """The card keeps the development images' content hashes: every one matches, no test image does."""
    from fracsight.data.image_hashes import image_digests
    from fracsight.model_card import ModelCard
    from fracsight.training.examples import load_examples

    images = ModelCard.for_model(trained["out"] / "model.onnx").training_images
    with open(trained["out"] / "split.csv", newline="") as fh:
        split = {r["image_id"]: r["split"] for r in csv.DictReader(fh)}
    assert images is not None and images.n == sum(s == "dev" for s in split.values())
    for example in load_examples(trained["manifest"]):
        digests = image_digests(example.path)
        assert images.includes(digests.file, digests.pixels) == (split[example.image_id] == "dev")


@pytest.mark.slow
def test_train_split_keeps_groups_together(trained: dict) -> None:
    with open(trained["out"] / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 16
    by_group: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for r in rows:
        by_group[r["group"]].add((r["split"], r["fold"]))
        assert (r["split"] == "test") == (r["fold"] == "-1")
    assert all(len(places) == 1 for places in by_group.values()), dict(by_group)
    # About a quarter is held out, in whole groups (coarse with 8 groups).
    n_test = sum(r["split"] == "test" for r in rows)
    assert 1 <= n_test <= 8
    assert {r["fold"] for r in rows if r["split"] == "dev"} == {"0", "1"}
    with open(trained["out"] / "predictions_oof.csv", newline="") as fh:
        oof_ids = {r["image_id"] for r in csv.DictReader(fh)}
    assert oof_ids == {r["image_id"] for r in rows if r["split"] == "dev"}


@pytest.mark.slow
def test_trained_model_runs_in_the_analyser(trained: dict, sample_images: list[Path]) -> None:
    from fracsight.decide import categorise
    from fracsight.inference import Analyser
    from fracsight.io import read_radiograph

    analyser = Analyser(trained["fresh"] / "model.onnx")
    assert analyser.size == 64
    finding = analyser.analyse(read_radiograph(sample_images[0]))
    assert 0.0 <= finding.probability <= 1.0
    assert finding.category == categorise(finding.probability, analyser.thresholds)
    assert finding.heatmap.shape == (4, 4)  # 64 px at 16 px per cell


@pytest.mark.slow
def test_onnx_matches_the_saved_checkpoint(trained: dict) -> None:
    assert _onnx_vs_checkpoint(trained["fresh"] / "model.onnx", trained["out"] / "final" / "best.pt") < 1e-3


@pytest.mark.slow
def test_resume_does_not_retrain(trained: dict, resumed: dict) -> None:
    assert resumed["code"] == 0
    assert len(resumed["before"]) == 5  # 2 folds, 2 cross-fitted students, the final model
    assert resumed["after"] == resumed["before"], "a checkpoint was rewritten on --resume"
    out = trained["out"]
    card = json.loads((out / "model.card.json").read_text())
    assert card["model_id"].endswith(_digest(out / "model.onnx")[:12])
    # Exported from the saved weights, the resumed model is the checkpoint's model.
    assert _onnx_vs_checkpoint(out / "model.onnx", out / "final" / "best.pt") < 1e-3


@pytest.mark.slow
def test_resume_keeps_the_same_model(trained: dict, resumed: dict) -> None:
    assert resumed["code"] == 0
    assert _digest(trained["out"] / "model.onnx") == _digest(trained["fresh"] / "model.onnx")


@pytest.mark.slow
def test_non_empty_out_without_resume_is_refused(trained: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from fracsight.cli import main

    out = trained["out"]
    before = _digest(out / "model.onnx")
    assert main(["train", str(trained["manifest"]), "--out", str(out), *_TRAIN_ARGS]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--resume" in err
    assert _digest(out / "model.onnx") == before


def test_size_must_be_a_multiple_of_32(
    tmp_path: Path, sample_images: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    from fracsight.cli import main

    manifest = _write_rows(tmp_path / "m.csv", [[str(sample_images[0]), "1", "leg", "0", "[]", "a"]])
    assert main(["train", str(manifest), "--out", str(tmp_path / "out"), "--size", "50"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_folds_stay_even_when_groups_tie() -> None:
    """Equal groups of one class are spread evenly, not heaped by chance on one fold."""
    labels = np.array([1] * 6 + [0] * 6)
    groups = np.array([1, 1, 2, 2, 3, 3, 5, 5, 6, 6, 7, 7])
    for seed in range(5):
        folds = grouped_stratified_folds(labels, groups, 2, seed)
        assert sorted(np.bincount(folds).tolist()) == [6, 6]


# ---------------------------------------------------------------------------------------------
# Region flags, a given test split, parallel runs, adding the students later


def test_manifest_region_flags(tmp_path: Path, sample_images: list[Path]) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "path,label,region,region_flags\n"
        f"{sample_images[0]},1,mixed,shoulder;Hand\n"
        f"{sample_images[1]},0,leg,\n"
        f"{sample_images[2]},0,unknown,\n"
    )
    mixed, leg, unknown = load_examples(path)
    assert mixed.region_flags == ("hand", "shoulder")  # REGIONS order, any case
    assert mixed.region_targets() == [1, 0, 0, 1]
    assert leg.region_flags == ("leg",)  # no flags given: the region stands for itself
    assert unknown.region_flags == () and unknown.region_targets() is None
    path.write_text(f"path,label,region_flags\n{sample_images[0]},1,hand;knee\n")
    with pytest.raises(ValueError, match=r"line 2: region_flags 'hand;knee' names knee"):
        load_examples(path)


def test_fracatlas_region_flags_follow_dataset_csv() -> None:
    root = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fracatlas"
    if not (root / "dataset.csv").is_file():
        pytest.skip("needs ../shared/data/fracatlas")
    with open(root / "dataset.csv", newline="") as fh:
        rows = {r["image_id"]: r for r in csv.DictReader(fh)}
    examples = load_examples(root)
    mixed = [e for e in examples if e.region == "mixed"]
    assert mixed and all(len(e.region_flags) >= 2 for e in mixed)
    for e in examples[::97]:
        row = rows[e.image_id + ".jpg"]
        assert e.region_flags == tuple(r for r in ("hand", "leg", "hip", "shoulder") if row[r] == "1")


@pytest.fixture(scope="module")
def split_given(trained: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A second run that takes its test split from the first run's split.csv, trained in parallel."""
    from fracsight.cli import main

    folder = tmp_path_factory.mktemp("given")
    with open(trained["out"] / "split.csv", newline="") as fh:
        first = list(csv.DictReader(fh))
    # Hold out other images than the first run did, one of them in a group with a development image.
    test_ids = [r["image_id"] for r in first if r["split"] == "dev"][:3]
    split = folder / "split.csv"
    with open(split, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "split"])
        writer.writerows([[i, "test" if i in test_ids else "dev"] for i in (r["image_id"] for r in first)])
    out = folder / "run"
    args = [*_TRAIN_ARGS, "--test-split", str(split), "--parallel", "2"]
    code = main(["train", str(trained["manifest"]), "--out", str(out), *args])
    return {
        "code": code,
        "out": out,
        "test_ids": set(test_ids),
        "args": args,
        "manifest": trained["manifest"],
    }


@pytest.mark.slow
def test_a_given_test_split_is_held_out_and_its_duplicates_left_out(split_given: dict) -> None:
    assert split_given["code"] == 0
    with open(split_given["out"] / "split.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["image_id"] for r in rows if r["split"] == "test"} == split_given["test_ids"]
    test_groups = {r["group"] for r in rows if r["split"] == "test"}
    excluded = {r["image_id"] for r in rows if r["split"] == "excluded"}
    # Every non-test image in a test image's group is left out of training, and only those.
    assert excluded == {r["image_id"] for r in rows if r["group"] in test_groups and r["split"] != "test"}
    assert excluded, "the fixture puts a development image in a test image's group"
    with open(split_given["out"] / "predictions_test.csv", newline="") as fh:
        assert {r["image_id"] for r in csv.DictReader(fh)} == split_given["test_ids"]


@pytest.mark.slow
def test_parallel_runs_train_the_same_models_as_one_at_a_time(
    split_given: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """--parallel only changes where runs train: the weights are those of a sequential run."""
    import torch

    from fracsight.cli import main

    out = tmp_path_factory.mktemp("sequential") / "run"
    args = list(split_given["args"])
    args[args.index("--parallel") + 1] = "1"
    assert main(["train", str(split_given["manifest"]), "--out", str(out), *args]) == 0
    for run in ("fold0", "fold1", "student0", "student1", "final"):
        a = torch.load(out / run / "best.pt", weights_only=True)
        b = torch.load(split_given["out"] / run / "best.pt", weights_only=True)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), run
    assert not (split_given["out"] / "arrays").exists(), "the arrays shared with workers are removed"


@pytest.mark.slow
def test_students_can_be_added_to_a_run_finished_without_them(
    trained: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A run cut off during the students finishes its final model with --no-cross-fit, and a later
    --resume adds the students; the fold models and the final model are not trained again."""
    from fracsight.cli import main

    out = tmp_path_factory.mktemp("late") / "run"
    shutil.copytree(trained["out"], out)
    for run in ("student0", "student1", "final"):
        shutil.rmtree(out / run)
    manifest = str(trained["manifest"])
    assert main(["train", manifest, "--out", str(out), *_TRAIN_ARGS, "--resume", "--no-cross-fit"]) == 0
    card = json.loads((out / "model.card.json").read_text())
    assert "fold models" in card["threshold_source"] and not (out / "student0").exists()
    final = (out / "final" / "best.pt").stat().st_mtime_ns
    assert main(["train", manifest, "--out", str(out), *_TRAIN_ARGS, "--resume"]) == 0
    card = json.loads((out / "model.card.json").read_text())
    assert "cross-fitted" in card["threshold_source"] and (out / "student1" / "best.pt").is_file()
    assert (out / "final" / "best.pt").stat().st_mtime_ns == final
    assert _digest(out / "model.onnx") == _digest(trained["fresh"] / "model.onnx")


@pytest.mark.slow
def test_frozen_trunk_route_end_to_end(manifest: Path, tmp_path: Path) -> None:
    """The CPU route through the CLI: folds and final model on the cached trunk, the whole network
    exported, the recipe on the card, and the several-GB cache gone once the run is done."""
    from fracsight.cli import main

    out = tmp_path / "run"
    code = main(["train", str(manifest), "--out", str(out), *_TRAIN_ARGS, "--frozen-trunk", "--no-distill"])
    assert code == 0
    assert sorted(p.parent.name for p in out.glob("*/best.pt")) == ["final", "fold0", "fold1"]
    assert not (out / "trunk-cache").exists()
    card = json.loads((out / "model.card.json").read_text())
    assert card["recipe"]["run"]["frozen_trunk"] is True
    assert card["recipe"]["augmentation"]["orientations"] == 8
    assert "fold models" in card["threshold_source"]
    assert _onnx_vs_checkpoint(out / "model.onnx", out / "final" / "best.pt") < 1e-3
    with open(out / "predictions_test.csv", newline="") as fh:
        test_rows = list(csv.DictReader(fh))
    assert test_rows and all(0.0 <= float(r["final_turned90"]) <= 1.0 for r in test_rows)


@pytest.mark.slow
def test_fold_average_route_end_to_end(manifest: Path, tmp_path: Path) -> None:
    """v4's recipe: the conv localisation head, the shipped model the fold models' average (weights
    and batch-norm statistics), thresholds from the fold models' out-of-fold scores, and a trunk
    cache kept for the next seed, which reuses it; a cache of other images is refused."""
    import torch

    from fracsight.cli import main

    cache = tmp_path / "cache"
    v4 = [*_TRAIN_ARGS, "--frozen-trunk", "--no-distill", "--localisation", "conv", "--point-weight", "0.5",
          "--final", "fold-average", "--trunk-cache", str(cache)]  # fmt: skip
    out = tmp_path / "seed0"
    assert main(["train", str(manifest), "--out", str(out), *v4]) == 0
    assert sorted(p.parent.name for p in out.glob("*/best.pt")) == ["final", "fold0", "fold1"]
    assert (cache / "identity.json").is_file() and (cache / "mid.npy").is_file()
    folds = [torch.load(out / f"fold{k}" / "best.pt", weights_only=True) for k in (0, 1)]
    final = torch.load(out / "final" / "best.pt", weights_only=True)
    for key in ("cam.weight", "fine_head.body.1.weight", "backbone._conv_head.weight"):
        torch.testing.assert_close(final[key].float(), (folds[0][key].float() + folds[1][key].float()) / 2,
                                   atol=1e-3, rtol=1e-3)  # fmt: skip
    assert not torch.equal(folds[0]["cam.weight"], folds[1]["cam.weight"])
    # The batch-norm statistics are averaged too (recomputing them moved the scale: see train.py).
    top_bn = "fine_head.bn.running_var"
    mean_var = (folds[0][top_bn].float() + folds[1][top_bn].float()) / 2
    torch.testing.assert_close(final[top_bn].float(), mean_var, atol=1e-3, rtol=1e-3)
    card = json.loads((out / "model.card.json").read_text())
    assert "average" in card["recipe"]["final_model"] and "fold models" in card["threshold_source"]
    assert card["recipe"]["run"]["localisation"] == "conv"
    assert _onnx_vs_checkpoint(out / "model.onnx", out / "final" / "best.pt", "conv") < 1e-3

    before = (cache / "mid.npy").stat().st_mtime_ns
    assert main(["train", str(manifest), "--out", str(tmp_path / "seed1"), *v4, "--seed", "1"]) == 0
    assert (cache / "mid.npy").stat().st_mtime_ns == before  # reused, not recomputed

    other = tmp_path / "other.csv"
    other.write_text("".join(manifest.read_text().splitlines(keepends=True)[:-2]))  # two images fewer
    assert main(["train", str(other), "--out", str(tmp_path / "other"), *v4]) == 2


@pytest.mark.slow
def test_fold_ensemble_route_ships_the_fold_models(manifest: Path, tmp_path: Path) -> None:
    """``--final fold-ensemble``: no model is trained after the folds; the ONNX graph is the fold
    checkpoints' mean probability, the test predictions' "final" column is their ensemble, and
    the card says so."""
    import onnxruntime as ort
    import torch

    from fracsight.cli import main
    from fracsight.training.export import FoldEnsembleTTA
    from fracsight.training.network import FractureNet

    out = tmp_path / "run"
    args = [*_TRAIN_ARGS, "--frozen-trunk", "--no-distill", "--localisation", "conv", "--point-weight", "0.5",
            "--final", "fold-ensemble"]  # fmt: skip
    assert main(["train", str(manifest), "--out", str(out), *args]) == 0
    assert sorted(p.parent.name for p in out.glob("*/best.pt")) == ["fold0", "fold1"]
    members = []
    for k in (0, 1):
        member = FractureNet("lite0", localisation="conv")
        state = torch.load(out / f"fold{k}" / "best.pt", map_location="cpu", weights_only=True)
        member.load_state_dict({key: v.float() for key, v in state.items()})
        members.append(member.eval())
    ensemble = FoldEnsembleTTA(members).eval()
    assert ensemble.shared_trunk  # the CPU route's fold models share the frozen trunk
    x = np.random.default_rng(0).uniform(-1, 1, (3, 1, 64, 64)).astype(np.float32)
    with torch.no_grad():
        reference = ensemble(torch.from_numpy(x))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    logit, heat = session.run(["logit", "heatmap"], {"image": x})
    np.testing.assert_allclose(logit, reference.logit.numpy(), atol=1e-3)
    np.testing.assert_allclose(heat, reference.cells.numpy(), atol=1e-3)
    with (out / "predictions_test.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(abs(float(r["final"]) - float(r["ensemble"])) < 2e-6 for r in rows)
    card = json.loads((out / "model.card.json").read_text())
    assert "ensemble" in card["recipe"]["final_model"]
    assert "ensemble is the shipped model" in card["threshold_source"]
