"""The site configuration file (``--config``), the log lines and the systemd unit: what hospital IT
deploys and reads. Checked at start with the key, the value and the rule; flags win over the file."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

from fracsight.cli import build_parser
from fracsight.service import config
from fracsight.service.config import ConfigError
from fracsight.service.logs import configure_logging
from fracsight.service.settings import LogSettings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "deploy" / "fracsight.toml"
UNIT = ROOT / "deploy" / "fracsight-dicom-node.service"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_the_documented_example_is_valid_and_complete() -> None:
    values = config.load(EXAMPLE)
    assert values["dicom"]["aet"] == "FRACSIGHT"
    assert values["dicom"]["max_associations"] == 16
    assert values["retention"]["keep_images_days"] == 30.0
    # every key the loader knows appears in the example, set or commented out
    text = EXAMPLE.read_text()
    for section, rules in config.SCHEMA.items():
        if section:
            assert f"[{section}]" in text
        for key in rules:
            assert f"{key} =" in text, f"{section}.{key} is not documented in {EXAMPLE.name}"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[dicom]\nport = 70000\n", '[dicom] port = 70000: expected a whole number in 0..65535'),
        ("[dicom]\nprot = 104\n", "unknown key [dicom] prot"),
        ('[dicom]\naet = "A_TITLE_MUCH_TOO_LONG"\n', '[dicom] aet = "A_TITLE_MUCH_TOO_LONG": expected an AE'),
        ("[dicom]\nforward = \"PACS@host\"\n", '[dicom] forward = "PACS@host": expected "AET@HOST:PORT"'),
        ("[dicom]\nallow = \"MODALITY\"\n", '[dicom] allow = "MODALITY": expected a list'),
        ("[dicom]\ndimse_timeout_s = 0\n", "[dicom] dimse_timeout_s = 0: expected a number > 0"),
        ("[dicom]\nforward_tls = \"yes\"\n", '[dicom] forward_tls = "yes": expected true or false'),
        ("[logging]\nformat = \"xml\"\n", '[logging] format = "xml": expected one of "text", "json"'),
        ("[retention]\nkeep_images_days = -1\n", "[retention] keep_images_days = -1: expected a number > 0"),
        ("[retension]\nkeep_images_days = 1\n", "unknown section [retension]"),
        ("analysis_threads = 0\n", "analysis_threads = 0: expected a whole number >= 1"),
        ("dicom = 1\n", "unknown key dicom"),
        ("[dicom\nport = 1\n", "not valid TOML"),
    ],
)
def test_a_fault_is_named_with_its_key_value_and_rule(tmp_path: Path, text: str, words: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert words in str(caught.value)
    assert str(path) in str(caught.value)


def test_a_missing_file_is_said_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "absent.toml")


def test_relative_paths_are_taken_from_the_file_folder(tmp_path: Path) -> None:
    values = config.load(_write(tmp_path, 'data = "store"\n[logging]\nfile = "log/node.log"\n'))
    assert values[""]["data"] == tmp_path / "store"
    assert values["logging"]["file"] == tmp_path / "log" / "node.log"


SITE = """
data = "store"
analysis_threads = 2
[dicom]
port = 11200
aet = "SITE_AE"
allow = ["MODALITY", "PACS@127.0.0.1"]
forward = "PACS@127.0.0.1:4242"
acse_timeout_s = 5
dimse_timeout_s = 7.5
network_timeout_s = 9
max_associations = 3
min_free_mb = 10
[retention]
keep_images_days = 2
disk_warning_mb = 50
[logging]
format = "json"
[health]
port = 9199
"""


def test_dicom_node_takes_the_file_and_its_flags_win(tmp_path: Path) -> None:
    pytest.importorskip("pynetdicom")
    from fracsight.cli.dicom_node import data_folder, dicom_settings, log_settings, operations

    path = _write(tmp_path, SITE)
    args = build_parser().parse_args(
        ["dicom-node", "--config", str(path), "--port", "11300", "--aet", "FLAG_AE"]
    )
    settings = dicom_settings(args)
    assert settings.port == 11300 and settings.aet == "FLAG_AE"  # the flags
    assert [str(p) for p in settings.allow] == ["MODALITY", "PACS@127.0.0.1"]  # the file
    assert (settings.acse_timeout_s, settings.dimse_timeout_s, settings.network_timeout_s) == (5.0, 7.5, 9.0)
    assert settings.max_associations == 3 and settings.min_free_bytes == 10 * 2**20
    assert str(settings.forward) == "PACS@127.0.0.1:4242"
    assert data_folder(args) == tmp_path / "store" and args.analysis_threads == 2
    assert log_settings(args).format == "json"
    ops = operations(args)
    assert ops["retention_s"] == 2 * 86400 and ops["disk_warning_bytes"] == 50 * 2**20
    assert ops["health_port"] == 9199


def test_the_defaults_hold_without_a_file(tmp_path: Path) -> None:
    pytest.importorskip("pynetdicom")
    from fracsight.cli.dicom_node import dicom_settings, log_settings, operations

    args = build_parser().parse_args(["dicom-node", "--data", str(tmp_path), "--allow", "MODALITY"])
    settings = dicom_settings(args)
    assert (settings.port, settings.aet, settings.host) == (11112, "FRACSIGHT", "127.0.0.1")
    assert settings.max_associations == 16 and settings.dimse_timeout_s == 60.0
    assert operations(args)["retention_s"] is None and operations(args)["health_port"] is None
    assert log_settings(args) == LogSettings()


def test_serve_takes_the_web_and_dicom_sections(tmp_path: Path) -> None:
    pytest.importorskip("pynetdicom")
    from fracsight.cli.serve import service_settings

    path = _write(tmp_path, SITE + '[web]\nport = 8100\nmax_upload_mb = 20\n')
    args = build_parser().parse_args(["serve", "--config", str(path), "--max-upload-mb", "30"])
    settings = service_settings(args)
    assert settings.port == 8100 and settings.max_upload_bytes == 30 * 2**20
    assert settings.dicom is not None and settings.dicom.port == 11200 and settings.dicom.aet == "SITE_AE"
    assert settings.retention_s == 2 * 86400 and settings.health_port is None  # on the web app


def test_serve_without_data_says_where_to_give_it(tmp_path: Path) -> None:
    from fracsight.cli.serve import service_settings

    args = build_parser().parse_args(["serve"])
    with pytest.raises(ValueError, match="no data folder"):
        service_settings(args)


def test_a_bad_file_stops_the_command_with_one_line(tmp_path: Path, capsys) -> None:
    pytest.importorskip("pynetdicom")
    from fracsight.cli import main

    path = _write(tmp_path, "[dicom]\nmax_associations = 0\n")
    assert main(["dicom-node", "--config", str(path), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "[dicom] max_associations = 0: expected a whole number in 1..1000" in err
    assert "Traceback" not in err
    path = _write(tmp_path, "[dicom]\nmax_pdu_bytes = 1024\n")
    assert main(["dicom-node", "--config", str(path), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "[dicom] max_pdu_bytes = 1024: expected a whole number in 4096..16777216" in err


# -- log lines ---------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {n: logging.getLogger(n).level for n in ("pynetdicom", "pydicom", "highdicom", "py.warnings")}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)
    logging.captureWarnings(False)


def test_json_lines_carry_time_level_and_message(restore_logging) -> None:
    out = io.StringIO()
    configure_logging(LogSettings(format="json"), stream=out)
    log = logging.getLogger("fracsight.service.worker")
    log.info("an image %s in %.0f ms", "refused (not-a-radiograph)", 5)
    logging.getLogger("pynetdicom.acse").info("Association Accepted")  # pynetdicom's chatter: dropped
    logging.getLogger("pynetdicom.dsutils").debug("(0010,0010) PN [Doe^Jane]")
    logging.getLogger("pydicom").warning("Invalid value for VR DA: 'Doe^Jane'")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("The value 'Doe^Jane' is invalid", UserWarning, stacklevel=1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["level"] == "INFO" and entry["logger"] == "fracsight.service.worker"
    assert entry["message"] == "an image refused (not-a-radiograph) in 5 ms"
    assert entry["time"].endswith("+00:00") and entry["time"][:2] == "20"
    assert "Doe" not in out.getvalue()


def test_text_lines_start_with_a_timestamp_and_network_warnings_pass(restore_logging) -> None:
    out = io.StringIO()
    configure_logging(LogSettings(), stream=out)
    logging.getLogger("pynetdicom.assoc").warning("Association request failed: timed out")
    line = out.getvalue().strip()
    stamp, level, rest = line.split(" ", 2)
    assert stamp.endswith("+00:00") and "T" in stamp and level == "WARNING"
    assert rest == "pynetdicom.assoc: Association request failed: timed out"


def test_a_log_file_is_rotated(tmp_path: Path, restore_logging) -> None:
    path = tmp_path / "logs" / "node.log"
    handler = configure_logging(LogSettings(file=path, max_bytes=2048, backups=2))
    log = logging.getLogger("fracsight.test")
    for i in range(200):
        log.info("line %03d of a long enough message to fill the file quickly", i)
    handler.flush()
    assert path.exists() and (tmp_path / "logs" / "node.log.1").exists()
    assert not (tmp_path / "logs" / "node.log.3").exists()  # two backups kept
    assert path.stat().st_size <= 2048


# -- the systemd unit --------------------------------------------------------------------


def _unit_options(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_unit_runs_unprivileged_and_hardened() -> None:
    options = _unit_options(UNIT.read_text())
    assert options["User"] == ["fracsight"] and options["NoNewPrivileges"] == ["yes"]
    assert options["ProtectSystem"] == ["strict"] and options["PrivateTmp"] == ["yes"]
    assert options["ReadWritePaths"] == ["/var/lib/fracsight"]
    assert options["UMask"] == ["0077"]
    assert "--config /etc/fracsight/fracsight.toml" in options["ExecStart"][0]
    assert config.load(EXAMPLE)[""]["data"] == Path("/var/lib/fracsight")  # the folder it may write


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (Debian systemd)")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at one that does, all else unchanged
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/fracsight/.venv/bin/fracsight", shutil.which("true")))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr
