"""A seeded corpus of hostile inputs through ``fracsight predict``, as CI runs it.

The corpus and the run are those of ``benchmarks/fuzz_predict.py`` (which runs 1,000 mutants
and prints the table): here 250 mutants of one sample per DICOM transfer syntax, a 16-bit
PNG, the bundled JPEGs and TIFFs made from them, plus the hand-made bombs. Without ../shared
the bundled samples alone are mutated.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

MUTANTS = 250
SEED = 20261204
PEAK_MEMORY_LIMIT = 2 << 30


def _fuzz_module():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_predict.py"
    spec = importlib.util.spec_from_file_location("fuzz_predict", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_hostile_corpus_through_predict(tmp_path: Path, record_property) -> None:
    fuzz = _fuzz_module()
    found = fuzz.sources(limit_per_syntax=True)
    folder = tmp_path / "corpus"
    corpus = fuzz.build_corpus(folder, MUTANTS, SEED, found)
    outcome = fuzz.run_predict(
        corpus, folder, tmp_path / "results.csv", fuzz.patient_markers(found), timeout_s=900
    )
    report = fuzz.table(outcome, Counter(p.suffix for p in corpus))
    print(report)
    record_property("fuzz_peak_memory_bytes", outcome.peak_bytes)
    record_property("fuzz_seconds", round(outcome.seconds, 1))
    assert not outcome.died, report
    assert outcome.rows == len(corpus) and not outcome.missing and not outcome.duplicated, report
    assert not outcome.leaks, f"patient data in the output: {outcome.leaks}"
    assert outcome.longest_wait_s < fuzz.HANG_S, report
    assert 0 < outcome.peak_bytes < PEAK_MEMORY_LIMIT, report
