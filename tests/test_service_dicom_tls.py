"""The DICOM node over TLS, as a hospital would run it beyond loopback: a modality sends with DCMTK's
``storescu +tls`` and a certificate from the site's CA; the node sends its results to a PACS over
TLS too. Without TLS, or with a certificate the CA did not sign, nothing gets in.

Certificates are made with the ``openssl`` command (``conftest.make_test_pki``: a throwaway CA).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from conftest import OPENSSL, make_test_pki  # noqa: E402
from dicom_peers import SAMPLE_DX, FakePacs, Node, renamed, send, wait_until  # noqa: E402

from fracsight.service.dicom_results import SR_CLASS  # noqa: E402
from fracsight.service.settings import DicomSettings, DicomTls, Peer  # noqa: E402

STORESCU = shutil.which("storescu")
pytestmark = pytest.mark.skipif(not (OPENSSL and STORESCU), reason="needs openssl and DCMTK's storescu")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _storescu(port: int, pki: Path, path: Path, identity: str | None) -> subprocess.CompletedProcess:
    tls = ["+tls", str(pki / f"{identity}.key"), str(pki / f"{identity}.crt"), "+cf", str(pki / "ca.crt")]
    command = [STORESCU, *(tls if identity else []), "-aet", "MODALITY", "-aec", "FRACSIGHT", "127.0.0.1",
               str(port), str(path)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_tls_in_and_out(pki: Path, tmp_path: Path, default_analyser) -> None:
    pacs_tls = DicomTls(pki / "pacs.crt", pki / "pacs.key", pki / "ca.crt")
    pacs = FakePacs().start(ssl_context=pacs_tls.server_context())
    node = Node(
        tmp_path / "data",
        default_analyser,
        pacs,
        tls=DicomTls(pki / "node.crt", pki / "node.key", pki / "ca.crt"),
        forward_tls=True,
    )
    try:
        radiograph = renamed(SAMPLE_DX)
        radiograph.save_as(tmp_path / "in.dcm", enforce_file_format=True)
        sent = _storescu(node.port, pki, tmp_path / "in.dcm", "modality")
        assert sent.returncode == 0, sent.stderr
        (record,) = node.wait_finished([radiograph.SOPInstanceUID])
        assert record.status == "done"
        # The results went to the PACS over TLS (it takes nothing else).
        (sr,) = pacs.wait_for(1, SR_CLASS)
        assert sr.StudyInstanceUID == radiograph.StudyInstanceUID

        # No TLS at all, or a certificate the site's CA did not sign: no association, nothing kept.
        for identity in (None, "intruder"):
            other = renamed(SAMPLE_DX)
            other.save_as(tmp_path / "other.dcm", enforce_file_format=True)
            refused = _storescu(node.port, pki, tmp_path / "other.dcm", identity)
            assert refused.returncode != 0, identity
            assert node.record(other.SOPInstanceUID) is None, identity
        with pytest.raises(ConnectionRefusedError):
            send(node.port, [renamed(SAMPLE_DX)])  # plain pynetdicom, no TLS
        # The node is still serving after the refusals.
        again = renamed(SAMPLE_DX)
        again.save_as(tmp_path / "again.dcm", enforce_file_format=True)
        assert _storescu(node.port, pki, tmp_path / "again.dcm", "modality").returncode == 0
        wait_until(lambda: node.record(again.SOPInstanceUID) is not None, 30, "the second instance kept")
    finally:
        node.stop()
        pacs.stop()


def test_tls_settings_refuse_what_cannot_work(pki: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        DicomTls(pki / "missing.crt", pki / "node.key")
    with pytest.raises(ValueError, match="cannot be used"):
        DicomTls(pki / "node.crt", pki / "modality.key")  # a key that is not the certificate's
    with pytest.raises(ValueError, match="--forward-tls needs"):
        DicomSettings(
            allow=(Peer("MODALITY"),), tls=DicomTls(pki / "node.crt", pki / "node.key"), forward_tls=True
        )


def test_cli_refuses_tls_options_that_cannot_work(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from fracsight.cli import main

    base = ["dicom-node", "--data", str(tmp_path / "data"), "--allow", "MODALITY", "--port", "11999"]
    cases = {
        "--tls-cert and --tls-key go together": ["--tls-cert", str(pki / "node.crt")],
        "no such file": ["--tls-cert", str(pki / "nothing.crt"), "--tls-key", str(pki / "node.key")],
        "--forward-tls needs": ["--forward-tls", "--tls-cert", str(pki / "node.crt"), "--tls-key",
                                str(pki / "node.key")],
    }  # fmt: skip
    for message, options in cases.items():
        assert main([*base, *options]) == 2, options
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, err
