"""Whole studies through the DICOM node on loopback: one result series per kind and one SR per
study, made once the study is quiet (not per association), a new SR version for a late image,
the study's other objects kept without analysis, and fracsight's own results dropped.

A real node (pynetdicom SCP, SQLite store, the shipped model, results stage, sender) between a
pynetdicom "modality" and a pynetdicom "PACS"; dciodvfy checks the study's SR where installed.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

import pydicom  # noqa: E402
from dicom_checks import DCIODVFY, dciodvfy_errors, split_inherited, sr_items  # noqa: E402
from dicom_peers import DICOM, FakePacs, Node, referencing, renamed, send, wait_until  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402

from fracsight.service.dicom_results import (  # noqa: E402
    GSPS_CLASS,
    PR_SERIES_NUMBER,
    SC_CLASS,
    SC_SERIES_NUMBER,
    SR_CLASS,
    SR_SERIES_NUMBER,
)

SAMPLE = "pljd_RG2_JPLL.dcm"  # a CR the shipped model calls "doubt": SC, SR and a presentation state


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, default_analyser, pacs: FakePacs, dicom_dir: Path):
    running = Node(tmp_path_factory.mktemp("studies"), default_analyser, pacs, study_quiet_s=1.5)
    yield running
    running.stop()


def _texts(ds: pydicom.Dataset) -> list[str]:
    return [str(i.TextValue) for i in sr_items(ds) if "TextValue" in i]


def _of_study(pacs: FakePacs, study: str) -> list[pydicom.Dataset]:
    """What the PACS holds of the study: one object per SOP Instance UID (delivery is at least
    once: an answer lost under load makes the sender try again, and the fake PACS keeps copies)."""
    with pacs._lock:
        return list({d.SOPInstanceUID: d for _, d in pacs.received if d.StudyInstanceUID == study}.values())


def _copies(n: int, study: str, series: str | None = None) -> list[pydicom.Dataset]:
    """``n`` instances of one series of the study: the sample with new SOP Instance UIDs."""
    series = series or generate_uid()
    out = []
    for number in range(1, n + 1):
        ds = renamed(DICOM / SAMPLE, study=study)
        ds.SeriesInstanceUID = series
        ds.InstanceNumber = number
        out.append(ds)
    return out


def _part10(ds: pydicom.Dataset) -> pydicom.Dataset:
    """A data set received by the fake PACS, ready to be sent again."""
    ds = copy.deepcopy(ds)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def _check_sr(sr: pydicom.Dataset, sources: list[pydicom.Dataset], folder: Path) -> None:
    """dciodvfy clean on the SR, errors the sources have (their invalid UIDs...) listed apart."""
    if not DCIODVFY:
        return
    path = folder / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    source = folder / "source.dcm"
    sources[0].save_as(source, enforce_file_format=True)
    new, inherited = split_inherited(dciodvfy_errors(path), dciodvfy_errors(source))
    assert new == [], (new, inherited)


@pytest.mark.slow
def test_a_twenty_image_study_gets_three_result_series_and_one_sr(
    node: Node, pacs: FakePacs, tmp_path: Path
) -> None:
    study = generate_uid()
    sources = _copies(20, study)
    assert send(node.port, sources) == [0x0000] * 20
    records = node.wait_finished([s.SOPInstanceUID for s in sources], timeout=300)
    assert {r.status for r in records} == {"done"} and {r.results for r in records} == {"made"}
    wait_until(lambda: len({d.SOPInstanceUID for d in _of_study(pacs, study)}) >= 41, 60, "the results")
    time.sleep(1.0)
    results = _of_study(pacs, study)
    series = {d.SeriesInstanceUID: d for d in results}
    assert len(series) == 3, f"{len(series)} result series"
    numbers = {d.SOPClassUID: int(d.SeriesNumber) for d in series.values()}
    assert numbers == {SC_CLASS: SC_SERIES_NUMBER, SR_CLASS: SR_SERIES_NUMBER, GSPS_CLASS: PR_SERIES_NUMBER}
    assert len({d.SeriesDescription for d in series.values()}) == 3
    for sop_class in (SC_CLASS, GSPS_CLASS):
        made = [d for d in results if d.SOPClassUID == sop_class]
        assert len(made) == 20
        assert sorted(int(d.InstanceNumber) for d in made) == list(range(1, 21)), "numbered in the series"
    (sr,) = [d for d in results if d.SOPClassUID == SR_CLASS]
    findings = [t for t in _texts(sr) if "fracture finding" in t]
    assert len(findings) == 20, "one finding group per image"
    assert sum("study: most suspicious of 20 analysed images" in t for t in _texts(sr)) == 1
    for source in sources:
        assert referencing([sr], source.SOPInstanceUID), "every image is the SR's evidence"
    _check_sr(sr, sources, tmp_path)


def test_a_study_sent_over_two_associations_gets_one_sr_with_one_answer(node: Node, pacs: FakePacs) -> None:
    study = generate_uid()
    first, second = _copies(2, study), _copies(1, study)
    assert send(node.port, first) == [0x0000] * 2
    assert send(node.port, second) == [0x0000]
    sources = first + second
    node.wait_finished([s.SOPInstanceUID for s in sources])
    wait_until(lambda: [d for d in _of_study(pacs, study) if d.SOPClassUID == SR_CLASS], 30, "the SR")
    time.sleep(2.5)  # longer than the quiet time: no second version is coming
    srs = [d for d in _of_study(pacs, study) if d.SOPClassUID == SR_CLASS]
    assert len({d.SOPInstanceUID for d in srs}) == 1, "one SR for the study"
    (answer,) = [t for t in _texts(srs[0]) if t.startswith("study: ")]
    assert "of 3 analysed images" in answer
    assert len({d.SeriesInstanceUID for d in _of_study(pacs, study) if d.SOPClassUID == SC_CLASS}) == 1


def test_a_late_image_makes_a_new_version_of_the_studys_sr(
    node: Node, pacs: FakePacs, tmp_path: Path
) -> None:
    study = generate_uid()
    (early,) = _copies(1, study)
    assert send(node.port, [early]) == [0x0000]
    node.wait_finished([early.SOPInstanceUID])
    wait_until(lambda: [d for d in _of_study(pacs, study) if d.SOPClassUID == SR_CLASS], 30, "the first SR")
    (first,) = [d for d in _of_study(pacs, study) if d.SOPClassUID == SR_CLASS]
    late = renamed(DICOM / SAMPLE, study=study)
    assert send(node.port, [late]) == [0x0000]
    node.wait_finished([late.SOPInstanceUID])

    def versions() -> list[pydicom.Dataset]:
        return [d for d in _of_study(pacs, study) if d.SOPClassUID == SR_CLASS]

    wait_until(lambda: len(versions()) == 2, 30, "the second version")
    newest = max(versions(), key=lambda d: int(d.InstanceNumber))
    assert int(first.InstanceNumber) == 1 and int(newest.InstanceNumber) == 2
    assert newest.SOPInstanceUID != first.SOPInstanceUID
    assert newest.SeriesInstanceUID == first.SeriesInstanceUID, "same series, a new instance"
    (predecessor,) = newest.PredecessorDocumentsSequence
    (earlier,) = predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert earlier.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert predecessor.StudyInstanceUID == study
    assert any("of 2 analysed images" in t for t in _texts(newest))
    assert referencing([newest], early.SOPInstanceUID) and referencing([newest], late.SOPInstanceUID)
    scs = [d for d in _of_study(pacs, study) if d.SOPClassUID == SC_CLASS]
    assert len({d.SeriesInstanceUID for d in scs}) == 1
    assert sorted(int(d.InstanceNumber) for d in scs) == [1, 2]
    _check_sr(newest, [early, late], tmp_path)


def test_other_objects_of_a_study_are_kept_not_analysed_and_own_results_dropped(
    node: Node, pacs: FakePacs
) -> None:
    study = generate_uid()
    (image,) = _copies(1, study)
    assert send(node.port, [image]) == [0x0000]
    node.wait_finished([image.SOPInstanceUID])
    wait_until(lambda: {d.SOPClassUID for d in _of_study(pacs, study)} >= {SR_CLASS, SC_CLASS, GSPS_CLASS},
               30, "the results")  # fmt: skip
    own = [_part10(d) for d in _of_study(pacs, study)]
    objects = node.store.data_dir / "objects"
    before = sorted(objects.rglob("*.dcm")) if objects.exists() else []
    # fracsight's own results, routed back with the study: acknowledged, neither kept nor analysed
    assert send(node.port, own, aet="PACS") == [0x0000] * len(own)
    after = sorted(objects.rglob("*.dcm")) if objects.exists() else []
    assert after == before
    assert all(node.record(d.SOPInstanceUID) is None for d in own)
    # another system's report and presentation state (and an SC made by another fracsight): kept
    others = []
    for d in own:
        other = copy.deepcopy(d)
        other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        other.SeriesInstanceUID = generate_uid()
        if d.SOPClassUID != SC_CLASS:
            other.Manufacturer = "Another vendor"
        others.append(other)
    assert send(node.port, others, aet="PACS") == [0x0000] * len(others)
    assert all(node.record(d.SOPInstanceUID) is None for d in others), "not in the worklist, not analysed"
    kept = sorted(objects.rglob("*.dcm"))
    assert len(kept) == len(before) + len(others)
    assert {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in kept} >= {
        d.SOPInstanceUID for d in others
    }
    time.sleep(2.5)
    assert node.store.counts()["queued"] == 0
    assert len({d.SOPInstanceUID for d in _of_study(pacs, study) if d.SOPClassUID == SR_CLASS}) == 1, (
        "no new report for objects that are not images"
    )


def test_a_refused_image_is_in_the_studys_sr_as_not_analysed_with_its_reason(
    node: Node, pacs: FakePacs, tmp_path: Path
) -> None:
    study = generate_uid()
    (image,) = _copies(1, study)
    ct = renamed(DICOM / "pyd_CT_small.dcm", study=study)
    assert send(node.port, [image, ct]) == [0x0000, 0x0000]
    analysed, refused = node.wait_finished([image.SOPInstanceUID, ct.SOPInstanceUID])
    assert analysed.results == "made" and refused.status == "refused" and refused.results == "none"
    wait_until(lambda: [d for d in _of_study(pacs, study) if d.SOPClassUID == SR_CLASS], 30, "the SR")
    (sr,) = [d for d in _of_study(pacs, study) if d.SOPClassUID == SR_CLASS]
    (said,) = [t for t in _texts(sr) if ct.SOPInstanceUID in t]
    assert "not analysed: " in said and "computed tomography" in said and refused.error in said
    assert any("of 1 analysed images" in t for t in _texts(sr)), "the study's answer is the analysed image's"
    scs = [d for d in _of_study(pacs, study) if d.SOPClassUID == SC_CLASS]
    assert len(scs) == 1 and not referencing(scs, ct.SOPInstanceUID), "no SC for the refused image"
    _check_sr(sr, [image, ct], tmp_path)


def test_an_images_own_results_do_not_wait_for_the_study_to_be_quiet(
    tmp_path: Path, default_analyser, pacs: FakePacs, dicom_dir: Path
) -> None:
    # dicom_dir: the sample comes from ../shared; without it the test skips (as the node fixture does).
    quiet_s = 6.0
    slow = Node(tmp_path / "node", default_analyser, pacs, study_quiet_s=quiet_s)
    try:
        study = generate_uid()
        (source,) = _copies(1, study)
        assert send(slow.port, [source]) == [0x0000]
        sent = time.time()
        kinds = {SC_CLASS, GSPS_CLASS}
        wait_until(lambda: {d.SOPClassUID for d in _of_study(pacs, study)} >= kinds, 30, "SC and GSPS")
        record = slow.record(source.SOPInstanceUID)
        assert not [d for d in _of_study(pacs, study) if d.SOPClassUID == SR_CLASS], "the SR waits"
        assert record.results == "pending" and record.objects_at is not None, "objects made, the SR to come"
        with pacs._lock:
            first = min(t for t, d in pacs.received if d.StudyInstanceUID == study)
        assert first - sent < quiet_s
        (record,) = slow.wait_finished([source.SOPInstanceUID], timeout=60)
        assert record.results == "made"
        wait_until(lambda: [d for d in _of_study(pacs, study) if d.SOPClassUID == SR_CLASS], 30, "the SR")
        with pacs._lock:
            arrived = list(pacs.received)
        reports = [t for t, d in arrived if d.StudyInstanceUID == study and d.SOPClassUID == SR_CLASS]
        sr_at = min(reports)
        assert sr_at - sent >= quiet_s - 0.5, "the report once the study was quiet"
        assert len({d.SOPInstanceUID for d in _of_study(pacs, study) if d.SOPClassUID == SC_CLASS}) == 1
    finally:
        slow.stop()
