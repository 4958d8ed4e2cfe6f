"""``fracsight evaluate``: accuracy with CIs, overall and by region, calibration, report for clinicians."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from fracsight.cli.options import (
    a_folder_to_write,
    a_model,
    a_number,
    a_whole_number,
    an_existing_file,
    an_existing_path,
)

if TYPE_CHECKING:
    from fracsight.evaluation.metrics import Estimate
    from fracsight.evaluation.sources import LoadedCases

log = logging.getLogger(__name__)


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments naming the cases, shared with ``thresholds`` and ``calibrate``."""
    parser.add_argument(
        "dataset",
        nargs="?",
        type=an_existing_path("dataset"),
        help="FracAtlas-layout folder or manifest CSV (path,label[,region][,boxes]) to run the model on",
    )
    parser.add_argument(
        "--model", type=a_model, help="ONNX model, NAME.card.json beside it (default: shipped model)"
    )
    parser.add_argument(
        "--predictions",
        type=an_existing_file("predictions"),
        help="predictions CSV instead of running a model (path or id, probability[, error])",
    )
    parser.add_argument(
        "--labels",
        type=an_existing_file("labels"),
        help="labels CSV for --predictions (id, label: 1/0, true/false, fractured/non_fractured[, region])",
    )
    parser.add_argument(
        "--split-file", type=an_existing_file("split"), help="CSV of id,split: use only the cases of --split"
    )
    parser.add_argument("--split", help="which split of --split-file to use (e.g. test)")
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="labelled cases without a prediction are listed as not analysed instead of being an error",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while the model runs")
    parser.add_argument(
        "--include-training-images",
        action="store_true",
        help="go on when some cases are images the model was trained on (its card records them by "
        "content hash); every figure is then labelled as including them: not a test",
    )


def load_data_arguments(
    args: argparse.Namespace, command: str, model: str | None, **options: Any
) -> LoadedCases:
    """The cases that :func:`add_data_arguments`' options name, ``model`` run on a dataset (or the
    model behind --predictions); says how many of them the model was trained on. ``options`` go to
    :func:`~fracsight.evaluation.sources.load_cases` as they are."""
    from fracsight.evaluation.sources import load_cases

    loaded = load_cases(
        dataset=args.dataset,
        predictions=args.predictions,
        labels=args.labels,
        model=model,
        split_file=args.split_file,
        split=args.split,
        allow_missing=args.allow_missing,
        progress=not args.no_progress,
        include_training_images=args.include_training_images,
        **options,
    )
    say_training_images(command, loaded)
    return loaded


def say_training_images(command: str, loaded: LoadedCases) -> None:
    """Say how many of the cases the model was trained on (or why that was not checked)."""
    if loaded.training is not None:
        text = loaded.training.summary()
        if loaded.training.n:
            text += "; reported as asked (--include-training-images), every figure labelled: NOT A TEST"
    elif loaded.card is None:
        text = "no --model named the model behind these predictions: training images not checked"
    else:
        text = "the model card does not record its training images: not checked"
    print(f"fracsight {command}: {text}", file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="measure accuracy with 95%% CIs and write metrics.json and an HTML report",
        description="ROC AUC (DeLong and bootstrap CIs), sensitivity, specificity, PPV and NPV (Wilson CIs) "
        "at the model's operating points and at given thresholds, by body region and other columns, "
        "calibration, and a self-contained HTML report. Either run a model on a DATASET, or give "
        "--predictions and --labels.",
    )
    add_data_arguments(p)
    p.add_argument(
        "--report", required=True, type=a_folder_to_write, help="folder for metrics.json and report.html"
    )
    p.add_argument(
        "--by",
        action="append",
        default=[],
        metavar="COLUMN",
        help="also break results down by this labels column (region and hardware are used when present)",
    )
    p.add_argument(
        "--threshold",
        action="append",
        type=a_number(0, 1),
        default=[],
        help="also evaluate at this threshold (0-1)",
    )
    p.add_argument(
        "--prevalence",
        type=a_number(0, 1, open_low=True, open_high=True),
        help="also give PPV and NPV at this prevalence (0-1)",
    )
    p.add_argument(
        "--bootstrap", type=a_whole_number(100), default=2000, help="bootstrap resamples (default 2000)"
    )
    p.add_argument("--seed", type=a_whole_number(0), default=0, help="bootstrap seed (default 0)")
    p.add_argument("--bins", type=a_whole_number(2), default=10, help="calibration bins (default 10)")
    p.add_argument(
        "--out-of-scope",
        action="append",
        type=a_named_folder,
        default=[],
        metavar="NAME=DIR",
        help="also measure the out-of-scope check: the images of DIR (named NAME; repeatable) are run "
        "through the model and their distance scores compared with the evaluated images' (needs a "
        "DATASET, not --predictions)",
    )
    p.add_argument(
        "--gallery-point", help="operating point whose TP/FN/FP fill the gallery (default: 'fracture')"
    )
    p.set_defaults(func=run)


def a_named_folder(text: str) -> tuple[str, str]:
    """``NAME=DIR`` for --out-of-scope: a name for the set and an existing folder."""
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=DIR (e.g. chest=data/chest-radiographs)")
    return name.strip(), an_existing_path("out-of-scope folder")(folder)


def run(args: argparse.Namespace) -> int:
    from fracsight.evaluation.evaluate import (
        EvaluationSettings,
        evaluate_cases,
        operating_points,
        safety_net,
    )
    from fracsight.evaluation.expert_boxes import box_results
    from fracsight.evaluation.model_run import FindingPictures
    from fracsight.evaluation.report import write_report
    from fracsight.model_card import ModelCard

    settings = EvaluationSettings(
        n_resamples=args.bootstrap, seed=args.seed, n_bins=args.bins, prevalence=args.prevalence
    )
    card = ModelCard.for_model(args.model) if args.model or args.dataset else None  # the model that runs
    points, notes = operating_points(card, args.threshold)
    names = [op.name for op in points]
    if args.gallery_point is not None and args.gallery_point not in names:
        raise ValueError(
            f"argument --gallery-point: {args.gallery_point!r} is not an operating point of this "
            f"evaluation; choose from {', '.join(map(repr, names))}"
        )
    sets = dict(args.out_of_scope)
    if len(sets) != len(args.out_of_scope):
        raise ValueError("argument --out-of-scope: each NAME must be given once")
    if sets and args.dataset is None:
        raise ValueError(
            "argument --out-of-scope: the check is measured on images the model runs on here; give a "
            "DATASET instead of --predictions"
        )
    loaded = load_data_arguments(args, "evaluate", args.model, group_columns=args.by)
    evaluation = evaluate_cases(loaded.cases, loaded.model, points, list(loaded.cases.groups), settings)
    evaluation.notes.extend(notes)
    evaluation.training = loaded.training
    if loaded.boxes is not None and loaded.findings:
        evaluation.localisation = box_results(loaded.cases, loaded.findings, loaded.boxes)
    if sets:
        evaluation.safety = safety_net(loaded.cases, loaded.findings, sets, loaded.model_path, settings)
        say_safety_net(evaluation.safety)
    picture = FindingPictures(loaded.cases, loaded.findings) if loaded.findings else None
    files = write_report(evaluation, args.report, picture=picture, gallery_point=args.gallery_point)
    cases = evaluation.cases
    data = cases.labels_source  # names the split too when one was chosen (restrict_labels)
    print(
        f"fracsight evaluate: {cases.n} cases ({cases.n_positive} fractured) of {data}, "
        f"{len(cases.excluded)} not analysed; ROC AUC {auc_text(evaluation.auc.delong)}"
        + (f" [{evaluation.caution.upper()}]" if evaluation.caution else "")
        + f"; report: {files.html}",
        file=sys.stderr,
    )
    return 0


def say_safety_net(safety: dict[str, Any]) -> None:
    """One line per set: what the out-of-scope check did, each number with the data it is from."""
    inside = safety["in_scope"]
    flag = inside["false_flag_rate"]
    print(
        f"fracsight evaluate: out-of-scope check on {inside['data']}: wrongly flagged "
        f"{flag['k']}/{flag['n']}",
        file=sys.stderr,
    )
    for name, entry in safety["out_of_scope_sets"].items():
        parts = [f"{entry['n']} analysed, {entry['refused_before_the_check']} refused before the check"]
        if "auroc" in entry:
            parts.append(f"AUROC {auc_text_of(entry['auroc']['delong'])}")
        if "flagged" in entry:
            parts.append(f"flagged {entry['flagged']['k']}/{entry['flagged']['n']}")
        print(f"fracsight evaluate: out-of-scope set {name!r}: " + ", ".join(parts), file=sys.stderr)
    acc = safety["accuracy_when_flagged_set_aside"]
    scored = acc.get("scored")
    print(
        f"fracsight evaluate: fracture ROC AUC all {acc['all']['value']:.3f} (n={acc['n_all']}), "
        + (f"scored only {scored['value']:.3f}" if scored else "scored only: undefined")
        + f" (n={acc['n_scored']})",
        file=sys.stderr,
    )


def auc_text_of(delong: dict[str, Any]) -> str:
    """The AUROC of the scores of two sets, with its DeLong CI or that the sets do not overlap."""
    if delong.get("lower") is None or delong.get("upper") is None:
        return f"{delong['value']:.3f} (the sets do not overlap: no CI)"
    return f"{delong['value']:.3f} (95% CI {delong['lower']:.3f}-{delong['upper']:.3f}, DeLong)"


def auc_text(delong: Estimate) -> str:
    """'0.871 (95% CI 0.842-0.899, DeLong)', or the reason when there is no CI (e.g. AUC exactly 1)."""
    if delong.lower is None or delong.upper is None:
        return f"{delong.value:.3f} ({delong.method})"
    return f"{delong.value:.3f} (95% CI {delong.lower:.3f}-{delong.upper:.3f}, DeLong)"
