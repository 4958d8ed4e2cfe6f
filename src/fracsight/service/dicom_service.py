"""``fracsight dicom-node`` as one object: store, analysis worker and DICOM node, started and
stopped together (no web side; ``fracsight serve --dicom-port`` runs the same node beside it)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from fracsight.inference import Analyser
from fracsight.service.dicom_node import DicomNode
from fracsight.service.settings import DicomSettings
from fracsight.service.store import SqliteStore
from fracsight.service.worker import AnalysisWorker

log = logging.getLogger(__name__)


class DicomService:
    """The node of ``settings`` over the store in ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        settings: DicomSettings,
        model: Path | None = None,
        analysis_threads: int = 1,
        *,
        model_threads: int | None = None,
        decoder_processes: int | None = None,
    ) -> None:
        self.settings = settings
        self.store = SqliteStore(data_dir)
        self.analyser = Analyser(
            model,
            threads=analysis_threads,
            batch_size=1,
            model_threads=model_threads,
            decoder_processes=decoder_processes,
        )
        self.worker = AnalysisWorker(self.store, self.analyser)
        self.node = DicomNode(self.store, self.worker, self.analyser, settings)
        self._stopped = threading.Event()

    @property
    def port(self) -> int:
        return self.node.port

    def start(self) -> None:
        self.worker.start()
        self.node.start()

    def stop(self) -> None:
        self.node.stop()
        self.worker.stop()
        if hasattr(self.analyser, "close"):  # decoder processes, where the analyser has them
            self.analyser.close()
        self._stopped.set()

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM; the image in analysis is finished first."""
        self.start()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stopped.set())
        try:
            while not self._stopped.wait(1.0):
                pass
        finally:
            log.info("stopping: finishing the image in analysis")
            self.stop()
