"""Load a reader-study reads file and check that its design can be analysed.

The MRMC methods used here (Obuchowski-Rockette with Hillis' df) need a fully crossed
design: every reader reads every case in every modality. The loader turns the long CSV
(one row per case x reader x modality) into dense arrays and says precisely what is
missing or contradictory, or, if asked, drops the readers or cases that break the design.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fracsight.data.labels import ACCEPTED_LABELS, parse_label
from fracsight.reader_study.errors import (
    BadValue,
    DuplicateRead,
    IncompleteDesign,
    InconsistentTruth,
    NotEstimable,
    ReaderStudyError,
    SingleClass,
)
from fracsight.reader_study.table import (
    cell_list,
    find_column,
    line_list,
    parse_binary,
    parse_numbers,
    read_rows,
)

log = logging.getLogger(__name__)

CASE_COLUMNS = ("case_id", "case", "caseid", "case id")
TRUTH_COLUMNS = ("truth", "fractured", "fracture", "diseased", "label")
READER_COLUMNS = ("reader", "reader_id", "readerid")
MODALITY_COLUMNS = ("modality", "treatment", "arm")
RATING_COLUMNS = ("rating", "score", "confidence", "probability")
CALL_COLUMNS = ("call", "decision", "binary", "positive")
REGION_COLUMNS = ("region", "body_region", "site")

UNSPECIFIED_REGION = "unspecified"


class IncompletePolicy(str, enum.Enum):
    """What to do when the design is not fully crossed."""

    ERROR = "error"  # say what is missing and stop
    DROP_READERS = "drop-readers"  # keep only readers who read every case in every modality
    DROP_CASES = "drop-cases"  # keep only cases read by every reader in every modality


@dataclass(frozen=True)
class ReadStudy:
    """A fully crossed reader study as dense arrays.

    ``ratings`` and ``calls`` have shape (modalities, readers, cases); either may be None
    when the file has no such column. ``calls`` are 0/1 (1 = fracture called).
    """

    case_ids: tuple[str, ...]
    truth: np.ndarray
    readers: tuple[str, ...]
    modalities: tuple[str, ...]
    ratings: np.ndarray | None
    calls: np.ndarray | None
    regions: tuple[str, ...] | None
    source: str
    call_rule: str  # how the binary calls were obtained, in words (empty when there are none)

    @property
    def n_cases(self) -> int:
        return len(self.case_ids)

    @property
    def n_diseased(self) -> int:
        return int(self.truth.sum())

    @property
    def n_normal(self) -> int:
        return self.n_cases - self.n_diseased

    def describe(self) -> str:
        """One line saying on what data any number from this study was measured."""
        return (
            f"{self.n_cases} cases ({self.n_diseased} fractured, {self.n_normal} not), "
            f"{len(self.readers)} readers, modalities {', '.join(self.modalities)}; source {self.source}"
        )

    def select_cases(self, mask: np.ndarray, label: str) -> ReadStudy:
        """The same study restricted to the cases where ``mask`` is true (e.g. one region)."""
        mask = np.asarray(mask, dtype=bool)
        return replace(
            self,
            case_ids=tuple(c for c, keep in zip(self.case_ids, mask, strict=True) if keep),
            truth=self.truth[mask],
            ratings=None if self.ratings is None else self.ratings[:, :, mask],
            calls=None if self.calls is None else self.calls[:, :, mask],
            regions=None
            if self.regions is None
            else tuple(r for r, k in zip(self.regions, mask, strict=True) if k),
            source=f"{self.source} [{label}]",
        )

    def select_modalities(self, names: tuple[str, ...]) -> ReadStudy:
        """The same study restricted to (and ordered as) the named modalities."""
        unknown = [n for n in names if n not in self.modalities]
        if unknown:
            raise ReaderStudyError(
                f"modality {', '.join(map(repr, unknown))} is not in the study "
                f"(modalities present: {', '.join(self.modalities)})"
            )
        index = [self.modalities.index(n) for n in names]
        return replace(
            self,
            modalities=tuple(names),
            ratings=None if self.ratings is None else self.ratings[index],
            calls=None if self.calls is None else self.calls[index],
        )


def make_study(
    case_ids: list[str],
    truth: np.ndarray,
    readers: list[str],
    modalities: list[str],
    ratings: np.ndarray | None,
    calls: np.ndarray | None,
    *,
    source: str,
    call_rule: str = "",
    regions: list[str] | None = None,
) -> ReadStudy:
    """Build a ReadStudy from arrays (as the simulator does), checking shapes and classes."""
    truth = np.asarray(truth, dtype=np.int8)
    shape = (len(modalities), len(readers), len(case_ids))
    for name, array in (("ratings", ratings), ("calls", calls)):
        if array is not None and array.shape != shape:
            raise ReaderStudyError(
                f"{name} array has shape {array.shape}, expected {shape} (modalities, readers, cases)"
            )
    if ratings is None and calls is None:
        raise NotEstimable(f"{source}: neither ratings nor binary calls given; nothing to analyse")
    if len(readers) < 2:
        raise IncompleteDesign(
            f"{source}: {len(readers)} reader(s) ({', '.join(readers)}); "
            "the MRMC analysis needs at least 2 readers"
        )
    _check_both_classes(truth, source)
    return ReadStudy(
        case_ids=tuple(case_ids),
        truth=truth,
        readers=tuple(readers),
        modalities=tuple(modalities),
        ratings=None if ratings is None else np.asarray(ratings, dtype=float),
        calls=None if calls is None else np.asarray(calls, dtype=float),
        regions=None if regions is None else tuple(regions),
        source=source,
        call_rule=call_rule,
    )


def load_reads(
    path: str | Path,
    *,
    cutoff: float | None = None,
    incomplete: IncompletePolicy = IncompletePolicy.ERROR,
) -> ReadStudy:
    """Read a reads CSV (one row per case x reader x modality) into a fully crossed ReadStudy.

    Columns: case_id, truth (1 = fractured), reader, modality, and a rating (ordinal or
    probability, higher = more suspicious) and/or a 0/1 call; optional region. With
    ``cutoff``, binary calls are rating >= cutoff (overriding any call column).
    """
    path = Path(path)
    header, rows = read_rows(path)
    case_col = find_column(header, CASE_COLUMNS, path, required=True)
    truth_col = find_column(header, TRUTH_COLUMNS, path, required=True)
    reader_col = find_column(header, READER_COLUMNS, path, required=True)
    modality_col = find_column(header, MODALITY_COLUMNS, path, required=True)
    rating_col = find_column(header, RATING_COLUMNS, path, required=False)
    call_col = find_column(header, CALL_COLUMNS, path, required=False)
    region_col = find_column(header, REGION_COLUMNS, path, required=False)
    if rating_col is None and call_col is None:
        raise ReaderStudyError(
            f"{path}: needs a rating column ({' or '.join(RATING_COLUMNS)}) and/or a binary call column "
            f"({' or '.join(CALL_COLUMNS)}); columns present: {', '.join(header)}"
        )
    if cutoff is not None and rating_col is None:
        raise ReaderStudyError(
            f"{path}: a rating cut-off ({cutoff}) was given but the file has no rating column"
        )

    cases = [row[case_col] for row in rows]
    readers = [row[reader_col] for row in rows]
    modalities = [row[modality_col] for row in rows]
    for column, values in ((case_col, cases), (reader_col, readers), (modality_col, modalities)):
        empty = [i + 2 for i, v in enumerate(values) if not v]
        if empty:
            raise ReaderStudyError(f"{path}: column {column!r} is empty on lines {line_list(empty)}")
    truths = _parse_truths([row[truth_col] for row in rows], truth_col, path)
    ratings = (
        None
        if rating_col is None
        else parse_numbers(
            [row[rating_col] for row in rows],
            rating_col,
            path,
            what="ratings must be numbers, higher = more suspicious",
        )
    )
    calls = (
        None
        if call_col is None
        else parse_binary(
            [row[call_col] for row in rows], call_col, path, what="calls must be 1 (fracture) or 0"
        )
    )
    call_rule = ""
    if cutoff is not None:
        if call_col is not None:
            log.info(
                "%s: binary calls taken as %s >= %s; column %r ignored", path, rating_col, cutoff, call_col
            )
        calls = [int(r >= cutoff) for r in ratings]  # type: ignore[union-attr]
        call_rule = f"{rating_col} >= {cutoff:g}"
    elif call_col is not None:
        call_rule = f"column {call_col!r}"

    case_order = list(dict.fromkeys(cases))
    reader_order = list(dict.fromkeys(readers))
    modality_order = list(dict.fromkeys(modalities))
    truth = _truth_per_case(cases, truths, case_order, path)
    regions = (
        None
        if region_col is None
        else _region_per_case(cases, [row[region_col] for row in rows], case_order, path)
    )

    case_index = {c: i for i, c in enumerate(case_order)}
    reader_index = {r: i for i, r in enumerate(reader_order)}
    modality_index = {m: i for i, m in enumerate(modality_order)}
    shape = (len(modality_order), len(reader_order), len(case_order))
    rating_grid = None if ratings is None else np.full(shape, np.nan)
    call_grid = None if calls is None else np.full(shape, np.nan)
    first_line = np.zeros(shape, dtype=np.int64)
    duplicates: list[str] = []
    for row_index, (c, r, m) in enumerate(zip(cases, readers, modalities, strict=True)):
        cell = (modality_index[m], reader_index[r], case_index[c])
        if first_line[cell]:
            duplicates.append(
                f"case {c!r} reader {r!r} modality {m!r} (lines {first_line[cell]} and {row_index + 2})"
            )
            continue
        first_line[cell] = row_index + 2
        if rating_grid is not None:
            rating_grid[cell] = ratings[row_index]  # type: ignore[index]
        if call_grid is not None:
            call_grid[cell] = calls[row_index]  # type: ignore[index]
    if duplicates:
        raise DuplicateRead(
            f"{path}: {len(duplicates)} read(s) appear more than once: {'; '.join(duplicates[:3])}"
            + (f" and {len(duplicates) - 3} more" if len(duplicates) > 3 else "")
            + "; each (case, reader, modality) must be read once"
        )

    present = first_line > 0
    keep_modalities, keep_readers, keep_cases = _resolve_design(
        present, case_order, reader_order, modality_order, path, incomplete
    )
    rating_grid = (
        None if rating_grid is None else rating_grid[np.ix_(keep_modalities, keep_readers, keep_cases)]
    )
    call_grid = None if call_grid is None else call_grid[np.ix_(keep_modalities, keep_readers, keep_cases)]
    return make_study(
        [case_order[i] for i in keep_cases],
        truth[keep_cases],
        [reader_order[i] for i in keep_readers],
        [modality_order[i] for i in keep_modalities],
        rating_grid,
        call_grid,
        source=str(path),
        call_rule=call_rule,
        regions=None if regions is None else [regions[i] for i in keep_cases],
    )


def _parse_truths(values: list[str], column: str, path: Path) -> list[int]:
    """Truth by the rule of every fracture label (so 1.0, fractured... work here too); bad cells by line."""
    parsed = [parse_label(text) for text in values]
    bad = [(i + 2, text) for i, (text, value) in enumerate(zip(values, parsed, strict=True)) if value is None]
    if bad:
        raise BadValue(
            f"{path}: column {column!r} has {len(bad)} value(s) that are not a fracture truth "
            f"({cell_list(bad)}); accepted: {ACCEPTED_LABELS}"
        )
    return [int(value) for value in parsed if value is not None]


def _truth_per_case(cases: list[str], truths: list[int], case_order: list[str], path: Path) -> np.ndarray:
    first_line: dict[tuple[str, int], int] = {}
    for line, (c, t) in enumerate(zip(cases, truths, strict=True), start=2):
        first_line.setdefault((c, t), line)
    conflicting = [
        f"case {c!r} has truth 0 (line {first_line[(c, 0)]}) and truth 1 (line {first_line[(c, 1)]})"
        for c in case_order
        if (c, 0) in first_line and (c, 1) in first_line
    ]
    if conflicting:
        raise InconsistentTruth(
            f"{path}: {len(conflicting)} case(s) with two truths: {'; '.join(conflicting[:3])}"
            + (f"; and {len(conflicting) - 3} more" if len(conflicting) > 3 else "")
            + ". Truth is a property of the case and must agree on every row"
        )
    return np.array([1 if (c, 1) in first_line else 0 for c in case_order], dtype=np.int8)


def _region_per_case(cases: list[str], regions: list[str], case_order: list[str], path: Path) -> list[str]:
    seen: dict[str, set[str]] = {}
    for c, r in zip(cases, regions, strict=True):
        if r:
            seen.setdefault(c, set()).add(r)
    conflicting = [f"{c!r} ({' / '.join(sorted(seen[c]))})" for c in case_order if len(seen.get(c, ())) > 1]
    if conflicting:
        raise InconsistentTruth(
            f"{path}: {len(conflicting)} case(s) are given two regions: {line_list(conflicting)}; "
            "region is a property of the case and must agree on every row"
        )
    return [next(iter(seen[c])) if c in seen else UNSPECIFIED_REGION for c in case_order]


def _resolve_design(
    present: np.ndarray,
    case_order: list[str],
    reader_order: list[str],
    modality_order: list[str],
    path: Path,
    policy: IncompletePolicy,
) -> tuple[list[int], list[int], list[int]]:
    """Indices of modalities, readers and cases to keep; raise or drop per ``policy`` if not crossed."""
    all_m, all_r, all_c = (
        list(range(len(modality_order))),
        list(range(len(reader_order))),
        list(range(len(case_order))),
    )
    if present.all():
        return all_m, all_r, all_c
    if policy is IncompletePolicy.DROP_READERS:
        complete = [r for r in all_r if present[:, r, :].all()]
        dropped = [reader_order[r] for r in all_r if r not in complete]
        if len(complete) < 2:
            raise IncompleteDesign(
                f"{path}: {_describe_missing(present, case_order, reader_order, modality_order)}; "
                f"dropping incomplete readers would leave {len(complete)} (at least 2 needed)"
            )
        log.warning("%s: dropped %d incomplete reader(s): %s", path, len(dropped), ", ".join(dropped))
        return all_m, complete, all_c
    if policy is IncompletePolicy.DROP_CASES:
        complete = [c for c in all_c if present[:, :, c].all()]
        if not complete:
            raise IncompleteDesign(
                f"{path}: {_describe_missing(present, case_order, reader_order, modality_order)}; "
                "no case was read by every reader in every modality"
            )
        log.warning(
            "%s: dropped %d case(s) not read by every reader in every modality",
            path,
            len(all_c) - len(complete),
        )
        return all_m, all_r, complete
    raise IncompleteDesign(
        f"{path}: {_describe_missing(present, case_order, reader_order, modality_order)}. "
        "The Obuchowski-Rockette analysis needs every reader to read every case in every modality; "
        "fix the file, or analyse the complete part with --incomplete drop-readers or drop-cases"
    )


def _describe_missing(
    present: np.ndarray, case_order: list[str], reader_order: list[str], modality_order: list[str]
) -> str:
    n_cases = len(case_order)
    problems = []
    for m, modality in enumerate(modality_order):
        for r, reader in enumerate(reader_order):
            missing = np.flatnonzero(~present[m, r])
            if missing.size == n_cases:
                problems.append(f"reader {reader!r} has no reads in modality {modality!r}")
            elif missing.size:
                problems.append(
                    f"reader {reader!r} in modality {modality!r} lacks {missing.size} of {n_cases} cases "
                    f"({line_list([case_order[i] for i in missing])})"
                )
    shown = "; ".join(problems[:4])
    more = f"; and {len(problems) - 4} more reader-modality cells incomplete" if len(problems) > 4 else ""
    return f"incomplete design: {shown}{more}"


def _check_both_classes(truth: np.ndarray, source: str) -> None:
    n_pos = int(truth.sum())
    if n_pos == 0 or n_pos == truth.size:
        only = "fractured (truth 1)" if n_pos else "not fractured (truth 0)"
        raise SingleClass(
            f"{source}: all {truth.size} cases are {only}; sensitivity needs fractured cases, specificity "
            "non-fractured ones and AUC both"
        )
