"""``fracsight serve`` with HTTPS and a DICOM node over TLS: each pair of certificate options goes to
its own listener. They once wrote the same argparse destination, so ``--dicom-tls-cert`` turned HTTPS
on with the DICOM certificate and ``--tls-cert`` forced DICOM TLS."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import OPENSSL, make_test_pki

from fracsight.cli import build_parser
from fracsight.cli.serve import service_settings

pytestmark = pytest.mark.skipif(not OPENSSL, reason="needs the openssl command for test certificates")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _settings(tmp_path: Path, *options: str):
    args = build_parser().parse_args(["serve", "--data", str(tmp_path), *options])
    return service_settings(args)


def _web_tls(pki: Path) -> list[str]:
    return ["--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key")]


def _node_tls(pki: Path) -> list[str]:
    return ["--dicom-tls-cert", str(pki / "node.crt"), "--dicom-tls-key", str(pki / "node.key")]


NODE = ["--dicom-port", "11112", "--dicom-allow", "MODALITY"]


def test_both_pairs_each_go_to_their_own_listener(tmp_path: Path, pki: Path) -> None:
    pytest.importorskip("pynetdicom")
    pytest.importorskip("highdicom")
    ca = ["--dicom-tls-ca", str(pki / "ca.crt")]
    settings = _settings(tmp_path, *_web_tls(pki), *NODE, *_node_tls(pki), *ca)
    assert (settings.tls_cert, settings.tls_key) == (pki / "server.crt", pki / "server.key")
    assert settings.scheme == "https"
    assert settings.dicom is not None and settings.dicom.tls is not None
    assert (settings.dicom.tls.cert, settings.dicom.tls.key) == (pki / "node.crt", pki / "node.key")
    assert settings.dicom.tls.ca == pki / "ca.crt"


def test_web_tls_alone_leaves_the_dicom_node_in_clear(tmp_path: Path, pki: Path) -> None:
    pytest.importorskip("pynetdicom")
    pytest.importorskip("highdicom")
    settings = _settings(tmp_path, *_web_tls(pki), *NODE)
    assert settings.scheme == "https" and settings.tls_cert == pki / "server.crt"
    assert settings.dicom is not None and settings.dicom.tls is None


def test_dicom_tls_alone_leaves_the_web_side_on_http(tmp_path: Path, pki: Path) -> None:
    pytest.importorskip("pynetdicom")
    pytest.importorskip("highdicom")
    settings = _settings(tmp_path, *NODE, *_node_tls(pki))
    assert settings.scheme == "http" and settings.tls_cert is None and settings.tls_key is None
    assert settings.dicom is not None and settings.dicom.tls is not None
    assert settings.dicom.tls.cert == pki / "node.crt"


def test_web_tls_without_a_dicom_node(tmp_path: Path, pki: Path) -> None:
    settings = _settings(tmp_path, *_web_tls(pki))
    assert settings.scheme == "https" and settings.dicom is None


def test_dicom_tls_without_a_dicom_node_is_refused(tmp_path: Path, pki: Path) -> None:
    with pytest.raises(ValueError, match="--dicom-port"):
        _settings(tmp_path, *_node_tls(pki))


def test_half_a_dicom_pair_names_the_dicom_options(tmp_path: Path, pki: Path) -> None:
    pytest.importorskip("pynetdicom")
    pytest.importorskip("highdicom")
    with pytest.raises(ValueError, match="--dicom-tls-cert and --dicom-tls-key go together"):
        _settings(tmp_path, *_web_tls(pki), *NODE, "--dicom-tls-cert", str(pki / "node.crt"))


def test_dicom_node_takes_its_tls_pair_without_prefix(tmp_path: Path, pki: Path) -> None:
    pytest.importorskip("pynetdicom")
    from fracsight.cli.dicom_node import dicom_settings

    args = build_parser().parse_args(
        ["dicom-node", "--data", str(tmp_path), "--allow", "MODALITY",
         "--tls-cert", str(pki / "node.crt"), "--tls-key", str(pki / "node.key")]
    )  # fmt: skip
    settings = dicom_settings(args, args.port)
    assert settings.tls is not None and settings.tls.cert == pki / "node.crt"
