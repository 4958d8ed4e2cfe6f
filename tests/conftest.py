"""Shared fixtures: where the bundled samples and the shared real data live, and one loaded model.

Loading the default ONNX model costs about a second; the inference and predict tests share one
:class:`~fracsight.inference.Analyser` per session instead of loading it in every test.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fracsight.io import RefusedInput, read_radiograph

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
SAMPLES_DIR = REPO_ROOT / "src" / "fracsight" / "samples"
# The five bundled FracAtlas samples and their source labels (see samples/README.md).
SAMPLE_LABELS = {
    "IMG0002472.jpg": 1,
    "IMG0001739.jpg": 1,
    "IMG0000763.jpg": 1,
    "IMG0000001.jpg": 0,
    "IMG0000020.jpg": 0,
}


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES_DIR


@pytest.fixture(scope="session")
def sample_labels() -> dict[str, int]:
    return dict(SAMPLE_LABELS)


@pytest.fixture(scope="session")
def sample_images() -> list[Path]:
    """Every bundled radiograph (the JPEGs and the DX DICOM), sorted by name."""
    paths = sorted(p for p in SAMPLES_DIR.iterdir() if p.suffix.lower() in (".jpg", ".dcm"))
    assert len(paths) == 6, f"expected 5 JPEGs and 1 DICOM in {SAMPLES_DIR}, found {len(paths)}"
    return paths


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder (``../shared/data`` from the repo root); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def _shared_folder(shared_data: Path, relative: str, what: str) -> Path:
    folder = shared_data / relative
    if not folder.is_dir():
        pytest.skip(f"shared {what} not found at {folder}")
    return folder


@pytest.fixture(scope="session")
def dicom_dir(shared_data: Path) -> Path:
    """The real DICOM samples (``../shared/data/dicom``, listed in its SOURCES.txt)."""
    return _shared_folder(shared_data, "dicom", "DICOM samples")


@pytest.fixture(scope="session")
def graz_dir(shared_data: Path) -> Path:
    """The GRAZPEDWRI-DX sample: 16-bit PNG wrist radiographs."""
    return _shared_folder(shared_data, "grazpedwri-sample/images", "GRAZPEDWRI-DX sample")


@pytest.fixture(scope="session")
def fracatlas_dir(shared_data: Path) -> Path:
    """The FracAtlas development images."""
    return _shared_folder(shared_data, "fracatlas/images", "FracAtlas images")


# Identifying values of the bundled DX sample (a veterinary image), searched for in messages.
SAMPLE_PATIENT = ("Dog^AVeryGood", "AVeryGood", "123456")


def stretched_sop_class_uid(dicom: bytes) -> bytes:
    """The bundled DX sample with its (0008,0016) SOP Class UID's length run over the following
    elements up to the end of (0010,0020) Patient ID, so that its value holds the patient's name and
    ID and the data set still parses after it (issue 11: the refusal quoted them)."""
    data = bytearray(dicom)
    at = data.find(b"\x08\x00\x16\x00UI")
    patient_id = data.find(b"\x10\x00\x20\x00LO")
    assert 0 < at < patient_id
    end = patient_id + 8 + int.from_bytes(data[patient_id + 6 : patient_id + 8], "little")
    data[at + 6 : at + 8] = (end - (at + 8)).to_bytes(2, "little")
    return bytes(data)


def assert_refused(path: Path, error: type[RefusedInput], reason: str, **kwargs: int) -> RefusedInput:
    """``read_radiograph(path)`` refuses with ``error``; the message names the file and the reason."""
    with pytest.raises(error) as caught:
        read_radiograph(path, **kwargs)
    assert path.name in str(caught.value), str(caught.value)
    assert reason in caught.value.reason, caught.value.reason
    return caught.value


@pytest.fixture(scope="module")
def pacs():
    """A storage SCP on loopback that keeps what it receives (dicom_peers.FakePacs), one per
    test module."""
    from dicom_peers import FakePacs

    server = FakePacs().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def default_analyser():
    """The shipped default model, loaded once per session."""
    from fracsight.inference import Analyser

    return Analyser(batch_size=4)


def tiny_calibration_data(folder: Path) -> tuple[Path, Path]:
    """A manifest of the bundled JPEGs and a split file: three to calibrate on, two to compare on
    (enough for ``fracsight quantise`` to make a real 8-bit copy of the real model, quickly)."""
    names = sorted(SAMPLE_LABELS)
    manifest = folder / "manifest.csv"
    manifest.write_text(
        "path,label\n" + "".join(f"{SAMPLES_DIR / n},{SAMPLE_LABELS[n]}\n" for n in names), encoding="utf-8"
    )
    split = folder / "split.csv"
    rows = [f"{Path(n).stem},{'dev' if i < 3 else 'test'}\n" for i, n in enumerate(names)]
    split.write_text("image_id,split\n" + "".join(rows), encoding="utf-8")
    return manifest, split


def site_copy(folder: Path) -> Path:
    """A copy of the shipped model and its card in ``folder``, as a site keeps its model."""
    from fracsight.model_card import DEFAULT_MODEL, card_path

    model = folder / "default.onnx"
    shutil.copyfile(DEFAULT_MODEL, model)
    shutil.copyfile(card_path(DEFAULT_MODEL), card_path(model))
    return model


@pytest.fixture(scope="session")
def int8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site copy of the shipped model with an 8-bit copy beside it (``default.int8.onnx`` and its
    card), made once per session by ``fracsight quantise`` on the bundled samples (a minute or so):
    the float model's path, as ``--model`` takes it."""
    pytest.importorskip("onnx")  # the train extra: the quantise step needs it, inference does not
    from fracsight.cli import main

    folder = tmp_path_factory.mktemp("int8")
    model = site_copy(folder)
    manifest, split = tiny_calibration_data(folder)
    code = main(
        ["quantise", str(model), "--data", str(manifest), "--split-file", str(split),
         "--calibration-images", "3", "--timing-images", "0"]
    )  # fmt: skip
    assert code == 0 and model.with_name("default.int8.onnx").is_file()
    return model


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
HAVE_CHROMIUM = bool(CHROMIUM and CHROMEDRIVER)


def chrome_driver(tmp_path: Path, width: int = 1280, height: int = 1000):
    """Headless Debian Chromium under Selenium, with a fresh profile and no background traffic."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def gdcm_encode(source: Path, target: Path, syntax: int) -> Path:
    """``source`` re-encoded by python-gdcm in ``syntax`` (a ``gdcm.TransferSyntax`` constant)."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read(), source
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(syntax))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), target
    return target


# TLS in tests: a throwaway certificate authority made with the ``openssl`` command.
OPENSSL = shutil.which("openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _issue(folder: Path, name: str, ca: str | None) -> tuple[Path, Path]:
    """A key and certificate for ``name`` (IP 127.0.0.1), signed by ``ca`` or, without one, by itself."""
    extensions = folder / f"{name}.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    if ca is None:
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
                 "-addext", "subjectAltName=IP:127.0.0.1", cwd=folder)  # fmt: skip
    else:
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=folder)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", extensions.name,
                 cwd=folder)  # fmt: skip
    return folder / f"{name}.crt", folder / f"{name}.key"


def make_test_pki(folder: Path) -> Path:
    """``folder`` with ca.crt/ca.key and, signed by that CA for IP 127.0.0.1, node, modality, pacs
    and server certificates and keys; ``intruder`` is self-signed (same form, not from the CA)."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=fracsight test CA", cwd=folder)  # fmt: skip
    for name in ("node", "modality", "pacs", "server"):
        _issue(folder, name, "ca")
    _issue(folder, "intruder", None)
    return folder


def wait_for(condition: Callable[[], object], timeout: float = 60.0, what: str = "condition"):
    """Poll ``condition`` until it gives something true (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def service_with_reader(tmp_path: Path, token: str) -> Iterator:
    """A running ``fracsight serve`` on a free loopback port with site token ``token`` and one
    reader account, "Dr Test", whose token is ``.reader_token``; stopped when the fixture ends."""
    from fracsight.service.server import Service
    from fracsight.service.settings import ServiceSettings
    from fracsight.service.users import UserDirectory

    running = Service(ServiceSettings(data_dir=tmp_path / "data", port=0, token=token))
    _, running.reader_token = UserDirectory.of_data_dir(tmp_path / "data").add("Dr Test", "reader")
    running.start()
    yield running
    running.stop()


def image_analysed(client, image_id: str, headers: dict[str, str], timeout: float = 60.0) -> dict:
    """``GET /api/images/{id}`` (a TestClient or httpx client) until the image is no longer queued
    or being analysed: its answer, analysed or refused."""

    def finished() -> dict | None:
        body = client.get(f"/api/images/{image_id}", headers=headers).json()
        return body if body["status"] not in ("queued", "analysing") else None

    return wait_for(finished, timeout, f"image {image_id} to be analysed")
