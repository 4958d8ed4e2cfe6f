"""A stopped service loses nothing: stopped (or killed) with work queued, then started again, every
accepted image ends with exactly one result."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

TOKEN = "restart-test-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "FRACSIGHT_API_TOKEN": TOKEN}
    process = subprocess.Popen(
        [sys.executable, "-m", "fracsight", "serve", "--data", str(data), "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"service did not start: {process.stderr.read()}")


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_restart_finishes_every_accepted_image_once(tmp_path: Path, sample_images: list[Path], how) -> None:
    data, port = tmp_path / "data", _free_port()
    base = f"http://127.0.0.1:{port}"
    service = _start(data, port)
    accepted = []
    try:
        files = [p.read_bytes() for p in sample_images if p.suffix == ".jpg"]
        for i in range(30):
            r = httpx.post(
                f"{base}/api/images", files={"file": (f"{i}.jpg", files[i % len(files)])}, headers=HEADERS
            )
            assert r.status_code == 202
            accepted.append(r.json()["id"])
        queue = httpx.get(f"{base}/api/health").json()["queue"]
        assert queue["queued"] + queue["analysing"] > 0, "the test must stop the service with work queued"
    finally:
        service.send_signal(how)
        service.wait(30)
    service = _start(data, port)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            queue = httpx.get(f"{base}/api/health").json()["queue"]
            if queue["queued"] == queue["analysing"] == 0:
                break
            time.sleep(0.2)
        statuses = {
            i: httpx.get(f"{base}/api/images/{i}", headers=HEADERS).json()["status"] for i in accepted
        }
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(30)
    assert set(statuses.values()) == {"done"}, statuses
    with sqlite3.connect(data / "fracsight.db") as db:
        analyses = dict(db.execute("SELECT id, analyses FROM images").fetchall())
    assert sorted(analyses) == sorted(accepted)
    assert set(analyses.values()) == {1}, "an image was analysed twice or never"
