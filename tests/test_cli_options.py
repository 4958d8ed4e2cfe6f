"""Every sub-command checks its options before it works: a bad value of any option is refused in one
line that names the option and what it accepts, with exit code 2, before any image is decoded or
model run (``predict`` has its own test)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fracsight.cli import main

LABELS = {"IMG0000001": 0, "IMG0000020": 0, "IMG0000763": 1, "IMG0001739": 1, "IMG0002472": 1}


@pytest.fixture()
def files(tmp_path: Path, sample_images: list[Path], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Valid inputs for every command, and every slow step replaced by a tripwire."""

    def tripwire(*args: object, **kwargs: object) -> None:
        raise AssertionError("work started before the options were checked")

    for target in (
        "fracsight.evaluation.model_run.run_model",
        "fracsight.data.audit.scan_images",
        "fracsight.training.train.run_training",
        "fracsight.reader_study.data.load_reads",
    ):
        monkeypatch.setattr(target, tripwire)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "path,label\n" + "".join(f"{p},{LABELS[p.stem]}\n" for p in sample_images if p.stem in LABELS)
    )
    (tmp_path / "reads.csv").write_text("case_id,truth,reader,modality,rating\nc1,1,r1,m1,3\n")
    (tmp_path / "broken.card.json").write_text("{")
    (tmp_path / "broken.onnx").write_bytes(b"")
    (tmp_path / "a_file").write_text("")
    (tmp_path / "folder").mkdir()
    card = {"model_id": "m", "thresholds": {"doubt": 0.2, "fracture": 0.6}}
    (tmp_path / "ok.card.json").write_text(json.dumps(card))
    return {
        "manifest": str(manifest),
        "reads": str(tmp_path / "reads.csv"),
        "out": str(tmp_path / "out"),
        "report": str(tmp_path / "report"),
        "file": str(tmp_path / "a_file"),
        "folder": str(tmp_path / "folder"),
        "broken_model": str(tmp_path / "broken.onnx"),
        "broken_card": str(tmp_path / "broken.card.json"),
        "nowhere": str(tmp_path / "nowhere.csv"),
    }


BASE = {
    "evaluate": ["{manifest}", "--report", "{report}"],
    "thresholds": ["{manifest}", "--sensitivity", "0.9", "--specificity", "0.9", "--out", "{out}.onnx"],
    "calibrate": ["{manifest}", "--out", "{out}.onnx"],
    "audit": ["{manifest}"],
    "train": ["{manifest}", "--out", "{out}"],
    "readers": ["{reads}", "--report", "{report}"],
}
# (command, bad arguments, what the one line must say besides the option's name)
CASES = [
    ("evaluate", ["--model", "{nowhere}"], "is not an ONNX model file"),
    ("evaluate", ["--model", "{broken_model}"], "broken.card.json: not valid JSON"),
    ("evaluate", ["--predictions", "{nowhere}"], "does not exist"),
    ("evaluate", ["--labels", "{folder}"], "is a folder"),
    ("evaluate", ["--split-file", "{nowhere}"], "does not exist"),
    ("evaluate", ["--split", "test"], "needs --split-file"),
    ("evaluate", ["--report", "{file}"], "is a file, not a folder"),
    ("evaluate", ["--by", "nosuchcol"], "no such column"),
    ("evaluate", ["--threshold", "2"], "not a number in [0, 1]"),
    ("evaluate", ["--prevalence", "1"], "not a number in (0, 1)"),
    ("evaluate", ["--bootstrap", "10"], "whole number of at least 100"),
    ("evaluate", ["--seed", "-1"], "whole number of at least 0"),
    ("evaluate", ["--bins", "0"], "whole number of at least 2"),
    ("evaluate", ["--gallery-point", "bogus"], "not an operating point of this evaluation"),
    ("evaluate", ["--bogus"], "unrecognized arguments: --bogus"),
    ("thresholds", ["--sensitivity", "95"], "not a number in (0, 1]"),
    ("thresholds", ["--specificity", "0"], "not a number in (0, 1]"),
    ("thresholds", ["--out", "{file}"], "ending in .onnx"),
    ("thresholds", ["--date", "31/01/2025"], "YYYY-MM-DD"),
    ("thresholds", ["--threshold", "0.5"], "unrecognized arguments"),
    ("calibrate", ["--bins", "0"], "whole number of at least 2"),
    ("calibrate", ["--out", "{folder}"], "ending in .onnx"),
    ("calibrate", ["--date", "tomorrow"], "YYYY-MM-DD"),
    ("calibrate", ["--model", "{broken_model}"], "not valid JSON"),
    ("audit", ["--split-file", "{nowhere}"], "does not exist"),
    ("audit", ["--report", "{file}"], "is a file, not a folder"),
    ("audit", ["--json", "{folder}"], "is a folder"),
    ("audit", ["--fail-on", "leaks"], "unknown kind(s) ['leaks']"),
    ("audit", ["--max-distance", "-1"], "not a number in [0, 256]"),
    ("audit", ["--max-distance", "nan"], "not a number in [0, 256]"),
    ("audit", ["--min-correlation", "1.5"], "not a number in [-1, 1]"),
    ("audit", ["--workers", "0"], "whole number of at least 1"),
    ("train", ["--out", "{file}"], "is a file, not a folder"),
    ("train", ["--name", "a/b"], "is not a file name"),
    ("train", ["--size", "100"], "multiple of 32"),
    ("train", ["--backbone", "lite9"], "invalid choice"),
    ("train", ["--epochs", "0"], "whole number of at least 1"),
    ("train", ["--final-epochs", "0"], "whole number of at least 1"),
    ("train", ["--folds", "1"], "whole number of at least 2"),
    ("train", ["--test-fraction", "0.5"], "not a number in (0, 0.5)"),
    ("train", ["--batch-size", "0"], "whole number of at least 1"),
    ("train", ["--lr", "0"], "not a number > 0"),
    ("train", ["--patience", "0"], "whole number of at least 1"),
    ("train", ["--box-weight", "-1"], "not a number >= 0"),
    ("train", ["--heatmap-stride", "8"], "invalid choice"),
    ("train", ["--sensitivity", "1.5"], "not a number in (0, 1]"),
    ("train", ["--specificity", "x"], "not a number in (0, 1]"),
    ("train", ["--test-split", "{nowhere}"], "does not exist"),
    ("train", ["--limit", "1"], "whole number of at least 2"),
    ("train", ["--max-steps", "0"], "whole number of at least 1"),
    ("train", ["--device", "gpu"], "not auto, cpu, cuda or cuda:N"),
    ("train", ["--workers", "0"], "whole number of at least 1"),
    ("train", ["--parallel", "0"], "whole number of at least 1"),
    ("train", ["--seed", "-1"], "whole number of at least 0"),
    ("readers", ["--report", "{file}"], "is a file, not a folder"),
    ("readers", ["--ai", "{nowhere}"], "does not exist"),
    ("readers", ["--ai-threshold", "2"], "not a number in [0, 1]"),
    ("readers", ["--ai-card", "{broken_card}"], "broken.card.json: not valid JSON"),
    ("readers", ["--cutoff", "high"], "not a number"),
    ("readers", ["--fom", "auc,bogus"], "unknown figure(s) of merit 'bogus'"),
    ("readers", ["--covariance", "bootstrap"], "invalid choice"),
    ("readers", ["--compare", "aided"], "not A:B"),
    ("readers", ["--non-inferiority", "specificity=3"], "margin must be a number in (0, 1)"),
    ("readers", ["--alpha", "5"], "not a number in (0, 1)"),
    ("readers", ["--incomplete", "ignore"], "invalid choice"),
    ("readers", ["--plan", "--effect", "0"], "not a number in (0, 1)"),
    ("readers", ["--plan", "--power", "1.5"], "not a number in (0, 1)"),
    ("readers", ["--plan", "--readers", "1-3"], "need 2 <= first <= last"),
    ("readers", ["--plan", "--analysis", "mixed"], "invalid choice"),
]


def _option(bad: list[str]) -> str:
    return next(word for word in reversed(bad) if word.startswith("--"))


@pytest.mark.parametrize(("command", "bad", "says"), CASES, ids=[f"{c}{' '.join(b)}" for c, b, _ in CASES])
def test_a_bad_option_is_one_line_and_exit_code_2(
    command: str, bad: list[str], says: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [command, *(a.format(**files) for a in BASE[command]), *(a.format(**files) for a in bad)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith(f"fracsight {command}: error: ") and _option(bad) in err and says in err, err


@pytest.mark.parametrize("command", BASE)
def test_a_missing_positional_file_or_a_folder_is_named(
    command: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    base = [a.format(**files) for a in BASE[command]]
    assert main([command, files["nowhere"], *base[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"fracsight {command}: error: ") and "does not exist" in err


def test_readers_on_a_folder_says_so(files: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["readers", files["folder"], "--report", files["report"]]) == 2
    assert "is a folder; give the reads CSV file" in capsys.readouterr().err


def test_readers_without_report_is_one_line(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["readers", files["reads"]]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--report" in err


def test_an_unknown_command_and_option_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nosuchcommand"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["--bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unrecognized arguments: --bogus" in err


@pytest.mark.parametrize("command", ["thresholds", "calibrate", "evaluate", "train", "audit", "readers"])
def test_help_prints_percent_signs_once(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    assert "%%" not in capsys.readouterr().out


def test_an_unexpected_failure_is_one_line_without_traceback(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("bogus")

    monkeypatch.setattr("fracsight.evaluation.sources.load_cases", broken)
    assert main(["evaluate", files["manifest"], "--report", files["report"]]) == 3
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "internal error: KeyError" in err and "-v" in err
