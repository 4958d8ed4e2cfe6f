"""The model card: what a model was trained on, how, how well it did and on what data.

Written by ``fracsight train`` beside the ONNX file as ``NAME.card.json`` (read by
inference: thresholds, input size, identity) and ``NAME.card.md`` (read by people).
Every metric names the data it was measured on, with n and a 95% CI.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fracsight import model_card
from fracsight.data.image_hashes import DIGEST_CHARS, image_digests
from fracsight.data.labels import REGIONS
from fracsight.evaluation.metrics import auc_with_ci, binary_rates, wilson_interval
from fracsight.evaluation.operating_points import choose_thresholds
from fracsight.model_card import TrainingImages
from fracsight.preprocess import PREPROCESSING
from fracsight.training.examples import Example

INTENDED_USE = (
    "An aid for clinicians reading musculoskeletal radiographs (hand, leg, hip, shoulder): it flags "
    "images that may show a fracture and shows where. It is not a diagnosis and must not be used to "
    "rule a fracture out without a clinician's reading."
)
_LIMITATIONS = [
    "Trained on FracAtlas only: adult radiographs from three hospitals in Bangladesh; other sites, "
    "devices, children and other body parts (spine, skull, chest, ribs) are untested.",
    "Images showing orthopaedic hardware are almost all fractured in the training data: the model may "
    "read metal as fracture. See the hardware breakdown.",
    "Hand and multi-region ('mixed') images are the hardest; subtle, undisplaced and old fractures are "
    "missed more often.",
    "Thresholds were chosen on out-of-fold predictions of the development data; a new site should "
    "re-derive them on its own cases (`fracsight thresholds`).",
]


def limitations(run) -> list[str]:
    """The card's failure modes; the heat-map and orientation lines follow the recipe that was run."""
    size, stride = run.size, run.heatmap_stride
    items = [
        *_LIMITATIONS,
        f"The heat map shows where the network's evidence lies, at {stride}-pixel cells of the {size}-pixel "
        f"input ({size // stride} x {size // stride}): it is coarse and can point at the wrong bone.",
    ]
    if run.augmentation.quarter_turns:
        items.append(
            "Orientation: training turned and mirrored images into all eight orientations; the held-out "
            "table gives the model's accuracy with every image turned by 90, 180 and 270 degrees."
        )
    else:
        items.append(
            f"Orientation: training turned images by at most {run.augmentation.rotate_deg:g} degrees, so a "
            "radiograph stored turned by 90 or 180 degrees from how FracAtlas shows it is read much worse "
            "(measure it with `scripts/orientation_check.py`); analyse radiographs as they are displayed."
        )
    return items


SMALL_CELL = 10  # fewer positives or negatives than this: the cell is reported as too small


def _metrics(scores: np.ndarray, labels: np.ndarray, thresholds: dict[str, float], seed: int) -> dict:
    n_pos, n = int(labels.sum()), int(labels.size)
    out: dict = {"n": n, "n_fractured": n_pos}
    if n_pos < SMALL_CELL or n - n_pos < SMALL_CELL:
        # Same rule as `fracsight evaluate`: no AUC from a cell this small, only counts and rates.
        out["warning"] = f"fewer than {SMALL_CELL} fractured or non-fractured images: too small to say"
    else:
        out["auc"] = auc_with_ci(scores, labels, n_resamples=2000, seed=seed).to_dict()
    for name, t in thresholds.items():
        out[f"at_{name}"] = binary_rates(scores, labels, t).to_dict()
    return out


def _per_fold_rates(
    scores: np.ndarray, labels: np.ndarray, folds: np.ndarray, thresholds: dict[str, float]
) -> dict[str, dict[str, list[float | None]]]:
    """Sensitivity and specificity at each threshold within each fold, fold by fold.

    Each fold is scored by a model that did not see it, so the spread shows how far one
    model's score scale can drift from the pooled choice: the shipped model is one more draw.
    """
    spread: dict[str, dict[str, list[float | None]]] = {}
    for name, t in thresholds.items():
        per_fold = [binary_rates(scores[folds == k], labels[folds == k], t) for k in np.unique(folds)]
        spread[name] = {
            "sensitivity": [r.sensitivity.value for r in per_fold],
            "specificity": [r.specificity.value for r in per_fold],
        }
    return spread


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _by_group(rows: list[dict], column: str, score: str, thresholds: dict[str, float], seed: int) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[column], []).append(r)
    return {
        key: _metrics(
            np.array([float(r[score]) for r in members]),
            np.array([int(r["label"]) for r in members]),
            thresholds,
            seed,
        )
        for key, members in sorted(groups.items())
    }


def _shipped_from_folds(final: str) -> str:
    return {
        "fold-average": ", whose weights' average is the shipped model",
        "fold-ensemble": ", whose ensemble is the shipped model",
    }.get(final, "")


def _final_model(cfg, final_epochs: int) -> str:
    if cfg.final == "fold-average":
        return (
            f"the average of the {cfg.folds} fold models' weights and batch-norm statistics "
            "(no further training)"
        )
    if cfg.final == "fold-ensemble":
        return (
            f"the ensemble of the {cfg.folds} fold models in one graph: their mean probability, "
            "heat maps averaged (no further training)"
        )
    how = "trained on all development images"
    if cfg.distill:
        how = f"distilled from the {cfg.folds} fold models"
    return f"{how}, {final_epochs} epochs"


def write_card(
    cfg,
    out: Path,
    onnx_path: Path,
    data,
    groups,
    test,
    summaries,
    final_epochs: int,
    onnx_diff: float,
    device: str | None = None,
    trained_on: TrainingImages | None = None,
) -> dict:
    """Compute the card's metrics from the run's prediction files and write JSON + Markdown.

    ``trained_on`` (:func:`training_images`) is recorded as the card's ``training_images``.
    """
    rc = cfg.run
    oof = _read(out / "predictions_oof.csv")
    oof_labels = np.array([int(r["label"]) for r in oof])
    oof_scores = np.array([float(r["probability"]) for r in oof])
    # Thresholds come from scores on the shipped model's scale: the cross-fitted students when
    # the final model is distilled, else the fold models themselves.
    basis = "student" if "student" in oof[0] else "probability"
    basis_scores = np.array([float(r[basis]) for r in oof])
    choice = choose_thresholds(basis_scores, oof_labels, cfg.sensitivity_target, cfg.specificity_target)
    thresholds = choice.thresholds()
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:12]
    fold_aucs = [s["val_auc"] for s in summaries if s.get("val_auc") is not None]
    n_test, n_test_pos = int(test.sum()), int(data.labels[test].sum())
    card: dict = {
        "model_id": f"{cfg.model_name}-{rc.variant}-{rc.size}px-{digest}",
        "created": dt.date.today().isoformat(),
        "input_size": rc.size,
        "preprocessing": PREPROCESSING,
        "outputs": {
            "logit": "image logit, mean over image and mirror",
            "heatmap": "cell logits (N, h, w)",
            "region": "region logits (N, 4) in region_labels order; sigmoid, several may be on",
            "features": "pooled image features (N, 1280), for out-of-distribution checks",
        },
        "region_labels": list(REGIONS),
        "heatmap_stride": rc.heatmap_stride,
        "temperature": 1.0,
        "thresholds": thresholds,
        "threshold_source": (
            (
                f"out-of-fold predictions of {cfg.folds} cross-fitted distilled students (each trained "
                "without the fold it scores, though its teachers include fold models that saw it)"
                if basis == "student"
                else f"out-of-fold predictions of the {cfg.folds} fold models"
                + _shipped_from_folds(cfg.final)
            )
            + " on the development split "
            f"(n={choice.n}, {choice.n_positive} fractured): 'doubt' for sensitivity >= "
            f"{cfg.sensitivity_target}, 'fracture' for specificity >= {cfg.specificity_target}"
        ),
        "threshold_choice": choice.to_dict(),
        "intended_use": INTENDED_USE,
        "limitations": limitations(rc),
        "data": {
            "source": str(cfg.data),
            "n_images": int(len(data.labels)),
            "n_fractured": int(data.labels.sum()),
            "n_refused": len(data.refused),
            "refused": [{"file": Path(p).name, "reason": r} for p, r in data.refused],
            "grouping": "given group column"
            if all(e.group for e in data.examples)
            else "duplicate groups from perceptual hashes (fracsight.data.duplicates)",
            "n_groups": int(len(np.unique(groups))),
            "test_split": {"n": n_test, "n_fractured": n_test_pos, "fraction": cfg.test_fraction},
            "development_split": {"n": int((~test).sum()), "n_fractured": int(data.labels[~test].sum())},
        },
        "recipe": {
            "command": cfg.command,
            "backbone": f"EfficientNet-{rc.variant.capitalize()}",
            "imagenet_init": rc.pretrained,
            "run": {k: v for k, v in asdict(rc).items() if k != "augmentation"},
            "augmentation": (
                {"orientations": 8, "other": "none: the CPU route trains on the trunk's cached output"}
                if rc.frozen_trunk
                else asdict(rc.augmentation)
            ),
            "folds": cfg.folds,
            "final_model": _final_model(cfg, final_epochs),
            "onnx_max_abs_diff_vs_torch": onnx_diff,
            "training_device": device,
            "python": platform.python_version(),
        },
        "metrics": {
            "cross_validation": {
                "data": f"development split, {cfg.folds} grouped folds",
                "fold_val_auc": fold_aucs,
                "fold_val_auc_mean": float(np.mean(fold_aucs)) if fold_aucs else None,
                "fold_val_auc_sd": float(np.std(fold_aucs, ddof=1)) if len(fold_aucs) > 1 else None,
                "note": "each fold's AUC is at the epoch chosen on that fold: slightly optimistic",
                # Fold models' rates at the thresholds only where the thresholds were chosen on them.
                "out_of_fold": _metrics(
                    oof_scores, oof_labels, thresholds if basis == "probability" else {}, rc.seed
                ),
                **(
                    {"out_of_fold_students": _metrics(basis_scores, oof_labels, thresholds, rc.seed)}
                    if basis == "student"
                    else {}
                ),
                "per_fold_at_thresholds": _per_fold_rates(
                    basis_scores, oof_labels, np.array([int(r["fold"]) for r in oof]), thresholds
                ),
            },
        },
    }
    test_file = out / "predictions_test.csv"
    if test_file.exists():
        rows = _read(test_file)
        labels = np.array([int(r["label"]) for r in rows])
        held_out: dict = {
            "data": f"held-out test split of {cfg.data}: n={n_test}, {n_test_pos} fractured; never used "
            "for training, model or threshold selection",
        }
        models = [c for c in rows[0] if c in ("final", "ensemble") or c.startswith(("fold", "final_turned"))]
        for name in models:
            scores = np.array([float(r[name]) for r in rows])
            shipped = name == "final" or name.startswith("final_turned")
            entry = _metrics(scores, labels, thresholds if shipped else {}, rc.seed)
            held_out[name] = entry
        held_out["final_by_region"] = _by_group(rows, "region", "final", thresholds, rc.seed)
        held_out["final_by_hardware"] = _by_group(rows, "hardware", "final", thresholds, rc.seed)
        card["metrics"]["held_out_test"] = held_out
    regions_file = out / "regions_test.csv"
    if regions_file.exists():
        card["metrics"]["region_head"] = region_accuracy(_read(regions_file))
    if trained_on is not None:
        card["training_images"] = trained_on.record()
    return _save(model_card.card_path(onnx_path), card)


def region_accuracy(rows: list[dict[str, str]]) -> dict:
    """How well the region head names the body region, per true region, with Wilson 95% CIs.

    Single-region images: correct when the most probable region is the true one. Images with
    several regions (FracAtlas's 'mixed'): correct when exactly the flagged regions have
    probability >= 0.5.
    """
    rule = " ".join(region_accuracy.__doc__.split("\n\n")[1].split())
    out: dict = {"data": "held-out test split", "rule": rule}
    per: dict[str, list[bool]] = {}
    for r in rows:
        flags = [f for f in r["region_flags"].split(";") if f]
        if not flags:
            continue
        probs = np.array([float(r[f"p_{name}"]) for name in REGIONS])
        if len(flags) == 1:
            per.setdefault(flags[0], []).append(REGIONS[int(np.argmax(probs))] == flags[0])
        else:
            called = {name for name, p in zip(REGIONS, probs, strict=True) if p >= 0.5}
            per.setdefault("+".join(flags), []).append(called == set(flags))
    cells = {}
    for name, hits in sorted(per.items()):
        k, n = int(sum(hits)), len(hits)
        lo, hi = wilson_interval(k, n)
        cells[name] = {"value": k / n, "lower": lo, "upper": hi, "k": k, "n": n}
    out["by_region"] = cells
    return out


def _spread_markdown(spread: dict | None) -> list[str]:
    if not spread:
        return []
    parts = []
    for name, rates in spread.items():
        sens, spec = ([v for v in rates[k] if v is not None] for k in ("sensitivity", "specificity"))
        parts.append(
            f"'{name}' sensitivity {min(sens):.2f}-{max(sens):.2f}, "
            f"specificity {min(spec):.2f}-{max(spec):.2f}"
        )
    return [
        "Fold to fold at the chosen thresholds (each fold scored by a model that did not see it): "
        + "; ".join(parts)
        + ". The shipped model's own scale can drift as far, which is why a site should confirm "
        "the thresholds on its own cases.",
        "",
    ]


def _region_markdown(head: dict | None) -> list[str]:
    if not head:
        return []
    cells = "; ".join(f"{name} {_fmt_est(e)}" for name, e in head["by_region"].items())
    return [f"Region head on the {head['data']} ({head['rule']}): {cells}.", ""]


def _fmt_est(e: dict | None) -> str:
    if not e or e.get("value") is None:
        return "n/a"
    lo, hi = e.get("lower"), e.get("upper")
    ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
    kn = f" ({e['k']}/{e['n']})" if e.get("k") is not None else ""
    return f"{e['value']:.3f}{ci}{kn}"


def _row(name: str, m: dict) -> str:
    auc = m.get("auc")
    # A small cell's warning goes in its AUC cell: a line of its own would end the Markdown table.
    auc_text = "too few" if m.get("warning") else (_fmt_est(auc["delong"]) if auc else "n/a")
    doubt = m.get("at_doubt", {})
    frac = m.get("at_fracture", {})
    cells = [
        name,
        str(m["n"]),
        str(m["n_fractured"]),
        auc_text,
        _fmt_est(doubt.get("sensitivity")),
        _fmt_est(doubt.get("specificity")),
        _fmt_est(frac.get("sensitivity")),
        _fmt_est(frac.get("specificity")),
    ]
    return "| " + " | ".join(cells) + " |"


def _training_rows_note(card: dict) -> str:
    """Where the training-time rows come from; cards written before ``training_device`` were GPU runs."""
    device = card["recipe"].get("training_device") or "GPU"
    device = {"cpu": "CPU"}.get(device, "GPU" if device.startswith("cuda") else device)
    compare = (
        "so they differ slightly from the shipped-model table above"
        if "shipped_model_evaluation" in card["metrics"]
        else "so the ONNX model run by `fracsight evaluate` on the image files will differ slightly"
    )
    if card["recipe"].get("run", {}).get("frozen_trunk"):
        source = "float32 top on the float16 cache of the trunk's output for the original files"
    else:
        source = "bf16, from the compact training copy of the images"
    return f"Test-split rows here were computed on the training machine ({device}, {source}), {compare}."


def render_markdown(card: dict) -> str:
    m = card["metrics"]
    cv = m["cross_validation"]
    lines = [
        f"# Model card: {card['model_id']}",
        "",
        f"**Intended use.** {card['intended_use']}",
        "",
        "## Data",
        f"- Source: `{card['data']['source']}` ({card['data']['n_images']} images, "
        f"{card['data']['n_fractured']} fractured; {card['data']['n_refused']} could not be read).",
        f"- Grouping: {card['data']['grouping']} ({card['data']['n_groups']} groups); "
        "no group straddles a split.",
        f"- Held-out test split: {card['data']['test_split']['n']} images "
        f"({card['data']['test_split']['n_fractured']} fractured), never used for training, model or "
        "threshold selection.",
        *_training_images_markdown(card.get("training_images")),
        "",
        "## Recipe",
        f"- {card['recipe']['backbone']} (ImageNet init: {card['recipe']['imagenet_init']}) with a CAM head "
        "(top-k pooled cell logits), box-supervised heat map, input "
        f"{card['input_size']} px ({card['preprocessing']['name']}).",
        f"- {card['recipe']['folds']}-fold grouped cross-validation; "
        f"final model {card['recipe']['final_model']}.",
        f"- Command: `{card['recipe']['command']}`",
        f"- ONNX checked against torch: max |difference| {card['recipe']['onnx_max_abs_diff_vs_torch']:.1e}.",
        "",
        *(
            _evaluation_markdown(m["shipped_model_evaluation"], m.get("previous_model_evaluation"))
            if "shipped_model_evaluation" in m
            else []
        ),
        *_orientation_markdown(m.get("shipped_model_orientation")),
        "## Operating points",
        f"- doubt (high sensitivity): probability >= {card['thresholds']['doubt']:.4f}",
        f"- fracture (high specificity): probability >= {card['thresholds']['fracture']:.4f}",
        f"- Chosen on {card['threshold_source']}.",
        "",
        "## Metrics measured during training (95% CIs: DeLong for AUC, Wilson for proportions)",
        _training_rows_note(card),
        "",
        "| data | n | fractured | ROC AUC | sens @doubt | spec @doubt | sens @fracture | spec @fracture |",
        "|---|---|---|---|---|---|---|---|",
        _row("development, out-of-fold, fold models", cv["out_of_fold"]),
    ]
    if "out_of_fold_students" in cv:
        lines.append(_row("development, out-of-fold, cross-fitted students", cv["out_of_fold_students"]))
    held = m.get("held_out_test")
    if held:
        lines.append(_row("**held-out test, shipped model**", held["final"]))
        if "ensemble" in held:
            lines.append(_row("held-out test, fold ensemble (not shipped)", held["ensemble"]))
        for region, entry in held["final_by_region"].items():
            lines.append(_row(f"held-out, region = {region}", entry))
        for hw, entry in held["final_by_hardware"].items():
            lines.append(_row(f"held-out, hardware = {'yes' if hw == '1' else 'no'}", entry))
        for name in [k for k in held if k.startswith("final_turned")]:
            lines.append(
                _row(f"held-out, every image turned by {name[len('final_turned') :]} degrees", held[name])
            )
    lines += [
        "",
        f"ROC AUC 'too few': fewer than {SMALL_CELL} fractured or non-fractured images, too small to say.",
        "",
        *_spread_markdown(cv.get("per_fold_at_thresholds")),
        *_region_markdown(m.get("region_head")),
        f"Fold validation AUCs: {', '.join(f'{a:.3f}' for a in cv['fold_val_auc'])} "
        f"(mean {cv['fold_val_auc_mean']:.3f}, sd {cv['fold_val_auc_sd'] or 0:.3f}; {cv['note']}).",
        "",
        "## Known limitations and failure modes",
        *[f"- KNOWN ISSUE: {item}" for item in card.get("known_issues", [])],
        *[f"- {item}" for item in card["limitations"]],
        "",
        "FracAtlas: Abedeen I. et al., Scientific Data 10, 521 (2023), "
        "doi:10.1038/s41597-023-02432-4 (CC BY 4.0).",
        "",
    ]
    return "\n".join(lines)


EVALUATION_KEYS = ("shipped_model_evaluation", "previous_model_evaluation")


def record_evaluation(
    card_path: Path, metrics_path: Path, command: str, key: str = "shipped_model_evaluation"
) -> dict:
    """Add a ``fracsight evaluate`` result (metrics.json) to a model card and re-render its Markdown.

    The card then carries the numbers of the shipped ONNX model itself, on the files as a
    user has them, beside the numbers measured during training. With
    ``key="previous_model_evaluation"`` it records the model this one replaces, evaluated on
    the same cases, so that the card shows both side by side.
    """
    if key not in EVALUATION_KEYS:
        raise ValueError(f"key {key!r}: valid are {', '.join(EVALUATION_KEYS)}")
    card = json.loads(Path(card_path).read_text())
    metrics = json.loads(Path(metrics_path).read_text())
    overall = metrics["overall"]
    entry = {
        "command": command,
        "data": metrics["data"]["labels"],
        "model_id": metrics["model"]["model_id"],
        "n": overall["n"],
        "n_fractured": overall["n_positive"],
        "auc": overall["auc"],
        "operating_points": {op["name"]: op for op in overall["operating_points"]},
        "by_region": metrics["groups"].get("region"),
        "by_hardware": metrics["groups"].get("hardware"),
        "calibration": {k: metrics["calibration"][k] for k in ("brier", "ece")},
        # Present only when the evaluated data had expert boxes.
        "localisation": {
            k: (metrics.get("localisation") or {}).get(k)
            for k in ("data", "pointing_game", "froc", "outline")
        },
    }
    card["metrics"][key] = entry
    return _save(card_path, card)


def record_orientation(card_path: Path, orientation_path: Path) -> dict:
    """Add the table of ``scripts/orientation_check.py --json`` (every image turned by 0, 90, 180
    and 270 degrees) to a model card."""
    card = json.loads(Path(card_path).read_text())
    card["metrics"]["shipped_model_orientation"] = json.loads(Path(orientation_path).read_text())
    return _save(card_path, card)


def training_images(examples: Sequence[Example], data: str) -> TrainingImages:
    """The card's record of the images a model was trained on: each original file's hashes, from the
    manifest when the files listed are copies (``scripts/compact_dataset.py`` writes them there),
    else from the files themselves (one more decode each)."""
    files, pixels = [], []
    for ex in examples:
        if ex.original_sha256:
            files.append(ex.original_sha256)
            pixels.append(ex.original_pixel_sha256 or None)
        else:
            digests = image_digests(ex.path)
            files.append(digests.file[:DIGEST_CHARS])
            pixels.append(digests.pixels[:DIGEST_CHARS] if digests.pixels else None)
    return TrainingImages.of(f"the {len(files)} development images of {data}", files, pixels)


def record_training_images(card_path: Path, images: TrainingImages) -> dict:
    """Set the card's record of the images the model was trained on (``training_images``)."""
    card = json.loads(Path(card_path).read_text())
    card["training_images"] = images.record()
    return _save(card_path, card)


def _training_images_markdown(record: dict | None) -> list[str]:
    if not record:
        return []
    return [
        f"- Trained on {record['description']}: their content hashes are in the card (`training_images`), "
        "so `fracsight evaluate`, `thresholds` and `calibrate` can say when they are given them, and "
        "refuse to report them as a test."
    ]


def record_known_issues(card_path: Path, issues: list[str]) -> dict:
    """Set the card's known issues: measured shortcomings a user must read before relying on the
    model, listed first among its limitations."""
    card = json.loads(Path(card_path).read_text())
    card["known_issues"] = list(issues)
    return _save(card_path, card)


def _save(card_path: Path, card: dict) -> dict:
    Path(card_path).write_text(json.dumps(card, indent=2))
    Path(card_path).with_name(Path(card_path).name.replace(".card.json", ".card.md")).write_text(
        render_markdown(card)
    )
    return card


def _orientation_markdown(record: dict | None) -> list[str]:
    if not record:
        return []
    lines = [
        "## The shipped model with every image turned",
        f"Measured with `{record['command']}` ({record['data']}).",
        "",
        "| turned | ROC AUC (95% CI) | sens @doubt | spec @doubt | sens @fracture | spec @fracture |",
        "|---|---|---|---|---|---|",
    ]
    for row in record["rows"]:
        ops = row["operating_points"]
        rates = [
            f"{ops[name][rate]:.3f}"
            for name in ("doubt", "fracture")
            for rate in ("sensitivity", "specificity")
        ]
        auc = row["auc"]
        lines.append(
            f"| {row['degrees']} degrees | {auc['value']:.3f} [{auc['lower']:.3f}, {auc['upper']:.3f}] | "
            + " | ".join(rates)
            + " |"
        )
    return [*lines, ""]


def _evaluation_markdown(ev: dict, previous: dict | None = None) -> list[str]:
    ops = ev["operating_points"]

    def cell(entry: dict) -> str:
        auc = entry.get("auc")
        auc_text = _fmt_est(auc["delong"]) if auc else "too few"
        op = entry.get("operating_points", {})
        rates = [
            _fmt_est(op.get(name, {}).get(rate)) if op.get(name, {}).get(rate) else "too few"
            for name in ("doubt", "fracture")
            for rate in ("sensitivity", "specificity")
        ]
        return " | ".join([str(entry["n"]), str(entry["n_positive"]), auc_text, *rates])

    overall = {"n": ev["n"], "n_positive": ev["n_fractured"], "auc": ev["auc"], "operating_points": ops}
    lines = [
        "## The shipped model on the held-out test split",
        f"Measured with `{ev['command']}`: the ONNX model on the original image files, CPU. "
        f"Data: {ev['data']}. These are the numbers to quote.",
        "",
        "| cases | n | fractured | ROC AUC | sens @doubt | spec @doubt | sens @fracture | spec @fracture |",
        "|---|---|---|---|---|---|---|---|",
        f"| all | {cell(overall)} |",
    ]
    if previous:
        before = {
            "n": previous["n"],
            "n_positive": previous["n_fractured"],
            "auc": previous["auc"],
            "operating_points": previous["operating_points"],
        }
        lines.append(
            f"| all, previous model `{previous['model_id']}` at its own thresholds | {cell(before)} |"
        )
    for column in ("by_region", "by_hardware"):
        table = ev.get(column) or {}
        for c in table.get("cells", []):
            lines.append(f"| {table['column']} = {c['value']} | {cell(c)} |")
    for name, entry in (("", ev), ("previous model: ", previous or {})):
        loc = entry.get("localisation") or {}
        if loc.get("pointing_game"):
            pg = loc["pointing_game"]
            lines += [
                "",
                f"{name.capitalize()}Heat-map localisation ({loc['data']}): peak inside an expert box "
                f"{_fmt_est(pg['strict'])}; within half a heat-map cell ({pg['tolerance_px']:.1f} image px, "
                f"median) {_fmt_est(pg['within_half_a_cell'])}; FROC normalised area up to 1 false mark "
                f"per image {_fmt_est(loc['froc']['normalised_area'])}.",
            ]
            outline = loc.get("outline")  # cards recorded before the outline was measured have none
            if outline:
                area = outline["median_area_fraction"]
                q1, q3 = area.get("quartiles") or (None, None)
                quartiles = f", quartiles {q1:.3f}-{q3:.3f}" if q1 is not None and q3 is not None else ""
                lines[-1] += (
                    f" The drawn outline (cells >= {outline.get('level', 0.5)} x the peak, the region the "
                    f"viewer and the DICOM presentation state show) contains or touches an expert box "
                    f"{_fmt_est(outline['touches_box'])}; its median area as a share of the image "
                    f"{_fmt_est(area)}{quartiles}."
                )
    cal = ev["calibration"]
    lines += [
        f"Calibration: Brier {_fmt_est(cal['brier'])}, ECE {_fmt_est(cal['ece'])}.",
        f"Cells with fewer than {SMALL_CELL} fractured or non-fractured images report 'too few'.",
        "",
    ]
    return lines
