"""``/health`` and Prometheus-format ``/metrics``: what a site's monitoring asks of a running node.

Both read the store (never patient data: counts, reason codes, seconds and bytes). Health is a
problem (HTTP 503) when a result could not be made (``results = 'failed'``), a destination refused
a result, the analysis worker stopped, or the data folder's disk is below the warning level;
monitoring then looks at the worklist or the log. With the web front both are routes of the web
app (:func:`add_routes`); a node alone serves them from :class:`HealthServer`, a small
standard-library HTTP listener on loopback by default.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fracsight.service.settings import ServiceSettings
from fracsight.service.store import STUDY_SOURCE, SqliteStore

log = logging.getLogger(__name__)

# Receipt-to-delivery latency buckets, seconds (a result normally reaches the PACS in seconds;
# a PACS down for the night shows in the last ones).
LATENCY_BUCKETS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_DISK_USE_CACHE_S = 30.0  # the data folder is walked at most this often


@dataclass
class Snapshot:
    """The numbers of one scrape."""

    queue: dict[str, int]
    sends: dict[str, int]
    refusals: dict[str, int]
    results_failed: int
    latencies_s: list[float]
    disk_used_bytes: int
    disk_free_bytes: int
    disk_warning_bytes: int
    disk_floor_bytes: int
    worker_alive: bool
    purged: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def undelivered(self) -> int:
        return self.sends.get("pending", 0) + self.sends.get("sending", 0) + self.sends.get("rejected", 0)


class _DiskUse:
    """Bytes under the data folder, walked at most every ``_DISK_USE_CACHE_S`` seconds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._at = -1e9
        self._bytes = 0

    def __call__(self, root: Path) -> int:
        with self._lock:
            if time.monotonic() - self._at > _DISK_USE_CACHE_S:
                total = 0
                for folder, _dirs, files in os.walk(root):
                    for name in files:
                        try:
                            total += os.lstat(os.path.join(folder, name)).st_size
                        except OSError:  # removed while walking
                            pass
                self._bytes, self._at = total, time.monotonic()
            return self._bytes


class Monitor:
    """Takes :class:`Snapshot` s of a store for ``/health`` and ``/metrics``."""

    def __init__(
        self,
        store: SqliteStore,
        settings: ServiceSettings,
        worker_alive: Callable[[], bool] = lambda: True,
        purged: Callable[[], int] = lambda: 0,
    ) -> None:
        self.store = store
        self.settings = settings
        self.worker_alive = worker_alive
        self.purged = purged
        self._disk_use = _DiskUse()

    def snapshot(self) -> Snapshot:
        db = self.store._connection()
        refusals = {
            str(r["code"] or "unknown"): r["n"]
            for r in db.execute(
                "SELECT json_extract(result, '$.error_code') AS code, COUNT(*) AS n FROM images "
                f"WHERE status = 'refused' AND source != '{STUDY_SOURCE}' GROUP BY code"
            )
        }
        failed = db.execute("SELECT COUNT(*) FROM images WHERE results = 'failed'").fetchone()[0]
        latencies = [
            max(0.0, float(r[0]))
            for r in db.execute(
                "SELECT (julianday(s.sent_at) - julianday(i.received_at)) * 86400.0 FROM sends s "
                "JOIN images i ON i.id = s.image_id WHERE s.status = 'sent' AND s.sent_at IS NOT NULL"
            )
            if r[0] is not None
        ]
        dicom = self.settings.dicom
        snap = Snapshot(
            queue=self.store.counts(),
            sends=self.store.send_counts(),
            refusals=refusals,
            results_failed=int(failed),
            latencies_s=latencies,
            disk_used_bytes=self._disk_use(self.store.data_dir),
            disk_free_bytes=shutil.disk_usage(self.store.data_dir).free,
            disk_warning_bytes=self.settings.disk_warning_bytes,
            disk_floor_bytes=dicom.min_free_bytes if dicom is not None else 0,
            worker_alive=self.worker_alive(),
            purged=self.purged(),
        )
        snap.problems = problems(snap)
        return snap

    def health(self) -> tuple[int, dict]:
        """(HTTP status, body): 200 and "ok", or 503 and "problem" with what is wrong."""
        snap = self.snapshot()
        body = {
            "status": "problem" if snap.problems else "ok",
            "problems": snap.problems,
            "worker": "running" if snap.worker_alive else "stopped",
            "queue": snap.queue,
            "sends": snap.sends,
            "results_failed": snap.results_failed,
            "disk": {
                "free_bytes": snap.disk_free_bytes,
                "used_bytes": snap.disk_used_bytes,
                "warning_bytes": snap.disk_warning_bytes,
                "floor_bytes": snap.disk_floor_bytes,
            },
        }
        return (503 if snap.problems else 200), body

    def metrics(self) -> str:
        return prometheus_text(self.snapshot())


def problems(snap: Snapshot) -> list[str]:
    """What monitoring should hear about, in words without patient data."""
    found = []
    if not snap.worker_alive:
        found.append("the analysis worker has stopped")
    if snap.results_failed:
        found.append(f"{snap.results_failed} image(s) whose results could not be made (see --resend)")
    if snap.sends.get("rejected", 0):
        found.append(f"{snap.sends['rejected']} result(s) refused by the destination (see --resend)")
    if snap.disk_free_bytes < snap.disk_floor_bytes:
        found.append(
            f"disk below the floor: {snap.disk_free_bytes // 2**20} MB free, every instance is refused "
            f"under {snap.disk_floor_bytes // 2**20} MB"
        )
    elif snap.disk_free_bytes < snap.disk_floor_bytes + snap.disk_warning_bytes:
        found.append(
            f"disk nearly full: {snap.disk_free_bytes // 2**20} MB free; instances are refused under "
            f"{snap.disk_floor_bytes // 2**20} MB"
        )
    return found


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(snap: Snapshot) -> str:
    """The snapshot in Prometheus' text exposition format (version 0.0.4)."""
    out: list[str] = []

    def family(name: str, kind: str, text: str, samples: list[tuple[str, dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")
        for sample, labels, value in samples:
            tags = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{sample}{{{tags}}} {_number(value)}" if tags else f"{sample} {_number(value)}")

    family(
        "fracsight_queue_images", "gauge", "Images by analysis state.",
        [("fracsight_queue_images", {"state": s}, n) for s, n in snap.queue.items()],
    )  # fmt: skip
    family(
        "fracsight_queue_depth", "gauge", "Images waiting for or in analysis.",
        [("fracsight_queue_depth", {}, snap.queue.get("queued", 0) + snap.queue.get("analysing", 0))],
    )  # fmt: skip
    family(
        "fracsight_sends", "gauge", "Result objects for the PACS by delivery state.",
        [("fracsight_sends", {"state": s}, n) for s, n in snap.sends.items()],
    )  # fmt: skip
    family(
        "fracsight_undelivered_results", "gauge",
        "Result objects not yet delivered (pending, sending, rejected).",
        [("fracsight_undelivered_results", {}, snap.undelivered)],
    )  # fmt: skip
    family(
        "fracsight_results_failed", "gauge", "Analysed images whose result objects could not be made.",
        [("fracsight_results_failed", {}, snap.results_failed)],
    )  # fmt: skip
    family(
        "fracsight_refusals", "gauge", "Images refused analysis, by reason code.",
        [("fracsight_refusals", {"reason": r}, n) for r, n in sorted(snap.refusals.items())],
    )  # fmt: skip
    buckets = []
    for bound in LATENCY_BUCKETS:
        buckets.append(
            ("fracsight_delivery_latency_seconds_bucket", {"le": _number(bound)},
             sum(1 for v in snap.latencies_s if v <= bound))
        )  # fmt: skip
    buckets.append(("fracsight_delivery_latency_seconds_bucket", {"le": "+Inf"}, len(snap.latencies_s)))
    buckets.append(("fracsight_delivery_latency_seconds_sum", {}, sum(snap.latencies_s)))
    buckets.append(("fracsight_delivery_latency_seconds_count", {}, len(snap.latencies_s)))
    family(
        "fracsight_delivery_latency_seconds", "histogram",
        "Seconds from an image's receipt to the delivery of each of its result objects.", buckets,
    )  # fmt: skip
    family(
        "fracsight_disk_used_bytes", "gauge", "Bytes kept in the data folder.",
        [("fracsight_disk_used_bytes", {}, snap.disk_used_bytes)],
    )  # fmt: skip
    family(
        "fracsight_disk_free_bytes", "gauge", "Bytes free on the data folder's disk.",
        [("fracsight_disk_free_bytes", {}, snap.disk_free_bytes)],
    )  # fmt: skip
    family(
        "fracsight_disk_floor_bytes", "gauge", "Free bytes under which every received instance is refused.",
        [("fracsight_disk_floor_bytes", {}, snap.disk_floor_bytes)],
    )  # fmt: skip
    family(
        "fracsight_images_purged", "gauge", "Images whose original and display copy retention removed.",
        [("fracsight_images_purged", {}, snap.purged)],
    )  # fmt: skip
    family(
        "fracsight_healthy", "gauge", "1 when /health reports no problem.",
        [("fracsight_healthy", {}, 0 if snap.problems else 1)],
    )  # fmt: skip
    return "\n".join(out) + "\n"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def add_routes(app, monitor: Monitor) -> None:
    """``/health`` and ``/metrics`` on the web app (no token: neither carries patient data)."""
    from fastapi.responses import JSONResponse, PlainTextResponse

    def health() -> JSONResponse:
        code, body = monitor.health()
        return JSONResponse(body, code)

    def metrics() -> PlainTextResponse:
        return PlainTextResponse(monitor.metrics(), media_type=PROMETHEUS_CONTENT_TYPE)

    app.add_api_route("/health", health, methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", metrics, methods=["GET"], include_in_schema=False)


class HealthServer:
    """``/health`` and ``/metrics`` for a node without the web front, in a thread."""

    def __init__(self, monitor: Monitor, host: str, port: int) -> None:
        self.monitor = monitor
        self._server = ThreadingHTTPServer((host, port), _handler(monitor))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fracsight-health", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)


def _handler(monitor: Monitor) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "fracsight"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            try:
                if self.path == "/health":
                    code, body = monitor.health()
                    self._reply(code, "application/json", json.dumps(body).encode())
                elif self.path == "/metrics":
                    self._reply(200, PROMETHEUS_CONTENT_TYPE, monitor.metrics().encode())
                else:
                    self._reply(404, "text/plain", b"not found\n")
            except Exception as exc:  # noqa: BLE001 - monitoring must see a failure, not a hang
                log.error("a health or metrics request failed (%s)", type(exc).__name__)
                self._reply(500, "text/plain", b"internal error\n")

        def _reply(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet: monitoring polls often
            pass

    return Handler
