"""Result records of a reader-study analysis (what ``analyse_study`` returns and the reports read)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fracsight.reader_study.data import ReadStudy
from fracsight.reader_study.fom import CovarianceMethod, FigureOfMerit
from fracsight.reader_study.or_analysis import MarginTest, TestResult


@dataclass(frozen=True)
class ReaderValue:
    reader: str
    value: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ModalitySummary:
    """Reader-averaged figure of merit of one modality, with per-reader values."""

    fom: FigureOfMerit
    modality: str
    value: float
    ci_low: float
    ci_high: float
    se: float
    df: float
    n_cases: int  # cases entering the figure (fractured only for sensitivity, ...)
    per_reader: tuple[ReaderValue, ...]


@dataclass(frozen=True)
class Comparison:
    """modality_a minus modality_b (a modality, or the AI alone), random readers and cases first."""

    kind: str  # "modalities" or "readers_vs_ai"
    fom: FigureOfMerit
    modality_a: str
    modality_b: str
    fom_a: float
    fom_b: float
    primary: TestResult  # random readers, random cases
    fixed_readers: TestResult
    fixed_cases: TestResult
    superiority: MarginTest
    non_inferiority: MarginTest | None
    method: str
    covariance: CovarianceMethod
    n_cases: int
    n_readers: int


@dataclass(frozen=True)
class AIOperatingResult:
    name: str
    threshold: float
    sensitivity: float
    sensitivity_ci: tuple[float, float]
    specificity: float
    specificity_ci: tuple[float, float]


@dataclass(frozen=True)
class AISummary:
    source: str
    model_id: str | None
    threshold_source: str
    auc: float
    auc_ci: tuple[float, float]
    operating_points: tuple[AIOperatingResult, ...]
    roc_fpr: tuple[float, ...]
    roc_tpr: tuple[float, ...]


@dataclass(frozen=True)
class GroupResult:
    """Everything computed on one set of cases (the whole study or one region)."""

    label: str
    n_cases: int
    n_fractured: int
    summaries: tuple[ModalitySummary, ...]
    comparisons: tuple[Comparison, ...]
    variance_components: tuple[dict, ...]
    ai: AISummary | None
    notes: tuple[str, ...]


@dataclass(frozen=True)
class StudyAnalysis:
    study: ReadStudy
    covariance: CovarianceMethod
    alpha: float
    foms: tuple[FigureOfMerit, ...]
    margins: dict[FigureOfMerit, float]
    overall: GroupResult
    regions: tuple[GroupResult, ...] = field(default=())
