"""``--precision`` beyond ``predict``: the DICOM node, the web service and ``fracsight batch`` run the
8-bit copy of their model when told to, say so in every result, and refuse at start without it.

The 8-bit model is a real one: ``fracsight quantise`` on a site copy of the shipped model,
calibrated on the bundled samples (conftest's ``int8_model``, made once per session). The refusals
need no 8-bit model and run fast; the runs that analyse with it are marked slow.
"""

from __future__ import annotations

import csv
import io
import socket
from pathlib import Path

import pytest
from conftest import site_copy

from fracsight.cli import main
from fracsight.model_card import ModelCard, card_path

NO_COPY = "default.int8.onnx: no 8-bit copy of this model (make one with fracsight quantise"
NO_CARD = "default.int8.card.json: model card missing"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def float_only(tmp_path: Path) -> Path:
    """A site's model with no 8-bit copy beside it."""
    folder = tmp_path / "model"
    folder.mkdir()
    return site_copy(folder)


def _commands(model: Path, tmp_path: Path, samples_dir: Path) -> dict[str, list[str]]:
    data = str(tmp_path / "data")
    return {
        "dicom-node": ["dicom-node", "--data", data, "--port", str(_free_port()), "--allow", "MODALITY",
                       "--model", str(model), "--precision", "int8"],
        "serve": ["serve", "--data", data, "--port", str(_free_port()), "--model", str(model),
                  "--precision", "int8"],
        "batch": ["batch", str(samples_dir), "--output", str(tmp_path / "results.parquet"),
                  "--model", str(model), "--precision", "int8", "--no-progress"],
    }  # fmt: skip


def _needs(command: str) -> None:
    if command == "dicom-node":
        pytest.importorskip("pynetdicom")
        pytest.importorskip("highdicom")
    elif command == "serve":
        pytest.importorskip("fastapi")
        pytest.importorskip("uvicorn")
    else:
        pytest.importorskip("ray")
        pytest.importorskip("pyarrow")


@pytest.mark.parametrize("command", ["dicom-node", "serve", "batch"])
@pytest.mark.parametrize("missing", ["model", "card"])
def test_int8_without_its_copy_is_refused_at_start(
    command: str, missing: str, float_only: Path, tmp_path: Path, samples_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Exit 2 with one line naming the missing file, before a port is opened, Ray started or
    anything written: not at the first image."""
    _needs(command)
    if missing == "card":  # the 8-bit file without its card: which model answered could not be said
        float_only.with_name("default.int8.onnx").write_bytes(float_only.read_bytes())
    assert main(_commands(float_only, tmp_path, samples_dir)[command]) == 2
    err = capsys.readouterr().err
    assert (NO_COPY if missing == "model" else NO_CARD) in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "data").exists() and not (tmp_path / "results.parquet").exists()


def test_precision_comes_from_the_configuration_file_and_the_flag_wins(
    float_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pynetdicom")
    pytest.importorskip("highdicom")
    site = tmp_path / "site.toml"
    site.write_text(f'data = "{tmp_path / "data"}"\nmodel = "{float_only}"\nprecision = "int8"\n')
    node = ["dicom-node", "--config", str(site), "--port", str(_free_port()), "--allow", "MODALITY"]
    assert main(node) == 2
    assert NO_COPY in capsys.readouterr().err
    # A typo in the file is named with its key and the choices, at start.
    site.write_text('precision = "int4"\n')
    assert main([*node, "--data", str(tmp_path / "data")]) == 2
    assert 'precision = "int4": expected one of "float32", "int8"' in capsys.readouterr().err
    # And on the command line.
    assert main([*node, "--precision", "fp16"]) == 2
    assert "'fp16' is not a precision; choose from float32, int8" in capsys.readouterr().err


def test_service_settings_take_only_known_precisions(tmp_path: Path) -> None:
    from fracsight.service.settings import ServiceSettings

    assert ServiceSettings(data_dir=tmp_path).precision is None  # the default: float32
    assert ServiceSettings(data_dir=tmp_path, precision="int8").precision == "int8"
    with pytest.raises(ValueError, match="precision 'int16': use one of float32, int8"):
        ServiceSettings(data_dir=tmp_path, precision="int16")


def test_the_float_model_stays_the_default(tmp_path: Path) -> None:
    """Without --precision the node runs the float model, whatever lies beside it."""
    pytest.importorskip("fastapi")
    from fracsight.service.server import Service
    from fracsight.service.settings import ServiceSettings

    service = Service(ServiceSettings(data_dir=tmp_path / "data", port=0, token="t" * 24))
    try:
        assert service.analyser.model_id == ModelCard.for_model().model_id
        assert not service.analyser.model_id.endswith("-int8")
    finally:
        service.analyser.close()


@pytest.mark.slow
def test_the_node_and_the_web_service_run_the_8bit_copy_and_say_so(
    int8_model: Path, tmp_path: Path, pacs
) -> None:
    """One service with both fronts at --precision int8: an image received over DICOM and one
    uploaded are analysed by the 8-bit model, and the record, the Secondary Capture, the SR and the
    predictions export all carry its model id (the float id + "-int8")."""
    pytest.importorskip("pynetdicom")
    pytest.importorskip("highdicom")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from dicom_checks import sr_items
    from dicom_peers import SAMPLE_DX, renamed, send, wait_until

    from fracsight.service.dicom_results import SC_CLASS, SR_CLASS
    from fracsight.service.server import Service
    from fracsight.service.settings import Destination, DicomSettings, Peer, ServiceSettings

    int8_id = ModelCard.read(card_path(int8_model.with_name("default.int8.onnx"))).model_id
    assert int8_id == ModelCard.for_model(int8_model).model_id + "-int8"
    token = "t" * 24
    dicom = DicomSettings(
        port=0, allow=(Peer("MODALITY"),), forward=Destination("PACS", "127.0.0.1", pacs.port),
        study_quiet_s=1.0, batch_idle_s=1.0,
    )  # fmt: skip
    settings = ServiceSettings(
        data_dir=tmp_path / "data", port=0, token=token, dicom=dicom, model=int8_model, precision="int8"
    )
    service = Service(settings)
    assert service.analyser.model_path.name == "default.int8.onnx"
    service.start()
    try:
        ds = renamed(SAMPLE_DX)
        assert send(service.dicom.port, [ds]) == [0x0000]
        auth = {"Authorization": f"Bearer {token}"}
        upload = (Path(__file__).resolve().parents[1] / "src/fracsight/samples/IMG0002472.jpg").read_bytes()
        posted = httpx.post(f"{service.url}/api/images", headers=auth,
                            files={"file": ("IMG0002472.jpg", upload, "image/jpeg")})  # fmt: skip
        assert posted.status_code == 202, posted.text
        wait_until(lambda: len(pacs.of_class(SR_CLASS)) >= 1 and len(pacs.of_class(SC_CLASS)) >= 1, 120,
                   "the node's results at the PACS")  # fmt: skip
        record = service.store.find_instance(ds.SOPInstanceUID)
        assert record.status == "done" and record.model_id == int8_id
        assert record.result["model"]["id"] == int8_id
        (sc,) = [d for d in pacs.of_class(SC_CLASS) if d.StudyInstanceUID == ds.StudyInstanceUID]
        assert sc.ManufacturerModelName == int8_id
        sr = [d for d in pacs.of_class(SR_CLASS) if d.StudyInstanceUID == ds.StudyInstanceUID][-1]
        assert sr.ManufacturerModelName == int8_id
        names = [i.TextValue for i in sr_items(sr) if "TextValue" in i and
                 i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Name"]  # fmt: skip
        assert names and set(names) == {int8_id}

        def exported() -> list[dict] | None:
            text = httpx.get(f"{service.url}/api/predictions.csv", headers=auth).text
            rows = list(csv.DictReader(io.StringIO(text)))
            return rows if len(rows) == 2 else None

        wait_until(exported, 60, "both images analysed")
        assert {r["model"] for r in exported()} == {int8_id}
    finally:
        service.stop()


@pytest.mark.slow
def test_the_8bit_copy_answers_the_bundled_dx_close_to_the_float_model(int8_model: Path) -> None:
    """What the node runs at int8 is the quantised model, not the float one under another name:
    its answer differs from the float model's in the last digits, and stays close to it."""
    from fracsight.inference import Analyser
    from fracsight.model_card import DEFAULT_MODEL

    answers = {}
    for precision in ("float32", "int8"):
        analyser = Analyser(int8_model, precision=precision, batch_size=1)
        try:
            answers[precision] = analyser.outcome(DEFAULT_MODEL.parent.parent / "samples" / "hd_dx_image.dcm")
        finally:
            analyser.close()
    assert answers["int8"].model_id.endswith("-int8") and not answers["float32"].model_id.endswith("-int8")
    assert answers["int8"].probability != answers["float32"].probability
    assert abs(answers["int8"].probability - answers["float32"].probability) < 0.2
