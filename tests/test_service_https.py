"""``fracsight serve --tls-cert --tls-key``: the page and API over HTTPS (the token never in clear
text), and nothing answered over plain HTTP on the same port."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from conftest import OPENSSL, make_test_pki  # noqa: E402

from fracsight.service.server import Service  # noqa: E402
from fracsight.service.settings import ServiceSettings  # noqa: E402

TOKEN = "https-test-token-0123456789"
pytestmark = pytest.mark.skipif(not OPENSSL, reason="needs the openssl command for test certificates")


def test_the_service_over_https(tmp_path: Path, sample_images: list[Path]) -> None:
    pki = make_test_pki(tmp_path / "pki")
    settings = ServiceSettings(
        data_dir=tmp_path / "data",
        port=0,
        token=TOKEN,
        tls_cert=pki / "server.crt",
        tls_key=pki / "server.key",
    )
    service = Service(settings)
    service.start()
    try:
        assert service.url.startswith("https://127.0.0.1:")
        with httpx.Client(base_url=service.url, verify=str(pki / "ca.crt")) as client:
            assert client.get("/api/health").status_code == 200
            auth = {"Authorization": f"Bearer {TOKEN}"}
            upload = client.post(
                "/api/images", headers=auth, files={"file": ("x.jpg", sample_images[0].read_bytes())}
            )
            assert upload.status_code == 202
            assert client.get("/api/studies", headers=auth).status_code == 200
            assert "fracsight" in client.get("/").text
        # The same port over plain HTTP: no answer, so no token or result crosses in clear text.
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{service.port}/api/health", timeout=5)
    finally:
        service.stop()


def test_https_settings_refuse_what_cannot_work(tmp_path: Path) -> None:
    pki = make_test_pki(tmp_path / "pki")
    with pytest.raises(ValueError, match="go together"):
        ServiceSettings(data_dir=tmp_path, tls_cert=pki / "server.crt")
    with pytest.raises(ValueError, match="cannot be used"):
        ServiceSettings(data_dir=tmp_path, tls_cert=pki / "server.crt", tls_key=pki / "node.key")
    with pytest.raises(ValueError, match="no such file"):
        ServiceSettings(data_dir=tmp_path, tls_cert=pki / "none.crt", tls_key=pki / "server.key")
