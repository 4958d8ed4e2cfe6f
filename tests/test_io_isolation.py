"""DecoderPool: files read in worker processes, so a crash, hang or memory flood costs one file."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from fracsight.io import (
    DecoderFailed,
    DecoderPool,
    NotARadiograph,
    UnreadableImage,
    read_radiograph,
    read_radiograph_bytes,
)
from fracsight.io import pool as pool_module


@pytest.fixture(scope="module")
def pool() -> DecoderPool:
    with DecoderPool(workers=2) as shared:
        yield shared


def _big_png(path: Path, side: int) -> Path:
    ramp = np.linspace(0, 65535, side * side, dtype=np.float64).reshape(side, side).astype(np.uint16)
    Image.fromarray(ramp).save(path, compress_level=1)
    return path


def test_worker_reads_what_the_process_reads(pool: DecoderPool, sample_images: list[Path]) -> None:
    for path in sample_images:
        here, there = read_radiograph(path), pool.read(path)
        assert there.source == str(path) and there.format == here.format
        np.testing.assert_array_equal(there.pixels, here.pixels)
        assert there.pixels.flags.writeable
        assert there.metadata == here.metadata
        assert (there.dicom is None) == (here.dicom is None)
        if here.dicom is not None:
            assert there.dicom.SOPInstanceUID == here.dicom.SOPInstanceUID


def test_bytes_read_like_the_file(pool: DecoderPool, sample_images: list[Path]) -> None:
    for path in sample_images:
        from_file = read_radiograph(path)
        in_process = read_radiograph_bytes(path.read_bytes(), "upload 1")
        in_worker = pool.read_bytes(path.read_bytes(), "upload 1")
        np.testing.assert_array_equal(in_process.pixels, from_file.pixels)
        np.testing.assert_array_equal(in_worker.pixels, from_file.pixels)
        assert in_worker.source == "upload 1"


def test_refusals_keep_their_class_and_reason(pool: DecoderPool, tmp_path: Path) -> None:
    (tmp_path / "notes.dcm").write_text("no image here\n")
    with pytest.raises(UnreadableImage, match="a text file"):
        pool.read(tmp_path / "notes.dcm")
    Image.new("1", (64, 64)).save(tmp_path / "bilevel.png")
    with pytest.raises(NotARadiograph, match="1-bit"):
        pool.read(tmp_path / "bilevel.png")
    with pytest.raises(FileNotFoundError, match="no such file"):
        pool.read(tmp_path / "gone.png")
    with pytest.raises(UnreadableImage, match="empty"):
        pool.read_bytes(b"", "upload 2")


def test_relative_paths_are_read_from_the_callers_folder(
    pool: DecoderPool, sample_images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(sample_images[0].parent)
    radiograph = pool.read(sample_images[0].name)
    assert radiograph.source == sample_images[0].name


def test_a_worker_that_dies_costs_only_its_file(
    monkeypatch: pytest.MonkeyPatch, sample_images: list[Path]
) -> None:
    """The decoder aborts (as GDCM does on some codestreams): that file is refused, the rest read."""
    real_run = pool_module._Worker.run

    def abort_on_crash_files(self, job, timeout_s):
        if "crash" in job.name:
            os.kill(self.process.pid, signal.SIGABRT)
            self.process.wait()
        return real_run(self, job, timeout_s)

    monkeypatch.setattr(pool_module._Worker, "run", abort_on_crash_files)
    crash = sample_images[0].with_name("crash.jpg")
    with DecoderPool(workers=1) as one:
        one.read(sample_images[0])
        with pytest.raises(DecoderFailed) as failed:
            one.read(crash)
        assert "the decoder failed on this file" in failed.value.reason
        assert "signal 6 (SIGABRT)" in failed.value.reason and "not retried" in failed.value.reason
        assert one.read(sample_images[1]).shape == read_radiograph(sample_images[1]).shape


def test_a_file_that_runs_past_the_time_limit_is_stopped(tmp_path: Path, sample_images: list[Path]) -> None:
    big = _big_png(tmp_path / "big.png", 3000)
    with DecoderPool(workers=1, timeout_s=0.05) as hasty:
        with pytest.raises(DecoderFailed, match=r"ran past the 0.05 s limit and was stopped"):
            hasty.read(big)
        assert not hasty.worker_pids()  # the stuck worker is gone
        hasty.timeout_s = 30.0
        assert hasty.read(sample_images[0]).shape == read_radiograph(sample_images[0]).shape


def test_memory_beyond_the_cap_is_a_refusal_not_the_machines_memory(
    tmp_path: Path, sample_images: list[Path]
) -> None:
    big = _big_png(tmp_path / "big.png", 4000)  # 32 MB stored, 64 MB as float32
    with DecoderPool(workers=1, memory_bytes=48 << 20) as small:
        with pytest.raises(UnreadableImage, match="needs more memory than a decoder may use"):
            small.read(big)
        assert small.read(sample_images[0]).shape == read_radiograph(sample_images[0]).shape
    with DecoderPool(workers=1) as default:
        assert default.read(big).shape == (4000, 4000)


def test_reads_from_many_threads_share_the_workers(pool: DecoderPool, sample_images: list[Path]) -> None:
    results: dict[int, tuple[int, int]] = {}

    def read(i: int) -> None:
        results[i] = pool.read(sample_images[i % len(sample_images)]).shape

    threads = [threading.Thread(target=read, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 12 and len(pool.worker_pids()) <= 2


def test_closed_pool_refuses_instead_of_hanging(sample_images: list[Path]) -> None:
    closing = DecoderPool(workers=1)
    closing.read(sample_images[0])
    pids = closing.worker_pids()
    closing.close()
    with pytest.raises(DecoderFailed, match="closed"):
        closing.read(sample_images[0])
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_library_warnings_are_withheld_and_own_messages_kept(
    pool: DecoderPool, samples_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pydicom's warnings quote the value they trip over; only a neutral count reaches the log."""
    ds = pydicom.dcmread(samples_dir / "hd_dx_image.dcm")
    ds.PatientName = "Secret^Person"
    with pytest.warns(UserWarning, match="Secret"):
        ds.SOPClassUID = "1.2.3.Secret^Person"  # invalid UI: pydicom warns with the value when read
    ds.PresentationLUTShape = "INVERSE"
    ds.PhotometricInterpretation = "MONOCHROME2"  # contradiction: fracsight's own warning
    path = tmp_path / "odd.dcm"
    ds.save_as(path)
    caplog.clear()  # pydicom warned here, in the test, when the value was set
    with caplog.at_level(logging.DEBUG):
        pool.read(path)
    text = caplog.text
    assert "Secret" not in text
    assert "Presentation LUT Shape INVERSE contradicts MONOCHROME2" in text
    assert "library warnings withheld" in text


def test_native_decoder_output_never_reaches_our_stderr(
    pool: DecoderPool, dicom_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """OpenJPEG and GDCM print about a damaged codestream; the worker sends that to /dev/null."""
    with pytest.raises(UnreadableImage, match="could not be decoded"):
        pool.read(dicom_dir / "pljd_966.dcm")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
