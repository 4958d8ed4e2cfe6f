"""``fracsight train``: fit the fracture model on labelled radiographs and export it."""

from __future__ import annotations

import argparse
import functools
import shlex


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (grouped CV, distilled final model, ONNX + model card)",
        description="Train on a FracAtlas-layout folder or a CSV manifest "
        "(path,label[,region,hardware,boxes,group]).",
    )
    p.add_argument("data", help="FracAtlas folder (with dataset.csv) or manifest .csv")
    p.add_argument("--out", required=True, help="output folder (checkpoints, predictions, model)")
    p.add_argument("--name", default="model", help="model file name stem (default: model)")
    p.add_argument("--size", type=int, default=384, help="square input size in px (multiple of 32)")
    p.add_argument("--backbone", default="lite0", choices=["lite0", "lite1", "lite2"])
    p.add_argument("--no-pretrained", action="store_true", help="random init instead of ImageNet weights")
    p.add_argument("--epochs", type=int, default=25, help="maximum epochs per fold")
    p.add_argument(
        "--final-epochs", type=int, help="epochs of the final model (default: median best fold epoch + 1)"
    )
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--test-fraction", type=float, default=0.15)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="head learning rate (backbone: 0.3x)")
    p.add_argument("--patience", type=int, default=8, help="early-stopping patience in epochs")
    p.add_argument("--no-distill", action="store_true", help="final model on hard labels only")
    p.add_argument(
        "--no-cross-fit",
        action="store_true",
        help="skip the cross-fitted students; thresholds from the fold models' OOF scores instead",
    )
    p.add_argument("--box-weight", type=float, default=1.0, help="weight of the box-supervised map loss")
    p.add_argument(
        "--heatmap-stride",
        type=int,
        default=16,
        choices=[16, 32],
        help="input pixels per heat-map cell (16: 24 x 24 cells at 384 px; 32: 12 x 12)",
    )
    p.add_argument(
        "--no-quarter-turns",
        action="store_true",
        help="augment without turns by 90/180/270 degrees (the model then reads turned images worse)",
    )
    p.add_argument(
        "--sensitivity",
        type=float,
        default=0.88,
        help="OOF sensitivity target of 'doubt' (0.88 on about 475 fractures: 95%% lower bound near 0.85)",
    )
    p.add_argument("--specificity", type=float, default=0.95, help="OOF specificity target of 'fracture'")
    p.add_argument(
        "--test-split",
        metavar="SPLIT_CSV",
        help="hold out the 'test' rows of an earlier run's split.csv instead of drawing a new test split "
        "(to compare two models on the same cases)",
    )
    p.add_argument("--limit", type=int, help="train on a class-balanced subset of N images (smoke test)")
    p.add_argument("--max-steps", type=int, help="stop each run after N optimiser steps (smoke test)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--workers", type=int, default=2, help="processes for decoding")
    p.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runs of a stage (folds; students and final) trained at once, each in its own process "
        "on the same device (for a large GPU; keep 1 on a CPU)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    p.set_defaults(func=functools.partial(run, parser=p))


def _command(args: argparse.Namespace, parser: argparse.ArgumentParser | None) -> str:
    """The command as parsed, every option spelt out: not ``sys.argv``, which belongs to whoever
    called :func:`fracsight.cli.main` (a test runner, a notebook) and not to this run."""
    if parser is None:
        return ""
    words = ["fracsight", "train", args.data]
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest == "help" or value is None or value is False:
            continue
        flag = action.option_strings[-1]
        words += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    from pathlib import Path

    try:
        from fracsight.training.augment import Augmentation
        from fracsight.training.loop import RunConfig
        from fracsight.training.train import TrainConfig, run_training
    except ImportError as exc:
        raise RuntimeError(
            f"training needs the 'train' extra: pip install 'fracsight[train]' ({exc})"
        ) from exc
    if args.size % 32:
        raise ValueError(f"--size {args.size} must be a multiple of 32")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise ValueError(f"{out} is not empty: pass --resume to continue that run, or choose another --out")
    run_cfg = RunConfig(
        size=args.size,
        variant=args.backbone,
        pretrained=not args.no_pretrained,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr_head=args.lr,
        lr_backbone=args.lr * 0.3,
        patience=args.patience,
        box_weight=args.box_weight,
        heatmap_stride=args.heatmap_stride,
        max_steps=args.max_steps,
        seed=args.seed,
        augmentation=Augmentation(quarter_turns=not args.no_quarter_turns),
    )
    if args.parallel < 1:
        raise ValueError(f"--parallel {args.parallel}: must be at least 1")
    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        folds=args.folds,
        test_fraction=args.test_fraction,
        distill=not args.no_distill,
        cross_fit=not args.no_cross_fit,
        final_epochs=args.final_epochs,
        device=args.device,
        workers=args.workers,
        parallel=args.parallel,
        test_split=args.test_split,
        limit=args.limit,
        sensitivity_target=args.sensitivity,
        specificity_target=args.specificity,
        model_name=args.name,
        command=_command(args, parser),
        run=run_cfg,
    )
    path = run_training(cfg)
    print(path)
    return 0
