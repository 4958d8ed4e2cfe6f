"""The results stage: for images received over DICOM, make the objects the PACS gets back and queue
them for sending, after analysis and without analysing again.

A thread that waits for groups the store says are ready (every image of a study that arrived in
one association is finished, and the association is over) and, for each analysed image in the
group, builds the Secondary Capture, the SR and (for fracture and doubt) the presentation state
(:mod:`fracsight.service.dicom_results`) from what the analysis stored: its result, its heat map
and the pixels the worker kept for the viewer (decoded again only when those are missing). Files
are on disk before one transaction marks the group's results made and queues the sends, so a
stop at any point either repeats the making (same UIDs, same files) or finds it done.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from fracsight._version import __version__
from fracsight.decide import Category
from fracsight.finding import Finding
from fracsight.io.durable import fsync_folder
from fracsight.model_card import ModelIdentity
from fracsight.preprocess import Letterbox
from fracsight.service.dicom_results import (
    Algorithm,
    ResultUIDs,
    StudyAnswer,
    build_results,
)
from fracsight.service.loop import QueueLoop
from fracsight.service.sends import NewSend
from fracsight.service.settings import DicomSettings
from fracsight.service.store import CATEGORY_RANK, ImageRecord, Store
from fracsight.service.worker import display_path, read_display

log = logging.getLogger(__name__)
RETRY_S = 10.0  # after the disk or the store failed


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ResultsStage(QueueLoop):
    """Makes and queues the results of DICOM images whose group is ready, in a thread."""

    name = "fracsight-results"

    def __init__(
        self,
        store: Store,
        analyser,
        settings: DicomSettings,
        on_queued: Callable[[], None] | None = None,
        clock: Callable[[], dt.datetime] = utc_now,
        poll_s: float = 1.0,
    ) -> None:
        if settings.forward is None:
            raise ValueError("the results stage needs a destination (--forward) to make results for")
        self.store = store
        self.analyser = analyser
        self.settings = settings
        self.destination = str(settings.forward)
        self.model = Algorithm.of(analyser.identity, __version__)
        self.on_queued = on_queued
        self.clock = clock
        super().__init__(poll_s, retry_s=RETRY_S)

    def run_once(self) -> int:
        """Make the results of every ready group; returns how many groups were handled."""
        groups = self.store.results_ready(self.settings.batch_idle_s)
        for study_key, batch in groups:
            if self.stopping:
                break
            self.make(study_key, batch)
        return len(groups)

    def make(self, study_key: str, batch: str) -> None:
        images = self.store.images_of_batch(study_key, batch)
        waiting = [i for i in images if i.results == "pending"]
        study = study_answer(self.store.images_of_study(study_key))
        made: list[str] = []
        none = [i.id for i in waiting if i.status in ("refused", "failed")]
        failed: list[str] = []
        sends: list[NewSend] = []
        folders: set[Path] = set()
        when = self.clock()
        for number, record in enumerate(images, start=1):
            if record.results != "pending" or record.status != "done":
                continue
            try:
                files = self._build(record, number, study, f"{study_key}/{batch}", when)
            except OSError:
                raise  # the disk, not the image: the group stays pending and is made again later
            except Exception as exc:  # noqa: BLE001 - one image's results failing must not stop the group
                log.error("results of an image could not be made (%s)", type(exc).__name__)
                failed.append(record.id)
                continue
            made.append(record.id)
            for kind, (relative, sop_class, sop_instance) in files.items():
                folders.add((self.store.data_dir / relative).parent)
                sends.append(NewSend(record.id, self.destination, kind, relative, sop_class, sop_instance))
        for folder in folders:
            fsync_folder(folder)
        self.store.record_results(made, none, sends, failed=failed)
        if made:
            log.info("results of %d image(s) queued for %s", len(made), self.destination)
            if self.on_queued is not None:
                self.on_queued()

    def _build(
        self, record: ImageRecord, number: int, study: StudyAnswer | None, group: str, when: dt.datetime
    ) -> dict[str, tuple[str, str, str]]:
        """Write the image's result objects; kind -> (file relative to the data folder, SOP class, UID)."""
        if record.model_id != self.model.name:
            raise ValueError(f"analysed by model {record.model_id}, the node runs {self.model.name}")
        path = self.store.data_dir / record.file
        try:
            source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            shown = display_path(self.store, record.id)
            pixels = read_display(shown) if shown.exists() else self.analyser.read(path).pixels
        except OSError as exc:  # the image's own files, gone or unreadable: not worth retrying
            raise ValueError(f"the image could not be read again ({type(exc).__name__})") from exc
        finding = _finding(self.store, record, self.analyser.identity)
        objects = build_results(
            source,
            pixels,
            finding,
            self.model,
            ResultUIDs.derived(record.id, group, self.model),
            when,
            instance_number=number,
            study=study,
            sc_max_side=self.settings.sc_max_side,
        )
        out = {}
        for kind in ("sc", "sr", "gsps"):
            dataset = getattr(objects, kind)
            if dataset is None:
                continue
            relative = Path("results") / record.id[:2] / f"{record.id}-{kind}.dcm"
            _write(dataset, self.store.data_dir / relative)
            out[kind] = (relative.as_posix(), str(dataset.SOPClassUID), str(dataset.SOPInstanceUID))
        return out


def _finding(store: Store, record: ImageRecord, model: ModelIdentity) -> Finding:
    heat = store.heatmap(record.id)
    if heat is None or not record.result or record.probability is None or record.category is None:
        raise ValueError("the analysis left no heat map or result")
    return Finding(
        probability=float(record.probability),
        category=Category(record.category),
        heatmap=heat,
        letterbox=Letterbox(**record.result["letterbox"]),
        model=model,
    )


def study_answer(images: list[ImageRecord]) -> StudyAnswer | None:
    """The most suspicious analysed image of a study (category first, then probability)."""
    done = [i for i in images if i.status == "done" and i.category in CATEGORY_RANK]
    if not done:
        return None
    worst = min(done, key=lambda i: (CATEGORY_RANK[i.category or ""], -(i.probability or 0.0)))
    return StudyAnswer(Category(worst.category), float(worst.probability or 0.0), len(done))


def _write(dataset: Dataset, target: Path) -> None:
    """The object as a DICOM file, flushed to disk before it takes its name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as fh:
        dataset.save_as(fh, enforce_file_format=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, target)
