"""The DICOM node against a real PACS: Orthanc (Debian), DCMTK's storescu and dicom3tools' dciodvfy.

Everything runs in a network namespace of its own that has only loopback (``ip netns``; root):
Orthanc with its own configuration, the node (``fracsight dicom-node``), storescu and the REST
queries. Real radiographs from ``../shared/data/dicom`` in several transfer syntaxes, MONOCHROME1
and MONOCHROME2, go to the PACS and to the node; the node's Secondary Capture and SR (and
presentation state) must arrive in the right study, read back with pydicom and pass dciodvfy;
CT and broken files must be refused analysis with a reason. Images with gaps in their header (no
Patient ID, Patient Name, Study Date, Study Time, Accession Number or Study ID) and with a VOI LUT
(16 and 12 bits) get theirs too, the presentation state rendering through DCMTK's dcmp2pgm with
the grey levels of the image and of its SC. A study holding fracsight's own results and another
system's report is sent from Orthanc ("send study") with success. Then the faults: Orthanc down
(the results wait and arrive when it is back) and a calling AE title that is not allowed.
Skips without root, ``ip``, Orthanc or storescu (``.ci/run`` installs them).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

import pydicom  # noqa: E402
from dicom_checks import (  # noqa: E402
    DCIODVFY,
    DCMP2PGM,
    dciodvfy_errors,
    render,
    sc_and_rendering_grey,
    split_inherited,
)
from dicom_peers import DICOM, RADIOGRAPHS, referencing, renamed, rle_copy, wait_until  # noqa: E402

from fracsight.service.dicom_results import GSPS_CLASS, SC_CLASS, SR_CLASS  # noqa: E402

ORTHANC = shutil.which("Orthanc")
STORESCU = shutil.which("storescu")
ECHOSCU = shutil.which("echoscu")
IP = shutil.which("ip")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.name != "posix" or os.geteuid() != 0 or not (ORTHANC and STORESCU and ECHOSCU and IP),
        reason="needs root, iproute2 (ip netns), Orthanc and DCMTK's storescu and echoscu (see .ci/run)",
    ),
]
REFUSED = {
    "pyd_CT_small.dcm": "computed tomography",
    "pljd_966.dcm": "could not be decoded",
    "pljd_RG2_JPLY.dcm": "could not be decoded",
}
# storescu proposes uncompressed transfer syntaxes unless told which compressed one a file has.
_STORESCU_FLAGS = {
    "1.2.840.10008.1.2.4.50": ["-xy"],
    "1.2.840.10008.1.2.4.51": ["-xx"],
    "1.2.840.10008.1.2.4.57": ["-xs"],
    "1.2.840.10008.1.2.4.70": ["-xs"],
    "1.2.840.10008.1.2.4.80": ["-xt"],
    "1.2.840.10008.1.2.4.81": ["-xu"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
    "1.2.840.10008.1.2.4.91": ["-xw"],
    "1.2.840.10008.1.2.5": ["-xr"],
}
_REST = """
import sys, urllib.request
method, path, body, out = sys.argv[1:5]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
request = urllib.request.Request("http://127.0.0.1:8042" + path, data=body.encode() or None, method=method)
with opener.open(request, timeout=30) as answer:
    data = answer.read()
open(out, "wb").write(data) if out else sys.stdout.write(data.decode())
"""


class Site:
    """A network namespace with Orthanc and the fracsight node in it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ns = f"fs-{os.getpid()}-{secrets.token_hex(3)}"
        self.processes: dict[str, subprocess.Popen] = {}
        made = subprocess.run([IP, "netns", "add", self.ns], capture_output=True, text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot make a network namespace: {made.stderr.strip()}")
        self.run(IP, "link", "set", "lo", "up", check=True)
        self.data = folder / "node"
        self.config = folder / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "fracsight-ci",
                    "StorageDirectory": str(folder / "orthanc"),
                    "IndexDirectory": str(folder / "orthanc"),
                    "Plugins": [],
                    "HttpPort": 8042,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomAet": "ORTHANC",
                    "DicomPort": 4242,
                    "DicomCheckCalledAet": True,
                    "DicomModalities": {"fracsight": ["FRACSIGHT", "127.0.0.1", 11112]},
                    "SaveJobs": False,
                }
            )
        )

    def command(self, *args: str) -> list[str]:
        return [IP, "netns", "exec", self.ns, *args]

    def run(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=120, **kwargs)

    def start_orthanc(self) -> None:
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - kept open while it runs
        self.processes["orthanc"] = subprocess.Popen(
            self.command(ORTHANC, str(self.config)), stdout=log, stderr=subprocess.STDOUT
        )
        wait_until(lambda: self.rest_ok("/system"), 60, "Orthanc to start")

    def stop_orthanc(self) -> None:
        process = self.processes.pop("orthanc")
        process.terminate()
        process.wait(30)

    def start_node(self) -> None:
        log = open(self.folder / "node.log", "ab")  # noqa: SIM115 - kept open while it runs
        self.processes["node"] = subprocess.Popen(
            self.command(sys.executable, "-m", "fracsight", "dicom-node", "--data", str(self.data),
                         "--allow", "STORESCU,ORTHANC", "--forward", "ORTHANC@127.0.0.1:4242",
                         "--retry-max-s", "2"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        echo = (ECHOSCU, "-aet", "STORESCU", "-aec", "FRACSIGHT", "127.0.0.1", "11112")
        wait_until(lambda: self.run(*echo).returncode == 0, 90, "the node to start")

    def rest(self, path: str, method: str = "GET", body: str = "", out: Path | None = None):
        done = self.run(sys.executable, "-c", _REST, method, path, body, str(out or ""))
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-500:])
        return None if out else json.loads(done.stdout)

    def rest_ok(self, path: str) -> bool:
        try:
            self.rest(path)
            return True
        except RuntimeError:
            return False

    def storescu(
        self, files: list[Path], called: str = "FRACSIGHT", port: int = 11112, aet: str = "STORESCU"
    ):
        """Send ``files``, one storescu call (one association) per transfer syntax."""
        groups: dict[tuple[str, ...], list[str]] = {}
        for path in files:
            syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
            groups.setdefault(tuple(_STORESCU_FLAGS.get(syntax, [])), []).append(str(path))
        results = []
        for flags, paths in groups.items():
            results.append(
                self.run(STORESCU, *flags, "-aet", aet, "-aec", called, "127.0.0.1", str(port), *paths)
            )
        return results

    def node_db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.data / "fracsight.db", timeout=10)
        db.row_factory = sqlite3.Row
        return db

    def close(self) -> None:
        for process in self.processes.values():
            process.terminate()
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        subprocess.run([IP, "netns", "del", self.ns], capture_output=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, dicom_dir: Path):
    running = Site(tmp_path_factory.mktemp("site"))
    try:
        running.start_orthanc()
        running.start_node()
        yield running
    finally:
        running.close()


def _all_delivered(site: Site) -> bool:
    with site.node_db() as db:
        return not db.execute(
            "SELECT (SELECT COUNT(*) FROM images WHERE status IN ('queued', 'analysing') "
            "OR results = 'pending') + (SELECT COUNT(*) FROM sends WHERE status != 'sent')"
        ).fetchone()[0]


def _study_objects(site: Site, study_uid: str, folder: Path) -> list[pydicom.Dataset]:
    """Every instance Orthanc keeps in the study, read back with pydicom."""
    found = site.rest(
        "/tools/find", "POST", json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
    )
    out = []
    for orthanc_id in found:
        path = folder / f"{orthanc_id}.dcm"
        site.rest(f"/instances/{orthanc_id}/file", out=path)
        out.append(pydicom.dcmread(path))
    return out


def test_radiographs_from_storescu_get_their_results_in_their_study(site: Site, tmp_path: Path) -> None:
    rle = rle_copy(DICOM / "hd_dx_image.dcm")
    rle.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    sources = [DICOM / name for name in RADIOGRAPHS] + [tmp_path / "rle.dcm"]
    refused = [DICOM / name for name in REFUSED]
    for done in site.storescu(sources, called="ORTHANC", port=4242):  # the PACS has the study
        assert done.returncode == 0, done.stderr
    for done in site.storescu(sources + refused):
        assert done.returncode == 0, done.stderr
    wait_until(lambda: _all_delivered(site), 180, "every image analysed and its results in Orthanc")
    with site.node_db() as db:
        records = {r["sop_instance_uid"]: dict(r) for r in db.execute("SELECT * FROM images")}
    validator = shutil.which("dciodvfy")
    for path in sources:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        record = records[source.SOPInstanceUID]
        assert record["status"] == "done", (path.name, record["error"])
        objects = _study_objects(site, source.StudyInstanceUID, tmp_path)
        assert source.SOPInstanceUID in {o.SOPInstanceUID for o in objects}, "the PACS has the image"
        made = referencing(objects, source.SOPInstanceUID)
        kinds = sorted(o.SOPClassUID for o in made)
        expected = (
            [SC_CLASS, GSPS_CLASS, SR_CLASS]
            if record["category"] in ("fracture", "doubt")
            else [SC_CLASS, SR_CLASS]
        )
        assert kinds == sorted(expected), (path.name, record["category"], [o.SOPClassUID.name for o in made])
        for result in made:
            assert result.StudyInstanceUID == source.StudyInstanceUID and result.PatientID == source.PatientID
            assert result.SeriesInstanceUID != source.SeriesInstanceUID
            if validator:
                run = subprocess.run([validator, result.filename], capture_output=True, text=True, timeout=60)
                errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
                assert errors == [], (path.name, result.SOPClassUID.name, errors)
        (sc,) = [o for o in made if o.SOPClassUID == SC_CLASS]
        assert sc.pixel_array.shape == (sc.Rows, sc.Columns, 3) and sc.BurnedInAnnotation == "YES"
    for path, reason in REFUSED.items():
        source = pydicom.dcmread(DICOM / path, stop_before_pixels=True)
        record = records[source.SOPInstanceUID]
        assert record["status"] == "refused" and reason in record["error"], (path, record["error"])
        assert record["results"] == "none"
    # What a PACS does on its own: Orthanc sends a study to the node as a modality it knows.
    ds = renamed(DICOM / "hd_dx_image.dcm")
    ds.save_as(tmp_path / "routed.dcm", enforce_file_format=True)
    assert all(
        r.returncode == 0 for r in site.storescu([tmp_path / "routed.dcm"], called="ORTHANC", port=4242)
    )
    query = {"Level": "Instance", "Query": {"SOPInstanceUID": ds.SOPInstanceUID}}
    (instance,) = site.rest("/tools/find", "POST", json.dumps(query))
    site.rest(
        "/modalities/fracsight/store", "POST", json.dumps({"Resources": [instance], "Synchronous": True})
    )
    wait_until(
        lambda: len(referencing(_study_objects(site, ds.StudyInstanceUID, tmp_path), ds.SOPInstanceUID)) >= 2,
        60,
        "results of the image Orthanc sent",
    )


def test_a_study_with_fracsights_own_results_in_it_is_sent_from_orthanc(site: Site, tmp_path: Path) -> None:
    """"Send study to fracsight" once the study holds fracsight's SC, SR and presentation state and
    another system's report: Orthanc's send succeeds; the node drops its own results, keeps the
    other report without analysing it, and makes no new report (nothing new to say)."""
    ds = renamed(DICOM / "pljd_RG3_J2KR.dcm")  # "fracture": SC, SR and a presentation state
    ds.save_as(tmp_path / "image.dcm", enforce_file_format=True)
    def to_orthanc(path: Path) -> None:
        assert all(r.returncode == 0 for r in site.storescu([path], called="ORTHANC", port=4242))

    to_orthanc(tmp_path / "image.dcm")
    query = {"Level": "Study", "Query": {"StudyInstanceUID": ds.StudyInstanceUID}}
    (study,) = site.rest("/tools/find", "POST", json.dumps(query))
    send = json.dumps({"Resources": [study], "Synchronous": True})
    site.rest("/modalities/fracsight/store", "POST", send)

    def results() -> list[pydicom.Dataset]:
        objects = _study_objects(site, ds.StudyInstanceUID, tmp_path)
        return [o for o in objects if o.get("Manufacturer") == "fracsight"]

    wait_until(lambda: {o.SOPClassUID for o in results()} == {SC_CLASS, SR_CLASS, GSPS_CLASS}, 120, "results")
    (report,) = [o for o in results() if o.SOPClassUID == SR_CLASS]
    other = report.copy()
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    other.SeriesInstanceUID = pydicom.uid.generate_uid()
    other.Manufacturer = "Another vendor"
    other.save_as(tmp_path / "other.dcm", enforce_file_format=True)
    to_orthanc(tmp_path / "other.dcm")
    with site.node_db() as db:
        images_before = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    answer = site.rest("/modalities/fracsight/store", "POST", send)  # raises unless HTTP success
    assert answer is not None
    with site.node_db() as db:
        assert db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == images_before, "nothing analysed"
    kept = [pydicom.dcmread(p, stop_before_pixels=True) for p in (site.data / "objects").rglob("*.dcm")]
    kept_uids = {k.SOPInstanceUID for k in kept}
    assert other.SOPInstanceUID in kept_uids, "the other system's report is kept with the study"
    assert not kept_uids & {o.SOPInstanceUID for o in results()}, "fracsight's own results are dropped"
    wait_until(lambda: _all_delivered(site), 60, "nothing left to deliver")
    assert len([o for o in results() if o.SOPClassUID == SR_CLASS]) == 1, "no new report"


def test_results_wait_while_orthanc_is_down_and_arrive_when_it_is_back(site: Site, tmp_path: Path) -> None:
    ds = renamed(DICOM / "pljd_RG3_J2KR.dcm")
    ds.save_as(tmp_path / "late.dcm", enforce_file_format=True)
    site.stop_orthanc()
    try:
        assert all(r.returncode == 0 for r in site.storescu([tmp_path / "late.dcm"]))

        def retried() -> bool:
            with site.node_db() as db:
                rows = db.execute(
                    "SELECT s.status, s.attempts, s.last_error FROM sends s "
                    "JOIN images i ON i.id = s.image_id WHERE i.sop_instance_uid = ?",
                    (ds.SOPInstanceUID,),
                ).fetchall()
            return bool(rows) and all(r["attempts"] >= 2 and r["status"] == "pending" for r in rows)

        wait_until(retried, 60, "the results kept and retried")
    finally:
        site.start_orthanc()
    wait_until(lambda: _all_delivered(site), 60, "the kept results delivered")
    assert len(referencing(_study_objects(site, ds.StudyInstanceUID, tmp_path), ds.SOPInstanceUID)) >= 2


def test_a_calling_ae_title_not_allowed_is_rejected(site: Site) -> None:
    (done,) = site.storescu([DICOM / "hd_dx_image.dcm"], aet="INTRUDER")
    assert done.returncode != 0
    assert "Association Rejected" in done.stderr + done.stdout, done.stderr


# Type 2 elements of the patient and study modules modalities and anonymisers leave out.
HEADER_GAPS = ("PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber", "StudyID")
GAPPED_CR = "pljd_RG2_JPLL.dcm"  # a CR (JPEG lossless)


def _twelve_bit_voi_lut(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The data set with its VOI LUT as 12 bits an entry (LUT Data as US), the same curve."""
    item = ds.VOILUTSequence[0]
    item.LUTDescriptor = [int(item.LUTDescriptor[0]), int(item.LUTDescriptor[1]), 12]
    item["LUTData"].value = [int(v) >> 4 for v in item.LUTData]
    return ds


def test_header_gaps_and_voi_luts_get_their_results_in_orthanc(site: Site, tmp_path: Path) -> None:
    sent: dict[str, Path] = {}
    for keyword in HEADER_GAPS:
        ds = renamed(DICOM / GAPPED_CR)
        delattr(ds, keyword)
        sent[f"no {keyword}"] = tmp_path / f"no-{keyword}.dcm"
        ds.save_as(sent[f"no {keyword}"], enforce_file_format=True)
    sent["VOI LUT"] = tmp_path / "vlut.dcm"
    renamed(DICOM / "pdd_vlut_04.dcm").save_as(sent["VOI LUT"], enforce_file_format=True)
    sent["12-bit VOI LUT"] = tmp_path / "vlut12.dcm"
    twelve = _twelve_bit_voi_lut(renamed(DICOM / "pdd_vlut_04.dcm"))
    twelve.save_as(sent["12-bit VOI LUT"], enforce_file_format=True)
    for done in site.storescu(list(sent.values())):
        assert done.returncode == 0, done.stderr
    wait_until(lambda: _all_delivered(site), 240, "every image analysed and its results in Orthanc")
    with site.node_db() as db:
        records = {r["sop_instance_uid"]: dict(r) for r in db.execute("SELECT * FROM images")}
    rendered = 0
    for label, path in sent.items():
        source = pydicom.dcmread(path)
        record = records[source.SOPInstanceUID]
        assert record["status"] == "done" and record["results"] == "made", (label, record["results_error"])
        made = referencing(_study_objects(site, source.StudyInstanceUID, tmp_path), source.SOPInstanceUID)
        by_class = {o.SOPClassUID: o for o in made}
        suspicious = record["category"] in ("fracture", "doubt")
        wanted = {SC_CLASS, SR_CLASS} | ({GSPS_CLASS} if suspicious else set())
        assert set(by_class) == wanted, (label, record["category"], [o.SOPClassUID.name for o in made])
        from_source = dciodvfy_errors(path) if DCIODVFY else []
        for result in made:
            assert result.StudyInstanceUID == source.StudyInstanceUID, label
            if label.startswith("no "):  # type 2: present and empty, as the standard allows
                keyword = label[3:]
                assert keyword in result and not result[keyword].value, (label, result.SOPClassUID.name)
            if DCIODVFY:
                new, _ = split_inherited(dciodvfy_errors(Path(result.filename)), from_source)
                assert new == [], (label, result.SOPClassUID.name, new)
        state = by_class.get(GSPS_CLASS)
        # DCMTK refuses a presentation state with an empty Patient Name ("invalid data structures"),
        # though type 2 lets it be empty: fracsight does not make a name up.
        if state is not None and DCMP2PGM and label != "no PatientName":
            shown = path
            if source.file_meta.TransferSyntaxUID.is_compressed:  # DCMTK's dcmp2pgm decodes few
                source.decompress()
                shown = tmp_path / f"{path.stem}-plain.dcm"
                source.save_as(shown, enforce_file_format=True)
            plain = render(shown, tmp_path / f"{path.stem}.pgm").mean()
            through = render(shown, tmp_path / f"{path.stem}-ps.pgm", Path(state.filename))
            # as the viewer shows the image without it, and as the SC shows it outside the heat map
            assert abs(through.mean() - plain) <= 0.1 * plain, (label, through.mean(), plain)
            sc, rendered = sc_and_rendering_grey(by_class[SC_CLASS].pixel_array, through)
            assert abs(rendered - sc) <= 0.1 * sc, (label, rendered, sc)
            if "VOI LUT" in label:
                lut = state.SoftcopyVOILUTSequence[0].VOILUTSequence[0]
                assert int(lut.LUTDescriptor[2]) in (8, 16), "8 or 16 bits an entry in a presentation state"
            rendered += 1
    assert rendered >= 2 or not DCMP2PGM, "the VOI LUT images (doubt) come back with a presentation state"
