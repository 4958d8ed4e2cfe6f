"""One running service: store, analyser and analysis worker, with a web front, a DICOM front or
both, started and stopped together.

:class:`Service` is the one builder: ``fracsight serve`` gives it the web front (and the DICOM
node too with ``--dicom-port``), ``fracsight dicom-node`` the DICOM node alone
(``ServiceSettings.web`` False). Either way the store, the analyser and the worker are wired once
here, and what the node receives appears in the same worklist. :meth:`Service.run` serves in the
foreground until SIGINT or SIGTERM; tests and other programs use :meth:`Service.start` /
:meth:`Service.stop`, which run the same fronts in threads.
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from fracsight.inference import Analyser
from fracsight.service.settings import ServiceSettings
from fracsight.service.store import SqliteStore
from fracsight.service.worker import AnalysisWorker

log = logging.getLogger(__name__)


class Service:
    """The service of :class:`ServiceSettings`. With the web front the token is loaded (or made) on
    construction; without it no token is read or made (a DICOM node has no API)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        # The model first: a model that cannot run (int8 without its 8-bit copy or card) stops the
        # start before anything is written to the data folder.
        self.analyser = Analyser(
            settings.model,
            threads=settings.analysis_threads,
            batch_size=1,
            model_threads=settings.model_threads,
            decoder_processes=settings.decoder_processes,
            precision=settings.precision,
        )
        self.store = SqliteStore(settings.data_dir)
        self.worker = AnalysisWorker(self.store, self.analyser)
        self.dicom = None
        if settings.dicom is not None:
            from fracsight.service.dicom_node import DicomNode

            self.dicom = DicomNode(self.store, self.worker, self.analyser, settings.dicom)
        self.token: str | None = None
        self.token_created = False
        self.app = None
        if settings.web:
            from fracsight.service.auth import load_token
            from fracsight.service.web import create_app

            self.token, self.token_created = load_token(settings.data_dir, settings.token)
            self.app = create_app(self.store, self.worker, self.token, settings.max_upload_bytes)
            self.app.state.forward_results = settings.dicom is not None and settings.dicom.forward is not None
        # Operations: retention and the disk watch; /health and /metrics on the web app, or on a
        # listener of their own for a node alone (settings.health_port).
        from fracsight.service.metrics import HealthServer, Monitor, add_routes
        from fracsight.service.retention import Retention

        self.retention = Retention(self.store, settings)
        self.monitor = Monitor(
            self.store, settings, worker_alive=lambda: self.worker.alive, purged=self.retention.purged_count
        )
        self.health: HealthServer | None = None
        if self.app is not None:
            add_routes(self.app, self.monitor)
        elif settings.health_port is not None:
            self.health = HealthServer(self.monitor, settings.health_host, settings.health_port)
        self._server = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"{self.settings.scheme}://{self.settings.host}:{self.port}"

    @property
    def port(self) -> int:
        """The web front's port (the one the OS chose when the settings said 0)."""
        if self._server is not None and self._server.servers:
            return self._server.servers[0].sockets[0].getsockname()[1]
        return self.settings.port

    def _uvicorn(self):
        import uvicorn

        from fracsight.service.timeouts import guarded_h11

        s = self.settings
        config = uvicorn.Config(
            self.app,
            host=self.settings.host,
            port=self.settings.port,
            access_log=False,  # the app logs each request by route, without ids or UIDs
            log_config=None,
            timeout_graceful_shutdown=10,
            http=guarded_h11(s.http_head_timeout_s, s.http_body_idle_s),  # half-open connections dropped
            timeout_keep_alive=s.http_keep_alive_s,
            limit_concurrency=s.http_max_connections,
            ssl_certfile=str(self.settings.tls_cert) if self.settings.tls_cert else None,
            ssl_keyfile=str(self.settings.tls_key) if self.settings.tls_key else None,
        )
        return uvicorn.Server(config)

    def _start_back(self) -> None:
        """What every front stands on: the worker, retention, the DICOM node, the health listener."""
        self.worker.start()
        self.retention.start()
        if self.dicom is not None:
            self.dicom.start()
        if self.health is not None:
            self.health.start()

    def _stop_back(self) -> None:
        if self.health is not None:
            self.health.stop()
        if self.dicom is not None:
            self.dicom.stop()
        self.retention.stop()
        self.worker.stop()
        self.analyser.close()  # the decoder processes

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C, SIGTERM); the image in analysis is finished first."""
        self._start_back()
        try:
            if self.app is not None:
                self._server = self._uvicorn()
                self._server.run()  # uvicorn takes SIGINT and SIGTERM itself
            else:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(sig, lambda *_: self._stopped.set())
                while not self._stopped.wait(1.0):
                    pass
        finally:
            log.info("stopping: finishing the image in analysis")
            self._stop_back()

    def start(self, timeout: float = 30.0) -> None:
        """Serve in background threads; returns once every front accepts connections."""
        self._start_back()
        if self.app is None:
            return
        self._server = self._uvicorn()
        self._server.config.install_signal_handlers = False  # not the main thread's to take
        self._thread = threading.Thread(target=self._server.run, name="fracsight-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the HTTP server did not start on {self.settings.host}:{self.settings.port}"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)
        self._stop_back()
        self._stopped.set()
