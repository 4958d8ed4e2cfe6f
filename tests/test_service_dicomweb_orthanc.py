"""DICOMweb against a real archive: Orthanc (Debian) with its DICOMweb plugin (``orthanc-dicomweb``).

In a network namespace with only loopback (the Site of tests/test_service_dicom_orthanc.py):
Orthanc with the plugin enabled, and ``fracsight serve`` with its DICOM node delivering results by
STOW-RS to Orthanc's ``/dicom-web`` (``--forward-stow``, basic credentials from a file, Orthanc
requiring them). A radiograph uploaded to fracsight by STOW-RS is analysed, and its Secondary
Capture and SR arrive in Orthanc by STOW-RS, read back with QIDO-RS; one sent to the node by
C-STORE (storescu) gets its results the same way. Then Orthanc's DICOMweb down: the results wait,
and arrive when it is back. Skips without root, ``ip``, Orthanc, its plugin or storescu.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

import pydicom  # noqa: E402
from dicom_peers import renamed, wait_until  # noqa: E402
from test_service_dicom_orthanc import ECHOSCU, IP, ORTHANC, STORESCU, Site, _all_delivered  # noqa: E402

from fracsight.service.dicom_results import GSPS_CLASS, SC_CLASS, SR_CLASS  # noqa: E402

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "fracsight" / "samples" / "hd_dx_image.dcm"
TOKEN = secrets.token_hex(16)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.name != "posix" or os.geteuid() != 0 or not (ORTHANC and STORESCU and ECHOSCU and IP),
        reason="needs root, iproute2 (ip netns), Orthanc and DCMTK's storescu and echoscu (see .ci/run)",
    ),
    pytest.mark.skipif(not PLUGIN.exists(), reason="needs Orthanc's DICOMweb plugin (orthanc-dicomweb)"),
]
# An HTTP client run inside the namespace: METHOD URL AUTH CONTENT-TYPE BODY-FILE -> status, then body.
_HTTP = """
import sys, urllib.error, urllib.request
method, url, auth, content_type, body = sys.argv[1:6]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
data = open(body, "rb").read() if body else None
request = urllib.request.Request(url, data=data, method=method)
if auth:
    request.add_header("Authorization", auth)
if content_type:
    request.add_header("Content-Type", content_type)
request.add_header("Accept", "application/dicom+json")
try:
    with opener.open(request, timeout=60) as answer:
        status, content = answer.status, answer.read()
except urllib.error.HTTPError as error:
    status, content = error.code, error.read()
sys.stdout.write(str(status) + "\\n" + content.decode())
"""
ORTHANC_USER, ORTHANC_PASSWORD = "fracsight", secrets.token_hex(8)


class DicomWebSite(Site):
    """Orthanc with DICOMweb (credentials required), fracsight serve forwarding by STOW-RS."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        config = json.loads(self.config.read_text())
        config.update(
            {
                "Plugins": [str(PLUGIN)],
                "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
                "AuthenticationEnabled": True,
                "RegisteredUsers": {ORTHANC_USER: ORTHANC_PASSWORD},
            }
        )
        self.config.write_text(json.dumps(config))
        self.auth_file = folder / "stow-auth"
        self.auth_file.write_text(f"Basic {ORTHANC_USER}:{ORTHANC_PASSWORD}\n")
        self.auth_file.chmod(0o600)

    def rest_ok(self, path: str) -> bool:
        status, _ = self.http("GET", "http://127.0.0.1:8042" + path, self.orthanc_auth)
        return status == 200

    @property
    def orthanc_auth(self) -> str:
        return "Basic " + base64.b64encode(f"{ORTHANC_USER}:{ORTHANC_PASSWORD}".encode()).decode()

    def http(self, method: str, url: str, auth: str = "", content_type: str = "", body: Path | None = None):
        done = self.run(sys.executable, "-c", _HTTP, method, url, auth, content_type, str(body or ""))
        if done.returncode != 0:
            return 0, done.stderr[-300:]
        status, _, content = done.stdout.partition("\n")
        return int(status), content

    def start_node(self) -> None:
        log = open(self.folder / "node.log", "ab")  # noqa: SIM115 - kept open while it runs
        self.processes["node"] = subprocess.Popen(
            self.command(sys.executable, "-m", "fracsight", "serve", "--data", str(self.data),
                         "--port", "8000", "--dicom-port", "11112", "--dicom-allow", "STORESCU",
                         "--forward-stow", "http://127.0.0.1:8042/dicom-web",
                         "--forward-stow-auth", str(self.auth_file), "--retry-max-s", "2"),
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "FRACSIGHT_API_TOKEN": TOKEN},
        )  # fmt: skip
        echo = (ECHOSCU, "-aet", "STORESCU", "-aec", "FRACSIGHT", "127.0.0.1", "11112")
        wait_until(lambda: self.run(*echo).returncode == 0, 90, "the node to start")
        wait_until(lambda: self.http("GET", "http://127.0.0.1:8000/api/health")[0] == 200, 60, "the web side")

    def qido_instances(self, study_uid: str) -> list[dict]:
        status, content = self.http(
            "GET", f"http://127.0.0.1:8042/dicom-web/studies/{study_uid}/instances", self.orthanc_auth
        )
        assert status in (200, 204), (status, content[:300])
        return json.loads(content) if content.strip() else []


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory):
    running = DicomWebSite(tmp_path_factory.mktemp("dicomweb-site"))
    try:
        running.start_orthanc()
        running.start_node()
        yield running
    finally:
        running.close()


def _stow_body(datasets: list[pydicom.Dataset], folder: Path) -> tuple[Path, str]:
    boundary = secrets.token_hex(12)
    chunks = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(path.read_bytes() + b"\r\n")
    body = folder / "stow.body"
    body.write_bytes(b"".join(chunks) + f"--{boundary}--\r\n".encode())
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _classes(instances: list[dict]) -> list[str]:
    return sorted(i["00080016"]["Value"][0] for i in instances)


def _results_in_orthanc(site: DicomWebSite, source: pydicom.Dataset) -> list[str]:
    """SOP classes of fracsight's results in the source's study, by QIDO-RS (the image excluded)."""
    found = site.qido_instances(source.StudyInstanceUID)
    return _classes([i for i in found if i["00080018"]["Value"][0] != source.SOPInstanceUID])


def _expected(site: DicomWebSite, source: pydicom.Dataset) -> list[str]:
    with site.node_db() as db:
        row = db.execute(
            "SELECT status, category FROM images WHERE sop_instance_uid = ?", (source.SOPInstanceUID,)
        ).fetchone()
    assert row["status"] == "done"
    return sorted([SC_CLASS, SR_CLASS] + ([GSPS_CLASS] if row["category"] in ("fracture", "doubt") else []))


def test_a_stow_rs_upload_is_analysed_and_its_results_reach_orthanc_by_stow_rs(
    site: DicomWebSite, tmp_path: Path
) -> None:
    source = renamed(SAMPLE)
    body, content_type = _stow_body([source], tmp_path)
    url = "http://127.0.0.1:8000/dicomweb/studies"
    assert site.http("POST", url, "", content_type, body)[0] == 401  # as the API: a token is needed
    status, content = site.http("POST", url, f"Bearer {TOKEN}", content_type, body)
    assert status == 200, content[:500]
    referenced = json.loads(content)["00081199"]["Value"]
    assert [r["00081155"]["Value"][0] for r in referenced] == [source.SOPInstanceUID]
    wait_until(lambda: _all_delivered(site), 180, "the upload analysed and its results in Orthanc")
    assert _results_in_orthanc(site, source) == _expected(site, source)
    with site.node_db() as db:
        sends = db.execute("SELECT destination, status FROM sends").fetchall()
    assert sends and {tuple(s) for s in sends} == {("http://127.0.0.1:8042/dicom-web", "sent")}


def test_an_image_sent_by_c_store_gets_its_results_by_stow_rs(site: DicomWebSite, tmp_path: Path) -> None:
    source = renamed(SAMPLE)
    source.save_as(tmp_path / "image.dcm", enforce_file_format=True)
    (done,) = site.storescu([tmp_path / "image.dcm"])
    assert done.returncode == 0, done.stderr
    wait_until(lambda: _all_delivered(site), 180, "the image analysed and its results in Orthanc")
    assert _results_in_orthanc(site, source) == _expected(site, source)


def test_results_wait_while_the_archive_is_down(site: DicomWebSite, tmp_path: Path) -> None:
    source = renamed(SAMPLE)
    source.save_as(tmp_path / "late.dcm", enforce_file_format=True)
    site.stop_orthanc()
    try:
        (done,) = site.storescu([tmp_path / "late.dcm"])
        assert done.returncode == 0, done.stderr

        def tried() -> bool:
            with site.node_db() as db:
                return bool(db.execute("SELECT COUNT(*) FROM sends WHERE attempts > 0 AND status != 'sent'")
                            .fetchone()[0])  # fmt: skip

        wait_until(tried, 120, "a failed delivery while the archive is down")
    finally:
        site.start_orthanc()
    wait_until(lambda: _all_delivered(site), 120, "the results delivered once the archive is back")
    assert _results_in_orthanc(site, source) == _expected(site, source)
