"""The DICOM node as hospital IT runs it: the called AE title checked, timeouts and the association
limit where pynetdicom uses them, ``/health`` and Prometheus ``/metrics`` read from a real node's
store (parsed with prometheus_client's text-format parser), retention with an injected clock, and
the store owner-only. A real node (pynetdicom SCP, SQLite store, the shipped model) between a
pynetdicom modality and a pynetdicom PACS, on loopback."""

from __future__ import annotations

import json
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from dicom_peers import DICOM, FakePacs, Node, renamed, send, wait_until  # noqa: E402

from fracsight.service.metrics import HealthServer, Monitor, prometheus_text  # noqa: E402
from fracsight.service.retention import Retention  # noqa: E402
from fracsight.service.settings import ServiceSettings  # noqa: E402
from fracsight.service.worker import display_path  # noqa: E402

RADIOGRAPH = "hd_dx_image.dcm"
CT = "pyd_CT_small.dcm"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, default_analyser, pacs: FakePacs, dicom_dir: Path):
    running = Node(
        tmp_path_factory.mktemp("node"),
        default_analyser,
        pacs,
        acse_timeout_s=7.0,
        dimse_timeout_s=8.0,
        network_timeout_s=9.0,
        max_associations=3,
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def delivered(node: Node) -> list[str]:
    """A radiograph and a CT (refused analysis) sent, analysed, their results delivered."""
    sent = [renamed(DICOM / RADIOGRAPH), renamed(DICOM / CT)]
    assert send(node.port, sent) == [0, 0]
    uids = [str(ds.SOPInstanceUID) for ds in sent]
    node.wait_finished(uids)

    def all_sent() -> bool:
        counts = node.store.send_counts()
        return counts["sent"] > 0 and counts["pending"] + counts["sending"] == 0

    wait_until(all_sent, 60, "results delivered")
    return uids


def _settings(node: Node, **options) -> ServiceSettings:
    return ServiceSettings(data_dir=node.store.data_dir, web=False, dicom=node.settings, **options)


def _families(text: str) -> dict:
    # the test extra installs it (pyproject.toml); a venv made before it was added skips
    parser = pytest.importorskip("prometheus_client.parser", reason="needs prometheus-client (test extra)")
    text_string_to_metric_families = parser.text_string_to_metric_families

    return {family.name: family for family in text_string_to_metric_families(text)}


def _value(families: dict, name: str, **labels: str) -> float:
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(f"{name} {labels}")


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read(), reply.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


# -- associations ------------------------------------------------------------------------


def test_another_called_ae_title_is_rejected_with_the_standard_reason(node: Node) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NOT_FRACSIGHT")
    assert assoc.is_rejected
    answer = assoc.acceptor.primitive
    # rejected-permanent (1) by the service user (1): called AE title not recognised (7), PS3.8 7.1.1.9
    assert (answer.result, answer.result_source, answer.diagnostic) == (0x01, 0x01, 0x07)
    accepted = ae.associate("127.0.0.1", node.port, ae_title="FRACSIGHT")
    assert accepted.is_established
    accepted.release()


def test_timeouts_and_the_association_limit_reach_pynetdicom(node: Node) -> None:
    ae = node.node.scp.ae
    assert (ae.acse_timeout, ae.dimse_timeout, ae.network_timeout) == (7.0, 8.0, 9.0)
    assert ae.maximum_associations == 3


# -- health and metrics ------------------------------------------------------------------


def test_metrics_parse_and_count_what_the_node_did(node: Node, delivered: list[str]) -> None:
    monitor = Monitor(node.store, _settings(node, disk_warning_bytes=0))
    families = _families(monitor.metrics())
    assert families["fracsight_delivery_latency_seconds"].type == "histogram"
    sent = node.store.send_counts()["sent"]
    assert _value(families, "fracsight_delivery_latency_seconds_count") == sent
    assert _value(families, "fracsight_delivery_latency_seconds_bucket", le="+Inf") == sent
    assert 0 < _value(families, "fracsight_delivery_latency_seconds_sum") < 600 * sent
    assert _value(families, "fracsight_queue_depth") == 0
    assert _value(families, "fracsight_undelivered_results") == 0
    assert _value(families, "fracsight_results_failed") == 0
    refused = node.record(delivered[1])
    code = json.loads(node.store._connection().execute(
        "SELECT result FROM images WHERE id = ?", (refused.id,)).fetchone()[0])["error_code"]  # fmt: skip
    assert _value(families, "fracsight_refusals", reason=code) == 1
    assert _value(families, "fracsight_disk_free_bytes") > 0
    assert _value(families, "fracsight_disk_used_bytes") > (DICOM / RADIOGRAPH).stat().st_size
    assert _value(families, "fracsight_healthy") == 1
    text = monitor.metrics()
    for uid in delivered:  # no image ids, no UIDs
        assert uid not in text and node.record(uid).id not in text


def test_the_health_listener_serves_both_and_reports_failed_results(node: Node, delivered: list[str]) -> None:
    monitor = Monitor(node.store, _settings(node, disk_warning_bytes=0))
    server = HealthServer(monitor, "127.0.0.1", 0)
    server.start()
    image = node.record(delivered[0]).id
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body, _ = _get(base + "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body, kind = _get(base + "/metrics")
        assert status == 200 and kind.startswith("text/plain; version=0.0.4")
        assert "fracsight_queue_depth" in _families(body.decode())
        assert _get(base + "/nothing")[0] == 404
        # a result that could not be made is a problem monitoring must see
        with node.store._transaction() as db:
            db.execute("UPDATE images SET results = 'failed', results_error = 'test' WHERE id = ?", (image,))
        status, body, _ = _get(base + "/health")
        health = json.loads(body)
        assert status == 503 and health["status"] == "problem" and health["results_failed"] == 1
        assert any("could not be made" in p for p in health["problems"])
        assert _value(_families(_get(base + "/metrics")[1].decode()), "fracsight_results_failed") == 1
    finally:
        with node.store._transaction() as db:
            db.execute("UPDATE images SET results = 'made', results_error = NULL WHERE id = ?", (image,))
        server.stop()


def test_serve_has_them_on_its_web_app(node: Node, delivered: list[str]) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fracsight.service.metrics import add_routes
    from fracsight.service.web import create_app

    app = create_app(node.store, None, "a-site-token-of-some-length", 2**20)
    add_routes(app, Monitor(node.store, _settings(node, disk_warning_bytes=0)))
    with TestClient(app) as client:  # no token: neither carries patient data
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert _value(_families(metrics.text), "fracsight_queue_depth") == 0


def test_the_disk_floor_is_reported_before_it_is_hit(node: Node, delivered: list[str], caplog) -> None:
    free = Monitor(node.store, _settings(node)).snapshot().disk_free_bytes
    # a warning level above what is free: reported, while instances are still taken
    settings = _settings(node, disk_warning_bytes=free + 2**30)
    code, body = Monitor(node.store, settings).health()
    assert code == 503 and any("disk nearly full" in p for p in body["problems"])
    retention = Retention(node.store, settings)
    with caplog.at_level("WARNING", logger="fracsight.service.retention"):
        assert retention.check_disk()
        assert retention.check_disk()  # said once, not at every pass
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "disk nearly full" in caplog.records[0].getMessage()


def test_metrics_escape_labels_and_parse_when_empty() -> None:
    from fracsight.service.metrics import Snapshot

    snap = Snapshot(
        queue={"queued": 0}, sends={}, refusals={'odd "code"\\': 2}, results_failed=0, latencies_s=[],
        disk_used_bytes=0, disk_free_bytes=1, disk_warning_bytes=0, disk_floor_bytes=0, worker_alive=True,
    )  # fmt: skip
    families = _families(prometheus_text(snap))
    assert _value(families, "fracsight_refusals", reason='odd "code"\\') == 2
    assert _value(families, "fracsight_delivery_latency_seconds_count") == 0


# -- retention ---------------------------------------------------------------------------


def test_retention_purges_originals_keeps_results_and_what_the_pacs_lacks(
    node: Node, pacs: FakePacs, delivered: list[str]
) -> None:
    # a study of two more radiographs, one of whose results the PACS has not yet received
    study = renamed(DICOM / RADIOGRAPH).StudyInstanceUID
    more = [renamed(DICOM / RADIOGRAPH, study=study), renamed(DICOM / RADIOGRAPH, study=study)]
    assert send(node.port, more) == [0, 0]
    uids = [str(ds.SOPInstanceUID) for ds in more]
    node.wait_finished(uids)
    wait_until(lambda: node.store.send_counts()["pending"] + node.store.send_counts()["sending"] == 0, 60)
    undelivered = node.record(uids[1])
    with node.store._transaction() as db:  # as if the PACS had not yet taken one of its results
        db.execute("UPDATE sends SET status = 'pending', next_try = ? WHERE id = (SELECT MIN(id) "
                   "FROM sends WHERE image_id = ?)", (time.time() + 3600, undelivered.id))  # fmt: skip
    records = [node.record(u) for u in [*delivered, *uids]]
    originals = {r.id: node.store.data_dir / r.file for r in records}
    assert all(p.exists() for p in originals.values())
    results = [node.store.data_dir / s.file for s in node.store.sends()]
    assert results and all(p.exists() for p in results)
    settings = _settings(node, retention_s=60.0)

    not_yet = Retention(node.store, settings, clock=lambda: time.time() + 30)  # within the minute
    assert not_yet.run_once() == 0 and all(p.exists() for p in originals.values())

    later = Retention(node.store, settings, clock=lambda: time.time() + 61)  # a minute on
    later.run_once()
    waiting = {node.record(u).id for u in uids}  # the whole study waits for its last result
    for record in records:
        kept = record.id in waiting
        assert originals[record.id].exists() == kept, record.status
        if record.status == "done":
            assert display_path(node.store, record.id).exists() == kept
    assert later.purged_count() == len(records) - 2
    # results, worklist entries and findings are kept
    assert all(p.exists() for p in results)
    assert all(node.store.get_image(r.id) is not None for r in records)
    assert node.store.get_image(records[0].id).probability is not None
    assert node.store.heatmap(records[0].id) is not None
    assert node.store.study(records[0].info.study_key) is not None
    families = _families(Monitor(node.store, settings, purged=later.purged_count).metrics())
    assert _value(families, "fracsight_images_purged") == len(records) - 2

    with node.store._transaction() as db:  # delivered at last: purged at the next pass
        db.execute("UPDATE sends SET status = 'sent', sent_at = ? WHERE image_id = ?",
                   (time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime()), undelivered.id))  # fmt: skip
    later.run_once()
    assert not any(originals[i].exists() for i in waiting)
    assert later.purged_count() == len(records)


def test_the_store_is_owner_only(node: Node) -> None:
    from fracsight.service.auth import owner_only

    owner_only(node.store.data_dir)
    root = node.store.data_dir
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in (root / "fracsight.db", *(root / "images").rglob("*")):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.relative_to(root)} is {oct(mode)}"


def test_a_refusal_is_logged_with_its_reason_code(node: Node, caplog) -> None:
    ct = renamed(DICOM / CT)
    with caplog.at_level("INFO", logger="fracsight.service.worker"):
        assert send(node.port, [ct]) == [0]
        (record,) = node.wait_finished([str(ct.SOPInstanceUID)])
    code = json.loads(node.store._connection().execute(
        "SELECT result FROM images WHERE id = ?", (record.id,)).fetchone()[0])["error_code"]  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if r.name == "fracsight.service.worker"]
    assert any(line.startswith(f"an image refused ({code}) in ") for line in lines), lines
    assert not any("analysed" in line for line in lines), lines
    assert not any(record.id in line or str(ct.SOPInstanceUID) in line for line in lines)


@pytest.mark.slow
def test_a_node_alone_serves_health_from_start_to_stop(tmp_path: Path) -> None:
    from fracsight.service.server import Service
    from fracsight.service.settings import DicomSettings, Peer

    service = Service(
        ServiceSettings(
            data_dir=tmp_path, web=False, dicom=DicomSettings(port=0, allow=(Peer("MODALITY"),)),
            health_port=0, retention_s=60.0,
        )
    )  # fmt: skip
    service.start()
    try:
        assert service.health is not None and service.retention.alive
        status, body, _ = _get(f"http://127.0.0.1:{service.health.port}/health")
        assert status in (200, 503) and json.loads(body)["worker"] == "running"
        status, body, _ = _get(f"http://127.0.0.1:{service.health.port}/metrics")
        assert status == 200 and _value(_families(body.decode()), "fracsight_queue_depth") == 0
        assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700  # the store owner-only from the start
    finally:
        service.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{service.health.port}/health", timeout=2)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_the_command_runs_from_a_site_file_with_json_logs_and_health(tmp_path: Path, dicom_dir: Path) -> None:
    """``fracsight dicom-node --config`` as systemd would start it: the file's settings, a flag that
    wins over it, JSON lines in a log file without patient data, /health and /metrics."""
    import os
    import signal
    import subprocess
    import sys

    from pynetdicom import AE

    port, health = _free_port(), _free_port()
    log_file = tmp_path / "log" / "node.log"
    site = tmp_path / "site.toml"
    site.write_text(
        f'data = "store"\n[dicom]\nport = {port}\naet = "SITE_NODE"\nallow = ["MODALITY"]\n'
        f'max_associations = 4\n[logging]\nformat = "text"\nfile = "log/node.log"\n'
        f'[health]\nport = {health}\n[retention]\nkeep_images_days = 30\n'
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "fracsight", "dicom-node", "--config", str(site), "--log-format", "json"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    secret = "Secretname^Patientsecret"
    try:
        base = f"http://127.0.0.1:{health}"

        def up() -> bool:
            assert process.poll() is None, process.stderr.read().decode(errors="replace")
            try:
                return _get(base + "/health")[0] == 200
            except urllib.error.URLError:
                return False

        wait_until(up, 90, "the node's /health")
        sent = [renamed(DICOM / RADIOGRAPH, PatientName=secret), renamed(DICOM / CT, PatientName=secret)]
        assert send(port, sent, called="SITE_NODE") == [0, 0]
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context("1.2.840.10008.1.1")
        assert ae.associate("127.0.0.1", port, ae_title="FRACSIGHT").is_rejected  # not its AE title

        def analysed() -> bool:
            families = _families(_get(base + "/metrics")[1].decode())
            return (
                _value(families, "fracsight_queue_images", state="done") == 1
                and sum(s.value for s in families["fracsight_refusals"].samples) == 1
            )

        wait_until(analysed, 90, "both images finished")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert process.returncode == 0, process.stderr.read().decode(errors="replace")
    lines = log_file.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line a JSON object
    assert all(e["time"].endswith("+00:00") and e["level"] and e["logger"] for e in entries)
    messages = [e["message"] for e in entries]
    assert any(m.startswith("an image refused (") for m in messages), messages
    assert any(m.startswith("an image analysed in ") for m in messages), messages
    assert any("called AE title 'FRACSIGHT' is not this node's" in m for m in messages), messages
    text = log_file.read_text()
    for ds in sent:
        assert str(ds.SOPInstanceUID) not in text and str(ds.StudyInstanceUID) not in text
    assert "Secretname" not in text and "Patientsecret" not in text
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o700
