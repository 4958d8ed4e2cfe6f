"""``fracsight predict`` against a hostile sender (issue 11): the batch survives, one row per input,
the right exit code, nothing from a patient element in the CSV, stdout or stderr."""

from __future__ import annotations

import csv
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from conftest import SAMPLE_PATIENT, gdcm_encode, stretched_sop_class_uid

from fracsight.cli import main
from fracsight.cli.predict import COLUMNS, MAX_BATCH_SIZE
from fracsight.io import pool as pool_module

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _predict_process(
    *args: str, preexec_fn=None, wrapper: tuple[str, ...] = (), verbose: bool = False
) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "fracsight", *(["-v"] if verbose else []), "predict", *args]
    return subprocess.Popen(
        [*wrapper, *command, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=preexec_fn,
    )


def _finish(process: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out.decode(errors="surrogateescape"), err.decode(errors="replace")


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    assert all(None not in row and None not in row.values() for row in rows), "a row was cut"
    return rows


def _copies(folder: Path, source: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    made = [folder / f"img{i:03d}{source.suffix}" for i in range(count)]
    for path in made:
        shutil.copyfile(source, path)
    return made


@pytest.fixture(scope="module")
def jpeg(sample_images: list[Path]) -> Path:
    return next(p for p in sample_images if p.name == "IMG0001739.jpg")  # 373 x 454, typical


def test_a_decoder_that_dies_costs_one_row(
    tmp_path: Path, jpeg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_run = pool_module._Worker.run

    def abort_on_crash_files(self, job, timeout_s):
        if "crash" in job.name:
            os.kill(self.process.pid, signal.SIGABRT)  # as GDCM's uncaught C++ exception does
            self.process.wait()
        return real_run(self, job, timeout_s)

    monkeypatch.setattr(pool_module._Worker, "run", abort_on_crash_files)
    _copies(tmp_path / "in", jpeg, 3)
    shutil.copyfile(jpeg, tmp_path / "in" / "crash.jpg")
    out = tmp_path / "out.csv"
    assert main(["predict", str(tmp_path / "in"), "--output", str(out), "--no-progress"]) == 1
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert len(rows) == 4
    assert rows["crash.jpg"]["error"].startswith("the decoder failed on this file: its process was killed")
    assert all(r["probability"] for name, r in rows.items() if name != "crash.jpg")
    assert "3 analysed, 1 refused" in capsys.readouterr().err


def test_gray_codestream_under_an_rgb_header_is_one_refused_row(
    tmp_path: Path, samples_dir: Path, jpeg: Path
) -> None:
    """The file that made GDCM abort the process (exit 134) and emptied the batch's CSV."""
    folder = tmp_path / "in"
    _copies(folder, jpeg, 2)
    gdcm = pytest.importorskip("gdcm")
    encoded = gdcm_encode(
        samples_dir / "hd_dx_image.dcm", tmp_path / "ls.dcm", gdcm.TransferSyntax.JPEGLSLossless
    )
    ds = pydicom.dcmread(encoded)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.save_as(folder / "rgb.dcm")
    out = tmp_path / "out.csv"
    assert main(["predict", str(folder), "--output", str(out), "--no-progress"]) == 1
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert "Samples per Pixel is 3; refused before decoding" in rows["rgb.dcm"]["error"]
    assert rows["img000.jpg"]["probability"] and rows["img001.jpg"]["probability"]


def test_batch_size_has_a_ceiling(jpeg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(jpeg), "--batch-size", str(MAX_BATCH_SIZE + 1), "--no-progress"]) == 2
    assert "every image decoded ahead stays in memory" in capsys.readouterr().err


def test_long_name_gets_a_shortened_heat_map(tmp_path: Path, jpeg: Path) -> None:
    """A 247-character name crashed the heat-map step (and its clean-up) with a traceback."""
    folder = tmp_path / "in"
    folder.mkdir()
    long_name = "x" * 243 + ".jpg"
    shutil.copyfile(jpeg, folder / long_name)
    out, heat = tmp_path / "out.csv", tmp_path / "heat"
    assert main(["predict", str(folder), "--heatmaps", str(heat), "--output", str(out), "--no-progress"]) == 0
    (row,) = _rows(out)
    overlay = Path(row["heatmap"])
    assert Path(row["path"]).name == long_name and overlay.is_file()
    assert len(overlay.name) < 150 and overlay.name.endswith(".heatmap.png")


def test_names_that_are_not_utf8_keep_their_bytes(tmp_path: Path, jpeg: Path) -> None:
    """A name with a Latin-1 byte stopped the CSV writer after 2 of 6 rows."""
    folder = tmp_path / "in"
    _copies(folder, jpeg, 5)
    odd = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")
    shutil.copyfile(jpeg, odd)
    out = tmp_path / "out.csv"
    heat = tmp_path / "heat"
    assert main(["predict", str(folder), "--output", str(out), "--heatmaps", str(heat), "--no-progress"]) == 0
    assert len(_rows(out)) == 6
    assert b"caf\xe9.jpg" in out.read_bytes()
    jsonl = tmp_path / "out.jsonl"
    assert main(["predict", str(folder), "--json", "--output", str(jsonl), "--no-progress"]) == 0
    paths = [json.loads(line)["path"] for line in jsonl.read_text().splitlines()]
    assert len(paths) == 6 and os.fsencode(sorted(paths)[0]).endswith(b"caf\xe9.jpg")
    process = _predict_process(odd.decode(errors="surrogateescape"))
    code, stdout, stderr = _finish(process)
    assert code == 0, stderr
    assert len(list(csv.DictReader(io.StringIO(stdout)))) == 1


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_with_whole_rows_and_a_closing_line(
    tmp_path: Path, jpeg: Path, signum: int, code: int
) -> None:
    """SIGTERM lost the 75 rows already finished of a 172-file batch."""
    _copies(tmp_path / "in", jpeg, 120)
    out = tmp_path / "out.csv"
    process = _predict_process(str(tmp_path / "in"), "--output", str(out), "--batch-size", "4")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 6):
        time.sleep(0.05)
    process.send_signal(signum)
    returncode, _, stderr = _finish(process)
    assert returncode == code, stderr
    rows = _rows(out)
    assert 5 <= len(rows) < 120 and all(r["probability"] for r in rows)
    assert f"interrupted after {len(rows)} of 120 inputs ({signal.Signals(signum).name})" in stderr
    assert "Traceback" not in stderr


def test_full_disk_is_one_line_and_exit_code_2(tmp_path: Path, jpeg: Path) -> None:
    process = _predict_process(str(jpeg), "--output", "/dev/full")
    code, _, stderr = _finish(process)
    assert code == 2
    assert stderr.strip().splitlines()[-1].endswith("cannot write the results: No space left on device")
    assert "Traceback" not in stderr


def test_a_write_that_fails_mid_row_leaves_only_whole_rows(tmp_path: Path, jpeg: Path) -> None:
    """A full disk cut the row being written and ended in a traceback."""
    _copies(tmp_path / "in", jpeg, 6)
    out = tmp_path / "out.csv"

    def small_file_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (400, 400))

    process = _predict_process(str(tmp_path / "in"), "--output", str(out), preexec_fn=small_file_limit)
    code, _, stderr = _finish(process)
    assert code == 2, stderr
    assert "Traceback" not in stderr and "cannot write the results: File too large" in stderr
    text = out.read_text()
    assert text.endswith("\n") and 1 <= len(_rows(out)) < 6
    assert f"stopped after {len(_rows(out))} of 6 inputs" in stderr


def test_output_that_is_an_input_is_refused(
    tmp_path: Path, jpeg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    (image,) = _copies(folder, jpeg, 1)
    before = image.read_bytes()
    assert main(["predict", str(folder), "--output", str(image), "--no-progress"]) == 2
    assert "is one of the inputs" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_heat_maps_and_results_in_the_input_folder_are_not_inputs_next_time(
    tmp_path: Path, jpeg: Path
) -> None:
    folder = tmp_path / "in"
    _copies(folder, jpeg, 3)
    args = ["predict", str(folder), "--heatmaps", str(folder / "heat"), "--output", str(folder / "res.dat")]
    assert main([*args, "--no-progress"]) == 0
    first = _rows(folder / "res.dat")
    assert main([*args, "--no-progress"]) == 0  # the heat maps and res.dat are now in the folder
    assert [r["path"] for r in _rows(folder / "res.dat")] == [r["path"] for r in first]
    moved = ["predict", str(folder), "--heatmaps", str(folder / "other"), "--output", str(tmp_path / "o.csv")]
    assert main([*moved, "--no-progress"]) == 0  # the earlier run's overlays and results are skipped too
    assert len(_rows(tmp_path / "o.csv")) == 3


def test_special_files_get_a_row(tmp_path: Path, jpeg: Path) -> None:
    folder = tmp_path / "in"
    _copies(folder, jpeg, 1)
    os.mkfifo(folder / "pipe.dcm")
    out = tmp_path / "out.csv"
    assert main(["predict", str(folder), "--output", str(out), "--no-progress"]) == 1
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert "named pipe (FIFO)" in rows["pipe.dcm"]["error"]


def _without_root() -> tuple[str, ...] | None:
    """How to run a command where permissions apply: as is, or in a user namespace for root."""
    if os.geteuid() != 0:
        return ()
    wrapper = ("unshare", "--map-user=1000", "--map-group=1000")
    try:
        subprocess.run([*wrapper, "true"], check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return wrapper


def test_unreadable_folders_get_a_row_and_no_traceback(tmp_path: Path, jpeg: Path) -> None:
    wrapper = _without_root()
    if wrapper is None:
        pytest.skip("running as root without user namespaces: permissions cannot be denied")
    folder = tmp_path / "in"
    _copies(folder, jpeg, 1)
    locked = folder / "locked"
    _copies(locked, jpeg, 1)
    os.chmod(locked, 0)
    try:
        out = tmp_path / "out.csv"
        code, _, stderr = _finish(_predict_process(str(folder), "--output", str(out), wrapper=wrapper))
        named, _, named_err = _finish(_predict_process(str(locked / "img000.jpg"), wrapper=wrapper))
    finally:
        os.chmod(locked, 0o755)
    assert code == 1 and "Traceback" not in stderr
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert rows["img000.jpg"]["probability"]
    assert "is a folder that cannot be read (Permission denied)" in rows["locked"]["error"]
    assert named == 1 and "Traceback" not in named_err


def test_an_internal_error_is_exit_code_3_not_1(
    tmp_path: Path, jpeg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from fracsight.inference import Analyser

    def broken(self, images):
        raise TypeError("Dog^AVeryGood")

    monkeypatch.setattr(Analyser, "run_outputs", broken)
    assert main(["predict", str(jpeg), "--output", str(tmp_path / "o.csv"), "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert "internal error (TypeError)" in err and "AVeryGood" not in err and "Traceback" not in err


def test_no_patient_data_in_any_output(tmp_path: Path, samples_dir: Path) -> None:
    """A stretched SOP Class UID quoted the raw header (name and ID) in the error cell and on stderr."""
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "stretched.dcm").write_bytes(
        stretched_sop_class_uid((samples_dir / "hd_dx_image.dcm").read_bytes())
    )
    shutil.copyfile(samples_dir / "hd_dx_image.dcm", folder / "fine.dcm")
    for extra, verbose in (((), False), (("--json",), True)):
        out = tmp_path / "out.txt"
        code, stdout, stderr = _finish(
            _predict_process(str(folder), "--output", str(out), *extra, verbose=verbose)
        )
        assert code == 1
        text = out.read_text(errors="replace") + stdout + stderr
        assert "SOP Class is a malformed value" in text
        assert not any(value in text for value in SAMPLE_PATIENT), text
