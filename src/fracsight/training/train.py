"""``fracsight train``: grouped cross-validation, a distilled final model, ONNX and model card.

The recipe follows what was measured on FracAtlas (see the model card):
1. a grouped, class-balanced test split is set aside and never used for training, model
   or threshold selection;
2. the rest is split into grouped folds; one model per fold gives out-of-fold (OOF)
   predictions, the honest basis for the operating thresholds;
3. the fold models, averaged, form a teacher ensemble; one student network of the same
   size is distilled from it on all development images, so the shipped model costs one
   forward pass (plus its mirror) on a CPU;
4. the student is exported to ONNX (checked against torch) and described in a model card.
Every stage checkpoints, so ``--resume`` continues where a run stopped: a finished run (a
fold, a student) is kept as ``best.pt``, a run in progress as ``last.pt`` after each epoch.

The runs of a stage are independent (the five folds; then the students and the final model),
so ``parallel`` > 1 trains them at once in worker processes on the same device. One small
network leaves a large GPU mostly idle between kernel launches; several fill it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fracsight.data.labels import REGIONS
from fracsight.data.split_file import split_ids
from fracsight.training.arrays import PreparedSet, prepare_examples
from fracsight.training.examples import load_examples
from fracsight.training.export import FoldEnsembleTTA, check_onnx, export_onnx
from fracsight.training.loop import (
    ImageSource,
    RunConfig,
    TrainingSet,
    load_trained,
    pick_device,
    save_atomically,
    train_run,
)
from fracsight.training.splits import grouped_holdout, grouped_stratified_folds

log = logging.getLogger(__name__)


FINAL_MODELS = ("trained", "fold-average", "fold-ensemble")  # TrainConfig.final


@dataclass
class TrainConfig:
    data: str
    out: str
    folds: int = 5
    test_fraction: float = 0.15
    distill: bool = True
    cross_fit: bool = True  # thresholds from cross-fitted students (distilled models only)
    final_epochs: int | None = None  # default: median best epoch of the folds, plus one
    # "trained": one more model trained on all development images (v1-v3); "fold-average": the
    # shipped model is the average of the fold models' weights; "fold-ensemble": the fold models
    # themselves in one graph, their mean probability (v4). Either way the fold models'
    # out-of-fold scores, which set the thresholds, are meant to be on its scale; for the
    # average they were not (training/README.md, v4).
    final: str = "trained"
    # A trunk cache folder shared between runs (the CPU route): kept when the run ends, so the
    # seeds of one recipe compute it once. Default: OUT/trunk-cache, removed at the end.
    trunk_cache: str | None = None
    device: str = "auto"
    workers: int = 2
    parallel: int = 1  # runs of one stage trained at once, each in its own process
    # A split.csv whose 'test' rows become the held-out split (to compare with an earlier run on
    # the same cases); development images that share a duplicate group with one are left out.
    test_split: str | None = None
    limit: int | None = None  # use a class-balanced subset of this many images (smoke tests)
    # 'doubt' threshold: catch this share of fractures (OOF). 0.88 rather than 0.90: on FracAtlas's
    # ~475 development fractures its 95% lower bound is about 0.85, the sensitivity asked of
    # 'doubt', while each point of sensitivity above that costs 2-3 points of specificity.
    sensitivity_target: float = 0.88
    specificity_target: float = 0.95  # 'fracture' threshold: this share of normals stay below (OOF)
    model_name: str = "model"
    command: str = ""
    run: RunConfig = field(default_factory=RunConfig)


# Options that may change on --resume: they do not change what is trained (thresholds and the
# card are recomputed from the kept predictions). Any other change would mix two runs.
# cross_fit only adds or leaves out the students, whose scores serve the thresholds: the fold
# models and the final model are the same either way, so a run cut off during the students can
# finish its final model first and add the students later.
_FREE_ON_RESUME = (
    "cross_fit",
    "out",
    "trunk_cache",
    "device",
    "workers",
    "parallel",
    "command",
    "model_name",
    "sensitivity_target",
    "specificity_target",
)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _subset(examples: list, limit: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    pos = [e for e in examples if e.label == 1]
    neg = [e for e in examples if e.label == 0]
    n_pos = min(len(pos), max(1, limit // 2))
    take = [pos[i] for i in rng.permutation(len(pos))[:n_pos]]
    take += [neg[i] for i in rng.permutation(len(neg))[: limit - n_pos]]
    return sorted(take, key=lambda e: e.image_id)


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def _run_identity(cfg: TrainConfig, examples: list, test_ids: set[str] | None) -> dict[str, object]:
    """What decides a run's models: the options that matter and digests of the examples and of a
    given test split (its ids, not the file's path, which differs between machines)."""
    skip = {*_FREE_ON_RESUME, "data", "test_split"}
    options = {k: v for k, v in asdict(cfg).items() if k not in skip}
    rows = [[e.image_id, e.label, e.region, e.hardware, e.boxes, e.group, e.region_flags] for e in examples]
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()
    identity = {**_flatten(options), "examples_sha256": digest}
    if test_ids is not None:
        identity["test_split_sha256"] = hashlib.sha256(json.dumps(sorted(test_ids)).encode()).hexdigest()
    return json.loads(json.dumps(identity))


def _check_resume(out: Path, identity: dict[str, object]) -> None:
    """Refuse to continue a run in ``out`` that was started with other options or other data."""
    path = out / "run.json"
    if path.exists():
        recorded = json.loads(path.read_text())["identity"]
        # Keys now free may be in a run.json written before they were made free.
        keys = sorted((identity.keys() | recorded.keys()) - set(_FREE_ON_RESUME))
        changed = [k for k in keys if identity.get(k) != recorded.get(k)]
        if changed:
            what = "; ".join(f"{k}: {recorded.get(k)!r} then, {identity.get(k)!r} now" for k in changed)
            raise ValueError(
                f"{path}: the run in {out} was started with other settings or data ({what}); "
                "resume with the same options and data, or choose another --out"
            )
    elif any(out.glob("*/*.pt")):
        _say(f"warning: {out} holds checkpoints but no run.json (an older fracsight): options not checked")


def _write_run(out: Path, cfg: TrainConfig, identity: dict[str, object]) -> None:
    record = {"data": str(cfg.data), "command": cfg.command, "identity": identity}
    (out / "run.json").write_text(json.dumps(record, indent=1))


def _check_splits(
    source: str, labels: np.ndarray, groups: np.ndarray, fold: np.ndarray, n_folds: int
) -> None:
    """Every fold needs images of both classes: its validation AUC drives early stopping."""
    if labels.min() == labels.max():
        raise ValueError(
            f"{source}: all {len(labels)} readable images are labelled {int(labels[0])}: "
            "training needs fractured (1) and non-fractured (0) images"
        )
    dev = fold >= 0
    for k in range(n_folds):
        val = labels[fold == k]
        if val.size == 0 or val.min() == val.max():
            raise ValueError(
                f"{source}: validation fold {k + 1} of {n_folds} has {int(val.sum())} fractured and "
                f"{int(val.size - val.sum())} non-fractured images ({len(np.unique(groups[dev]))} groups "
                "in the development split): each fold needs both classes; use fewer --folds or more "
                "images and groups"
            )


def _groups(data: PreparedSet, workers: int) -> np.ndarray:
    """Group labels: the manifest's where given, else duplicate groups found from the pixels."""
    given = [e.group for e in data.examples]
    if all(given):
        _, codes = np.unique(given, return_inverse=True)
        return codes
    from fracsight.data.duplicates import group_images

    return np.asarray(group_images([e.path for e in data.examples], workers=workers))


def _given_test_split(
    path: str, test_ids: set[str], data: PreparedSet, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(test, excluded) masks from a given test split: the test rows as given; development images
    in a duplicate group with a test image are excluded from training, so no near-copy of a test
    image is learnt even where the grouping has changed since the split was made."""
    ids = np.array([e.image_id for e in data.examples])
    test = np.isin(ids, sorted(test_ids))
    missing = len(test_ids) - int(test.sum())
    if missing:
        _say(f"warning: {missing} test image(s) of {path} are not in the data (or could not be read)")
    excluded = ~test & np.isin(groups, groups[test])
    if excluded.any():
        _say(
            f"{int(excluded.sum())} development image(s) share a duplicate group with a test image of "
            f"{path} and are left out: {', '.join(ids[excluded][:10])}"
        )
    return test, excluded


def _write_split(
    path: Path, data: PreparedSet, groups: np.ndarray, test: np.ndarray, fold: np.ndarray
) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "split", "fold", "group", "label", "region", "hardware"])
        for i, ex in enumerate(data.examples):
            split = "test" if test[i] else ("dev" if fold[i] >= 0 else "excluded")
            w.writerow(
                [
                    ex.image_id,
                    split,
                    fold[i] if split == "dev" else -1,
                    groups[i],
                    ex.label,
                    ex.region,
                    int(ex.hardware),
                ]
            )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _save_state(state: dict[str, torch.Tensor], path: Path) -> None:
    save_atomically({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _device_for(cfg: TrainConfig) -> torch.device:
    """The training device; the CPU route is checked here, before anything is computed."""
    if cfg.final not in FINAL_MODELS:
        raise ValueError(f"final {cfg.final!r}: valid are {', '.join(FINAL_MODELS)}")
    if cfg.final != "trained" and cfg.distill:
        raise ValueError(
            f"--final {cfg.final} ships the fold models, trained on hard labels: add --no-distill"
        )
    if cfg.trunk_cache and not cfg.run.frozen_trunk:
        raise ValueError("--trunk-cache is for the CPU route: add --frozen-trunk")
    if not cfg.run.frozen_trunk:
        return pick_device(cfg.device)
    if cfg.distill:
        raise ValueError(
            "--frozen-trunk trains the fold models and the final model on hard labels: add --no-distill"
        )
    if not cfg.run.pretrained:
        raise ValueError(
            "--frozen-trunk keeps the trunk's ImageNet weights: it cannot run with --no-pretrained"
        )
    if cfg.parallel > 1:
        raise ValueError("--frozen-trunk trains one run at a time on the CPU: leave --parallel at 1")
    if cfg.device not in ("auto", "cpu"):
        raise ValueError(f"--frozen-trunk is the CPU route: --device {cfg.device} is not cpu")
    return torch.device("cpu")


def run_training(cfg: TrainConfig) -> Path:
    """Run the whole recipe; returns the path of the exported ONNX model."""
    device = _device_for(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rc = cfg.run
    torch.manual_seed(rc.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    _say(
        f"fracsight train: device {device}, {cfg.folds} folds, {rc.size} px, up to {rc.epochs} epochs, "
        f"{cfg.parallel} run(s) at a time"
    )

    examples = load_examples(cfg.data)
    if cfg.limit:
        examples = _subset(examples, cfg.limit, rc.seed)
    test_ids = split_ids(cfg.test_split, "test") if cfg.test_split else None
    identity = _run_identity(cfg, examples, test_ids)
    _check_resume(out, identity)
    _write_run(out, cfg, identity)
    data = prepare_examples(examples, rc.size, workers=cfg.workers)
    _say(
        f"prepared {len(data.examples)} images ({int(data.labels.sum())} fractured), "
        f"{len(data.refused)} refused"
    )
    groups = _groups(data, cfg.workers)
    if test_ids is not None:
        test, excluded = _given_test_split(str(cfg.test_split), test_ids, data, groups)
    else:
        test = grouped_holdout(data.labels, groups, cfg.test_fraction, rc.seed)
        excluded = np.zeros_like(test)
    dev = np.flatnonzero(~test & ~excluded)
    fold = np.full(len(data.labels), -1)
    fold[dev] = grouped_stratified_folds(data.labels[dev], groups[dev], cfg.folds, rc.seed)
    _check_splits(str(cfg.data), data.labels, groups, fold, cfg.folds)
    _write_split(out / "split.csv", data, groups, test, fold)

    tensors = TrainingSet.from_arrays(data.images, data.masks, data.labels, data.regions, device)
    if rc.frozen_trunk:
        from fracsight.training.frozen import CacheSource, build_cache

        source = CacheSource(build_cache(tensors, rc, _cache_folder(cfg), _say), tensors)
    else:
        source = ImageSource(tensors, rc.augmentation)
    if cfg.parallel > 1:
        _write_arrays(out, data)
    test_idx = np.flatnonzero(test)

    fold_jobs = [
        _Job(
            f"fold{k}",
            rc,
            dev[fold[dev] != k],
            dev[fold[dev] == k],
            (),
            f"fold {k + 1}/{cfg.folds}",
            {"fold": k},
        )
        for k in range(cfg.folds)
    ]
    _run_jobs(out, fold_jobs, source, device, cfg.parallel)

    oof_logit = np.full(len(data.labels), np.nan)
    test_probs: dict[str, np.ndarray] = {}
    summaries = []
    fold_models = []
    for k, job in enumerate(fold_jobs):
        model = load_trained(_load_state(out / job.folder / "best.pt"), rc, device)
        oof_logit[job.val_idx] = source.predict(model, job.val_idx).logits
        if len(test_idx):
            test_probs[f"fold{k}"] = _sigmoid(source.predict(model, test_idx).logits)
        summaries.append(json.loads((out / job.folder / "summary.json").read_text()))
        fold_models.append(model)

    best_epochs = [s["best_epoch"] for s in summaries]
    final_epochs = cfg.final_epochs or int(np.median(best_epochs)) + 1
    if cfg.final == "fold-average":
        _average_folds(out, fold_jobs)
    final_cfg = RunConfig(**{**asdict(rc), "epochs": final_epochs, "augmentation": rc.augmentation})
    teachers = tuple(job.folder for job in fold_jobs) if cfg.distill else ()
    # Cross-fitted students: the shipped recipe (distilled from all fold models) trained without
    # fold k and scored on fold k. Their scores are on the shipped model's scale, so thresholds
    # chosen on them transfer; the fold models' own OOF scores do not (averaged teachers give
    # softer targets, which lift the student's low scores). Not perfectly clean: four of the five
    # teachers were trained on fold k, so what they learnt from it reaches student k through their
    # targets on other images. The scale is what matters here; the held-out test split remains
    # the unbiased check.
    student_jobs = (
        [
            _Job(
                f"student{k}",
                final_cfg,
                job.train_idx,
                None,
                teachers,
                f"student {k + 1}/{cfg.folds} (without fold {k + 1})",
            )
            for k, job in enumerate(fold_jobs)
        ]
        if cfg.distill and cfg.cross_fit
        else []
    )
    final_title = f"final model on {len(dev)} images" + (
        f", distilled from {len(fold_jobs)} fold models" if teachers else ""
    )
    # The final model first: with fewer workers than runs, it is never the one left waiting.
    final_job = _Job("final", final_cfg, dev, None, teachers, final_title)
    later = [] if cfg.final != "trained" else [final_job, *student_jobs]
    _run_jobs(out, later, source, device, cfg.parallel)

    student_oof = np.full(len(data.labels), np.nan)
    for k, job in enumerate(student_jobs):
        va = fold_jobs[k].val_idx
        student = load_trained(_load_state(out / job.folder / "best.pt"), final_cfg, device)
        student_oof[va] = source.predict(student, va).logits
    if cfg.final == "fold-ensemble":
        final = FoldEnsembleTTA(fold_models)
        shipped = fold_models
    else:
        final = load_trained(_load_state(out / "final" / "best.pt"), final_cfg, device)
        shipped = [final]
        del fold_models
    if len(test_idx):
        # The shipped model's answers as its graph computes them: each model's mirror-averaged
        # logit, then the mean probability when several models are shipped.
        def shipped_predict(turns: int) -> tuple[np.ndarray, np.ndarray]:
            preds = [source.predict(m, test_idx, turns=turns) for m in shipped]
            probability = np.mean([_sigmoid(p.logits) for p in preds], axis=0)
            return probability, np.mean([p.regions for p in preds], axis=0)

        test_probs["final"], upright_regions = shipped_predict(0)
        test_probs["ensemble"] = np.mean([test_probs[f"fold{k}"] for k in range(cfg.folds)], axis=0)
        for turns in (1, 2, 3):
            test_probs[f"final_turned{90 * turns}"] = shipped_predict(turns)[0]
        _write_regions(out / "regions_test.csv", data, test_idx, upright_regions)
    oof_columns = {"probability": _sigmoid(oof_logit[dev])}
    if student_jobs:
        oof_columns["student"] = _sigmoid(student_oof[dev])
    _write_predictions(out / "predictions_oof.csv", data, groups, dev, {"fold": fold[dev]}, oof_columns)
    if len(test_idx):
        _write_predictions(out / "predictions_test.csv", data, groups, test_idx, {}, test_probs)

    onnx_path = out / f"{cfg.model_name}.onnx"
    export_onnx(final, rc.size, onnx_path)
    sample = np.asarray(data.images[dev[:4]], dtype=np.float32)[:, None] * (2.0 / 255.0) - 1.0
    diff = check_onnx(final, onnx_path, sample)
    _say(f"ONNX written to {onnx_path} (max |torch - onnx| = {diff:.1e})")
    _remove_arrays(out)
    if rc.frozen_trunk and not cfg.trunk_cache:
        from fracsight.training.frozen import remove_cache

        remove_cache(_cache_folder(cfg))

    from fracsight.training.card import training_images, write_card
    from fracsight.training.quantise import quantise_after_export

    trained_on = training_images([data.examples[i] for i in dev], str(cfg.data))
    write_card(
        cfg, out, onnx_path, data, groups, test, summaries, final_epochs, diff, str(device), trained_on
    )
    if cfg.final == "fold-ensemble":
        _say("no 8-bit copy: the quantisation recipe is defined for a single network's graph")
    else:
        quantise_after_export(onnx_path, data.images[dev], data.images[test_idx], data.labels[test_idx])
    return onnx_path


def _cache_folder(cfg: TrainConfig) -> Path:
    return Path(cfg.trunk_cache) if cfg.trunk_cache else Path(cfg.out) / "trunk-cache"


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of models' weights (integer buffers, batch counters, from the first).

    The fold models start from the same ImageNet weights and the same head initialisation (one
    seed) and see 80% of the same images, so they stay close enough for their average to be a
    model that scores like their ensemble, at one model's cost (Wortsman et al., "Model soups",
    2022, for fine-tuned networks from one pre-trained start).
    """
    return {
        key: torch.stack([s[key].float() for s in states]).mean(0) if states[0][key].is_floating_point()
        else states[0][key].clone()
        for key in states[0]
    }


def _average_folds(out: Path, fold_jobs: list) -> None:
    """``final/best.pt``: the fold models' average, batch-norm statistics averaged like the weights.

    Recomputing the statistics for the average (SWA's ``update_bn``) was tried first and dropped:
    on 600 development images it lifted the average's scores on non-fractured images above the
    fold models' ensemble (95th percentile 0.84 against 0.68), so thresholds chosen on the fold
    models' out-of-fold scores no longer held; with the averaged statistics it matched the
    ensemble's (0.68). training/README.md, v4.
    """
    folder = out / "final"
    if (folder / "best.pt").exists():
        return
    folder.mkdir(exist_ok=True)
    _say(f"final model: the average of the {len(fold_jobs)} fold models' weights")
    state = average_states([_load_state(out / j.folder / "best.pt") for j in fold_jobs])
    summary = {"fold_average": [j.folder for j in fold_jobs]}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    _save_state(state, folder / "best.pt")


@dataclass(frozen=True)
class _Job:
    """One training run of a stage: what it trains on, its teachers (folders of finished runs)."""

    folder: str  # under the run's --out: fold0, student2, final
    cfg: RunConfig
    train_idx: np.ndarray
    val_idx: np.ndarray | None  # None: fixed epochs, no early stopping
    teachers: tuple[str, ...]
    title: str
    summary: dict = field(default_factory=dict)  # extra entries for summary.json (the fold number)


def _run_jobs(out: Path, jobs: list[_Job], source: ImageSource, device: torch.device, parallel: int) -> None:
    """Train every job whose ``best.pt`` does not exist yet; ``parallel`` at a time in worker processes."""
    pending = [job for job in jobs if not (out / job.folder / "best.pt").exists()]
    if parallel <= 1 or len(pending) <= 1:
        for job in pending:
            _train_job(out, job, source, device)
        return
    # spawn: a forked child must not inherit the parent's CUDA context.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(parallel, len(pending)), mp_context=context) as pool:
        futures = {pool.submit(_job_process, str(out), job, str(device)): job for job in pending}
        for future in as_completed(futures):
            future.result()  # a failed run stops the training with its own error


def _job_process(out: str, job: _Job, device_name: str) -> None:
    """A worker process: load the prepared arrays onto the device, train one run, keep its weights."""
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    arrays = {name: np.load(Path(out) / "arrays" / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    tensors = TrainingSet.from_arrays(**arrays, device=device)
    _train_job(Path(out), job, ImageSource(tensors, job.cfg.augmentation), device)


def _train_job(out: Path, job: _Job, source: ImageSource, device: torch.device) -> None:
    folder = out / job.folder
    folder.mkdir(exist_ok=True)
    teachers = [load_trained(_load_state(out / t / "best.pt"), job.cfg, device) for t in job.teachers]
    n_val = 0 if job.val_idx is None else len(job.val_idx)
    _say(
        f"{job.title}: {len(job.train_idx)} training, {n_val} validation images, "
        f"up to {job.cfg.epochs} epochs"
    )
    result = train_run(
        job.cfg,
        source,
        job.train_idx,
        job.val_idx,
        device,
        folder / "last.pt",
        teachers=teachers or None,
        progress=lambda m: _say(f"  {job.folder}: {m}"),
    )
    summary = {
        **job.summary,
        "best_epoch": result.best_epoch,
        "val_auc": result.best_auc,
        "epochs": job.cfg.epochs,
        "n_train": len(job.train_idx),
        "n_val": n_val,
        "history": result.history,
    }
    # summary.json first: best.pt marks the run as done for --resume.
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))
    _save_state(result.state, folder / "best.pt")
    (folder / "last.pt").unlink(missing_ok=True)


_ARRAYS = ("images", "masks", "labels", "regions")


def _write_arrays(out: Path, data: PreparedSet) -> None:
    """The prepared set as .npy files, for worker processes to load instead of decoding again."""
    folder = out / "arrays"
    folder.mkdir(exist_ok=True)
    for name in _ARRAYS:
        np.save(folder / f"{name}.npy", getattr(data, name))


def _remove_arrays(out: Path) -> None:
    for name in _ARRAYS:
        (out / "arrays" / f"{name}.npy").unlink(missing_ok=True)
    if (out / "arrays").exists():
        (out / "arrays").rmdir()


def _write_regions(path: Path, data: PreparedSet, idx: np.ndarray, region_logits: np.ndarray) -> None:
    """The region head's probabilities beside the true region flags, for the model card."""
    probs = _sigmoid(region_logits)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "region", "region_flags", *(f"p_{r}" for r in REGIONS)])
        for j, i in enumerate(idx):
            ex = data.examples[i]
            w.writerow([ex.image_id, ex.region, ";".join(ex.region_flags), *(f"{p:.4f}" for p in probs[j])])


def _write_predictions(
    path: Path,
    data: PreparedSet,
    groups: np.ndarray,
    idx: np.ndarray,
    extra: dict[str, np.ndarray],
    probs: dict[str, np.ndarray],
) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "path", "label", "region", "hardware", "group", *extra, *probs])
        for j, i in enumerate(idx):
            ex = data.examples[i]
            w.writerow(
                [
                    ex.image_id,
                    ex.path,
                    ex.label,
                    ex.region,
                    int(ex.hardware),
                    groups[i],
                    *(v[j] for v in extra.values()),
                    *(f"{v[j]:.6f}" for v in probs.values()),
                ]
            )
