"""Errors raised for reader-study input that cannot be analysed as given.

All are ValueError subclasses so the CLI prints them as one line; each message names the
file or thing, the offending values and the rule they break.
"""

from __future__ import annotations


class ReaderStudyError(ValueError):
    """Base class: the reader-study data cannot be analysed as given."""


class MissingColumn(ReaderStudyError):
    """A required column is absent from a CSV file."""


class BadValue(ReaderStudyError):
    """A cell holds a value outside its allowed set (non-numeric rating, truth not 0/1, ...)."""


class InconsistentTruth(ReaderStudyError):
    """The same case is given two different truths (or two different regions)."""


class DuplicateRead(ReaderStudyError):
    """The same (case, reader, modality) appears on more than one row."""


class IncompleteDesign(ReaderStudyError):
    """The design is not fully crossed: some reader lacks some modality or some cases."""


class SingleClass(ReaderStudyError):
    """Only fractured or only non-fractured cases: sensitivity, specificity or AUC is undefined."""


class NotEstimable(ReaderStudyError):
    """The requested figure of merit or test cannot be computed from this data."""


class MissingAIPrediction(ReaderStudyError):
    """The AI predictions file lacks a usable probability for some cases of the study."""
