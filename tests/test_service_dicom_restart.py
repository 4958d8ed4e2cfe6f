"""The DICOM node killed (SIGKILL) ten times in a row with work queued, restarted each time: every
instance it acknowledged ends analysed exactly once, with one set of results delivered.

Half of the kills come after the modality's association ended (images queued), half while it is
still sending (some instances unacknowledged); like a PACS, the test sends the unacknowledged ones
again after the restart. Loopback only; the PACS is a pynetdicom SCP in this process.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from dicom_peers import DICOM, FakePacs, associate, renamed, send, wait_until  # noqa: E402

from fracsight.service.dicom_results import SR_CLASS  # noqa: E402

ROUNDS = 10
PER_ROUND = 5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data: Path, port: int, pacs_port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "fracsight", "dicom-node", "--data", str(data), "--port", str(port),
         "--allow", "MODALITY", "--forward", f"PACS@127.0.0.1:{pacs_port}", "--retry-max-s", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the node exited: {process.stderr.read()}")
        assoc = associate(port, "MODALITY")
        if assoc.is_established:
            assoc.release()
            return process
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the node did not start")


def _queued(data: Path) -> int:
    with sqlite3.connect(data / "fracsight.db", timeout=10) as db:
        return db.execute("SELECT COUNT(*) FROM images WHERE status IN ('queued', 'analysing')").fetchone()[0]


@pytest.mark.slow
def test_killed_ten_times_every_acknowledged_instance_is_analysed_once(
    tmp_path: Path, dicom_dir: Path
) -> None:
    data, port = tmp_path / "data", _free_port()
    pacs = FakePacs().start()
    acknowledged: dict[str, object] = {}
    unacknowledged: list = []
    queued_at_kill = []
    try:
        for round_ in range(ROUNDS):
            node = _start(data, port, pacs.port)
            batch = unacknowledged + [renamed(DICOM / "hd_dx_image.dcm") for _ in range(PER_ROUND)]
            unacknowledged = []
            statuses: list = []
            if round_ % 2:  # killed while the modality is still sending
                sender = threading.Thread(
                    target=lambda b=batch, out=statuses: out.extend(_send_quietly(port, b))
                )
                sender.start()
                time.sleep(0.15)
                queued_at_kill.append(_queued(data))
                os.kill(node.pid, signal.SIGKILL)
                sender.join(60)
            else:  # killed with the association over and the queue not worked off
                statuses = send(port, batch)
                queued_at_kill.append(_queued(data))
                os.kill(node.pid, signal.SIGKILL)
            node.wait(30)
            for ds, status in zip(batch, statuses + [None] * (len(batch) - len(statuses)), strict=True):
                if status == 0x0000:
                    acknowledged[ds.SOPInstanceUID] = ds
                else:
                    unacknowledged.append(ds)
        node = _start(data, port, pacs.port)
        try:
            for ds, status in zip(unacknowledged, send(port, unacknowledged), strict=True):
                assert status == 0x0000
                acknowledged[ds.SOPInstanceUID] = ds

            def all_delivered() -> bool:
                with sqlite3.connect(data / "fracsight.db", timeout=10) as db:
                    open_work = db.execute(
                        "SELECT (SELECT COUNT(*) FROM images WHERE status IN ('queued', 'analysing') "
                        "OR results = 'pending') + (SELECT COUNT(*) FROM sends WHERE status != 'sent')"
                    ).fetchone()[0]
                return open_work == 0

            wait_until(all_delivered, 180, "every image analysed and its results delivered")
        finally:
            node.send_signal(signal.SIGTERM)
            node.wait(60)
    finally:
        pacs.stop()
    assert sum(q > 0 for q in queued_at_kill) >= ROUNDS // 2, (
        f"kills should find work queued: {queued_at_kill}"
    )
    with sqlite3.connect(data / "fracsight.db") as db:
        rows = db.execute("SELECT sop_instance_uid, status, analyses, results FROM images").fetchall()
        sends = db.execute("SELECT image_id, kind, COUNT(*) FROM sends GROUP BY image_id, kind").fetchall()
    by_uid: dict[str, list] = {}
    for uid, status, analyses, results in rows:
        by_uid.setdefault(uid, []).append((status, analyses, results))
    assert set(by_uid) == set(acknowledged), "an acknowledged instance was lost, or one appeared from nowhere"
    assert all(v == [("done", 1, "made")] for v in by_uid.values()), {
        k: v for k, v in by_uid.items() if v != [("done", 1, "made")]
    }
    assert all(count == 1 for _, _, count in sends), "results made twice for an image"
    delivered = {d.SOPInstanceUID for d in pacs.of_class(SR_CLASS)}
    assert len(delivered) == len(acknowledged), "one SR per image at the PACS (resent copies share the UID)"


def _send_quietly(port: int, batch: list) -> list:
    """Statuses of the instances sent before the node died (the rest: None)."""
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    for ds in batch:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="FRACSIGHT")
    out: list = []
    if not assoc.is_established:
        return out
    for ds in batch:
        if not assoc.is_established:
            break
        status = assoc.send_c_store(ds)
        out.append(int(status.Status) if status and "Status" in status else None)
    if assoc.is_established:
        assoc.release()
    return out
