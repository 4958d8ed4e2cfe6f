"""Three separate CPU knobs: ONNX Runtime threads, decoder worker processes and read-ahead threads.
The old single option (``--threads`` for ``predict``, ``--analysis-threads`` for the services) is
the default of each one that is not given."""

from __future__ import annotations

from pathlib import Path

import pytest

from fracsight.cli import build_parser
from fracsight.cli.predict import analyser_for


def _knobs(analyser) -> tuple[int, int, int]:
    onnx = analyser.session.get_session_options().intra_op_num_threads
    assert onnx == analyser.model_threads
    return analyser.model_threads, analyser.decoders.workers, analyser.read_ahead


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--threads", "2"], (2, 2, 2)),
        (["--threads", "2", "--model-threads", "1"], (1, 2, 2)),
        (["--model-threads", "1", "--decoder-processes", "3", "--read-ahead-threads", "2"], (1, 3, 2)),
        (["--threads", "3", "--decoder-processes", "1"], (3, 1, 3)),
    ],
)
def test_predict_sets_each_knob_on_its_own(
    options: list[str], expected: tuple[int, int, int], sample_images: list[Path]
) -> None:
    args = build_parser().parse_args(["predict", str(sample_images[0]), *options])
    analyser = analyser_for(args)
    try:
        assert _knobs(analyser) == expected
    finally:
        analyser.close()


def test_read_ahead_is_the_number_of_threads_preparing(sample_images: list[Path]) -> None:
    """Outcomes stay in input order whatever the read-ahead, and equal those of one thread."""
    from fracsight.inference import Analyser

    one = Analyser(threads=1, batch_size=4)
    many = Analyser(model_threads=1, decoder_processes=2, read_ahead=3, batch_size=4)
    try:
        first = [o.to_record()["probability"] for o in one.outcomes(sample_images)]
        again = [o.to_record()["probability"] for o in many.outcomes(sample_images)]
        assert first == again
    finally:
        one.close()
        many.close()


@pytest.mark.parametrize("command", ["serve", "dicom-node"])
def test_the_services_take_model_threads_and_decoder_processes(command: str, tmp_path: Path) -> None:
    base = [command, "--data", str(tmp_path)]
    args = build_parser().parse_args([*base, "--analysis-threads", "2", "--decoder-processes", "3"])
    assert (args.analysis_threads, args.model_threads, args.decoder_processes) == (2, None, 3)
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--model-threads", "0"])


def test_service_settings_pass_the_knobs_to_the_analyser(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from fracsight.service.server import Service
    from fracsight.service.settings import ServiceSettings

    settings = ServiceSettings(
        data_dir=tmp_path, token="knobs-test-token-0123456789", analysis_threads=2, decoder_processes=1
    )
    service = Service(settings)
    try:
        assert _knobs(service.analyser)[:2] == (2, 1)
    finally:
        service.analyser.close()
    with pytest.raises(ValueError, match="model_threads 0"):
        ServiceSettings(data_dir=tmp_path, model_threads=0)
