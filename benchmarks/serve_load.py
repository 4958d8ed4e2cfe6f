"""Load on `fracsight serve` over loopback: N clients upload and poll for a fixed time; prints a table.

    python benchmarks/serve_load.py [--clients 4] [--seconds 30]

The service runs as its own process (as in production), on a fresh data folder, with the
shipped model. Each client uploads a bundled sample radiograph, polls until its result is
ready, and starts again. Reported: images per second, latency percentiles from sending the
upload to its acknowledgement (202) and to its result, and whether every accepted upload got
exactly one result once the clients stop and the queue drains.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "src" / "fracsight" / "samples"
TOKEN = "load-test-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "fracsight", "serve", "--data", str(data), "--port", str(port)],
        env={**os.environ, "FRACSIGHT_API_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the service did not start")


def _client(base: str, files: list[bytes], stop: float, acks: list, results: list, accepted: list) -> None:
    with httpx.Client(base_url=base, headers=HEADERS, timeout=60) as http:
        i = 0
        while time.monotonic() < stop:
            data = files[i % len(files)]
            i += 1
            sent = time.perf_counter()
            r = http.post("/api/images", files={"file": ("x.jpg", data)})
            acked = time.perf_counter()
            if r.status_code != 202:
                continue
            image_id = r.json()["id"]
            accepted.append(image_id)
            acks.append(acked - sent)
            while True:
                status = http.get(f"/api/images/{image_id}").json()["status"]
                if status not in ("queued", "analysing"):
                    results.append(time.perf_counter() - sent)
                    break
                time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    files = [p.read_bytes() for p in sorted(SAMPLES.glob("*.jpg"))]
    with tempfile.TemporaryDirectory() as folder:
        data, port = Path(folder) / "data", _free_port()
        base = f"http://127.0.0.1:{port}"
        service = _start(data, port)
        try:
            acks: list[float] = []
            results: list[float] = []
            accepted: list[str] = []
            started = time.monotonic()
            stop = started + args.seconds
            threads = [
                threading.Thread(target=_client, args=(base, files, stop, acks, results, accepted))
                for _ in range(args.clients)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.monotonic() - started
        finally:
            service.terminate()
            service.wait(60)
        with sqlite3.connect(data / "fracsight.db") as db:
            rows = dict(db.execute("SELECT id, analyses FROM images").fetchall())
    once = sum(1 for i in accepted if rows.get(i) == 1)
    print(f"# fracsight serve under load: {platform.machine()}, {os.cpu_count()} cores, "
          f"{args.clients} clients, {args.seconds:.0f} s, typical FracAtlas JPEGs, loopback")  # fmt: skip
    print("| measure | value |")
    print("|---|---|")
    print(f"| images analysed per second | {len(results) / elapsed:.1f} |")
    for name, values in (("upload acknowledged (202)", acks), ("result ready", results)):
        p50, p95, p99 = np.percentile(np.array(values) * 1e3, [50, 95, 99])
        print(f"| {name}: median / p95 / p99 ms | {p50:.0f} / {p95:.0f} / {p99:.0f} |")
    print(f"| accepted uploads with exactly one result | {once} of {len(accepted)} |")


if __name__ == "__main__":
    main()
