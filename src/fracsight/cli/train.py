"""``fracsight train``: fit the fracture model on labelled radiographs and export it."""

from __future__ import annotations

import argparse
import functools
import shlex

from fracsight.cli.options import (
    a_folder_to_write,
    a_name,
    a_number,
    a_whole_number,
    an_existing_file,
    an_existing_path,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (grouped CV, distilled final model, ONNX + model card)",
        description="Train on a FracAtlas-layout folder or a CSV manifest "
        "(path,label[,region,hardware,boxes,group]).",
    )
    p.add_argument(
        "data",
        type=an_existing_path("training data"),
        help="FracAtlas folder (with dataset.csv) or manifest .csv",
    )
    p.add_argument(
        "--out", required=True, type=a_folder_to_write, help="output folder (checkpoints, predictions, model)"
    )
    p.add_argument("--name", type=a_name, default="model", help="model file name stem (default: model)")
    p.add_argument(
        "--size",
        type=a_whole_number(32, multiple_of=32),
        default=384,
        help="square input size in px (multiple of 32)",
    )
    p.add_argument("--backbone", default="lite0", choices=["lite0", "lite1", "lite2"])
    p.add_argument("--no-pretrained", action="store_true", help="random init instead of ImageNet weights")
    p.add_argument("--epochs", type=a_whole_number(1), default=25, help="maximum epochs per fold")
    p.add_argument(
        "--final-epochs",
        type=a_whole_number(1),
        help="epochs of the final model (default: median best fold epoch + 1)",
    )
    p.add_argument("--folds", type=a_whole_number(2), default=5, help="grouped CV folds (default 5)")
    p.add_argument(
        "--test-fraction",
        type=a_number(0, 0.5, open_low=True, open_high=True),
        default=0.15,
        help="share held out for the test split, in (0, 0.5) (default 0.15)",
    )
    p.add_argument("--batch-size", type=a_whole_number(1), default=64)
    p.add_argument(
        "--lr", type=a_number(0, open_low=True), default=1e-3, help="head learning rate (backbone: 0.3x)"
    )
    p.add_argument("--patience", type=a_whole_number(1), default=8, help="early-stopping patience in epochs")
    p.add_argument("--no-distill", action="store_true", help="final model on hard labels only")
    p.add_argument(
        "--no-cross-fit",
        action="store_true",
        help="skip the cross-fitted students; thresholds from the fold models' OOF scores instead",
    )
    p.add_argument(
        "--box-weight", type=a_number(0), default=1.0, help="weight of the box-supervised map loss (>= 0)"
    )
    p.add_argument(
        "--localisation",
        choices=["linear", "conv"],
        default="linear",
        help="the fine heat map's head: 'linear' (a 1x1 convolution on the stride-16 features, v1-v3) "
        "or 'conv' (two 3x3 convolutions over stride-16 and stride-32 features, v4)",
    )
    p.add_argument(
        "--point-weight",
        type=a_number(0),
        default=0.0,
        help="weight of the pointing loss (the share of the map's softmax inside the boxes), >= 0",
    )
    p.add_argument(
        "--final",
        choices=["trained", "fold-average", "fold-ensemble"],  # training.train.FINAL_MODELS
        default="trained",
        help="the shipped model: 'trained' on all development images after the folds; "
        "'fold-average', the fold models' weights averaged; or 'fold-ensemble', the fold models in "
        "one graph, their mean probability (one trunk when it is frozen). The last two take their "
        "thresholds from the fold models' out-of-fold scores and need --no-distill",
    )
    p.add_argument(
        "--trunk-cache",
        metavar="DIR",
        help="with --frozen-trunk: keep the trunk cache in DIR and leave it there (several runs of "
        "one recipe, e.g. seeds, then compute it once); default OUT/trunk-cache, removed at the end",
    )
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
        "--frozen-trunk",
        action="store_true",
        help="the CPU route: keep the ImageNet trunk (all but the last block) frozen, compute its "
        "output once per image in all 8 orientations, train only the last block and the heads "
        "(no other augmentation; needs --no-distill)",
    )
    p.add_argument(
        "--sensitivity",
        type=a_number(0, 1, open_low=True),
        default=0.88,
        help="OOF sensitivity target of 'doubt' (0.88 on about 475 fractures: 95%% lower bound near 0.85)",
    )
    p.add_argument(
        "--specificity",
        type=a_number(0, 1, open_low=True),
        default=0.95,
        help="OOF specificity target of 'fracture', in (0, 1]",
    )
    p.add_argument(
        "--test-split",
        type=an_existing_file("split"),
        metavar="SPLIT_CSV",
        help="hold out the 'test' rows of an earlier run's split.csv instead of drawing a new test split "
        "(to compare two models on the same cases)",
    )
    p.add_argument(
        "--limit",
        type=a_whole_number(2),
        help="train on a class-balanced subset of N images, N >= 2 (smoke test)",
    )
    p.add_argument(
        "--max-steps", type=a_whole_number(1), help="stop each run after N optimiser steps (smoke test)"
    )
    p.add_argument("--device", type=_device, default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--workers", type=a_whole_number(1), default=2, help="processes for decoding")
    p.add_argument(
        "--parallel",
        type=a_whole_number(1),
        default=1,
        help="runs of a stage (folds; students and final) trained at once, each in its own process "
        "on the same device (for a large GPU; keep 1 on a CPU)",
    )
    p.add_argument("--seed", type=a_whole_number(0), default=0)
    p.add_argument("--resume", action="store_true", help="continue a stopped run in --out")
    p.set_defaults(func=functools.partial(run, parser=p))


def _device(text: str) -> str:
    """An argparse type: auto, cpu, cuda or cuda:N (whether CUDA is there is checked when training starts)."""
    if text in ("auto", "cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not auto, cpu, cuda or cuda:N")


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
        localisation=args.localisation,
        point_weight=args.point_weight,
        max_steps=args.max_steps,
        seed=args.seed,
        frozen_trunk=args.frozen_trunk,
        augmentation=Augmentation(quarter_turns=not args.no_quarter_turns),
    )
    cfg = TrainConfig(
        data=args.data,
        out=args.out,
        folds=args.folds,
        test_fraction=args.test_fraction,
        distill=not args.no_distill,
        cross_fit=not args.no_cross_fit,
        final_epochs=args.final_epochs,
        final=args.final,
        trunk_cache=args.trunk_cache,
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
