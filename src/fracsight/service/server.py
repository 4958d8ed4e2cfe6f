"""One running service: store, analysis worker and HTTP server, started and stopped together.

``fracsight serve`` runs :meth:`Service.run` in the foreground; tests and other programs use
:meth:`Service.start` / :meth:`Service.stop`, which run the same server in a thread. With
``settings.dicom`` the DICOM node runs beside it over the same store and worker, so what it
receives appears in the same worklist.
"""

from __future__ import annotations

import logging
import threading
import time

from fracsight.inference import Analyser
from fracsight.service.auth import load_token
from fracsight.service.settings import ServiceSettings
from fracsight.service.store import SqliteStore
from fracsight.service.web import create_app
from fracsight.service.worker import AnalysisWorker

log = logging.getLogger(__name__)


class Service:
    """The service of :class:`ServiceSettings`; the token is loaded (or made) on construction."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.store = SqliteStore(settings.data_dir)
        self.token, self.token_created = load_token(settings.data_dir, settings.token)
        self.analyser = Analyser(settings.model, threads=settings.analysis_threads, batch_size=1)
        self.worker = AnalysisWorker(self.store, self.analyser)
        self.dicom = None
        if settings.dicom is not None:
            from fracsight.service.dicom_node import DicomNode

            self.dicom = DicomNode(self.store, self.worker, self.analyser, settings.dicom)
        self.app = create_app(self.store, self.worker, self.token, settings.max_upload_bytes)
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{self.settings.scheme}://{self.settings.host}:{self.port}"

    @property
    def port(self) -> int:
        """The port listened on (the one the OS chose when the settings said 0)."""
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

    def _start_dicom(self) -> None:
        if self.dicom is not None:
            self.dicom.start()

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C, SIGTERM); the image in analysis is finished first."""
        self.worker.start()
        self._start_dicom()
        self._server = self._uvicorn()
        try:
            self._server.run()
        finally:
            if self.dicom is not None:
                self.dicom.stop()
            self.worker.stop()

    def start(self, timeout: float = 30.0) -> None:
        """Serve in a background thread; returns once the server accepts connections."""
        self.worker.start()
        self._start_dicom()
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
        if self.dicom is not None:
            self.dicom.stop()
        self.worker.stop()
        self.analyser.close() if hasattr(self.analyser, "close") else None
