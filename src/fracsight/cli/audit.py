"""``fracsight audit``: find what would make an evaluation on a dataset dishonest, before training on it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fracsight.cli.options import (
    a_file_to_write,
    a_folder_to_write,
    a_number,
    a_whole_number,
    an_existing_file,
    an_existing_path,
)
from fracsight.data.duplicates import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION

_EPILOG = """\
exit codes:
  0  the audit ran (defects, if any, are in the report)
  1  --fail-on was given and a defect of one of those kinds was found
  2  the dataset, manifest or split file could not be read

kinds for --fail-on (comma-separated, or 'any'):
  {kinds}

A CI pipeline guarding a frozen split would use e.g.
  fracsight audit data/ --split-file splits.csv --fail-on cross_split_duplicates,conflicting_labels
"""


def _kinds() -> list[str]:
    from fracsight.data.audit import DefectKind

    return [k.value for k in DefectKind]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="find duplicates, truncated files and label/box conflicts in a dataset",
        description="Audit a dataset for what breaks honest evaluation: exact and near-duplicate "
        "images (within and across splits, and with conflicting labels), truncated or unreadable "
        "files, labels contradicting box annotations, and the class balance per region. DATASET is "
        "a FracAtlas folder or a manifest CSV with columns path,label[,region][,boxes] (boxes: JSON "
        "list of [x0,y0,x1,y1] in image pixels; paths relative to the manifest).",
        epilog=_EPILOG.format(kinds=", ".join(_kinds())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", type=an_existing_path("dataset"), help="FracAtlas folder or manifest CSV")
    p.add_argument(
        "--split-file",
        type=an_existing_file("split"),
        help="CSV with columns id,split (id: image id, file name or path)",
    )
    p.add_argument(
        "--report", type=a_folder_to_write, help="write audit.html and audit.json into this folder"
    )
    p.add_argument(
        "--json",
        dest="json_out",
        type=a_file_to_write,
        help="write the full JSON report to this file ('-' for stdout)",
    )
    p.add_argument(
        "--fail-on",
        type=_fail_kinds,
        default=[],
        help="exit 1 if a defect of these kinds is found (comma-separated, or 'any')",
    )
    p.add_argument(
        "--max-distance",
        type=a_number(0, 256),
        default=DEFAULT_MAX_DISTANCE,
        help=f"near-duplicate dHash distance, of 256 bits (default {DEFAULT_MAX_DISTANCE})",
    )
    p.add_argument(
        "--min-correlation",
        type=a_number(-1, 1),
        default=DEFAULT_MIN_CORRELATION,
        help=f"near-duplicate thumbnail correlation, -1 to 1 (default {DEFAULT_MIN_CORRELATION})",
    )
    p.add_argument("--workers", type=a_whole_number(1), help="processes decoding images (default: up to 2)")
    p.set_defaults(func=run)


def _fail_kinds(text: str) -> list:
    """An argparse type: defect kinds, comma-separated, or 'any'."""
    from fracsight.data.audit import DefectKind

    names = [t.strip() for t in text.split(",") if t.strip()]
    if names == ["any"]:
        return list(DefectKind)
    unknown = [n for n in names if n not in {k.value for k in DefectKind}]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown kind(s) {unknown}; use 'any' or some of {_kinds()}")
    return [DefectKind(n) for n in names]


def run(args: argparse.Namespace) -> int:
    from fracsight.data.audit import audit, render_html, summary_text

    report = audit(
        args.dataset,
        split_file=args.split_file,
        max_distance=args.max_distance,
        min_correlation=args.min_correlation,
        workers=args.workers,
    )
    document = json.dumps(report.to_json(), indent=1)
    if args.json_out == "-":
        sys.stdout.write(document + "\n")
    else:
        sys.stdout.write(summary_text(report))
        if args.json_out:
            Path(args.json_out).write_text(document + "\n")
    if args.report:
        folder = Path(args.report)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "audit.json").write_text(document + "\n")
        (folder / "audit.html").write_text(render_html(report), encoding="utf-8")
    return 1 if args.fail_on and report.found(args.fail_on) else 0
