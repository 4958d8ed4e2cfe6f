"""The results stage: for images received over DICOM, make the objects the PACS gets back and queue
them for sending, after analysis and without analysing again.

A thread that waits for groups the store says are ready (every image of a study that arrived in
one association is finished, and the association is over) and, for each analysed image in the
group, builds the Secondary Capture, the SR and (for fracture and doubt) the presentation state
(:mod:`fracsight.service.dicom_results`) from what the analysis stored: its result, its heat map
and the pixels the worker kept for the viewer (decoded again only when those are missing). Each
object is made and queued on its own: one that cannot be made leaves the image's results
``failed`` with the reason (``results_error``, shown by the API), the others are still sent, and
:func:`remake_failed` (``dicom-node --resend``) makes them again after a fix. Files
are on disk before one transaction marks the group's results made and queues the sends, so a
stop at any point either repeats the making (same UIDs, same files) or finds it done.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from fracsight._version import __version__
from fracsight.decide import StudyAnswer
from fracsight.decide import study_answer as decide_study_answer
from fracsight.finding import Finding
from fracsight.io.durable import fsync_folder
from fracsight.model_card import ModelIdentity
from fracsight.service.dicom_results import (
    Algorithm,
    ResultUIDs,
    build_results,
    failure_reason,
)
from fracsight.service.loop import QueueLoop
from fracsight.service.sends import NewSend
from fracsight.service.settings import DicomSettings
from fracsight.service.store import ImageRecord, Store
from fracsight.service.worker import display_path, read_display

log = logging.getLogger(__name__)
RETRY_S = 10.0  # after the disk or the store failed


class CannotMake(ValueError):
    """An image's results cannot be made for a reason of fracsight's own, said in words without
    patient data."""


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
        failed: dict[str, str] = {}
        sends: list[NewSend] = []
        folders: set[Path] = set()
        when = self.clock()
        for number, record in enumerate(images, start=1):
            if record.results != "pending" or record.status != "done":
                continue
            try:
                files, reasons = self._build(record, number, study, f"{study_key}/{batch}", when)
            except OSError:
                raise  # the disk, not the image: the group stays pending and is made again later
            except Exception as exc:  # noqa: BLE001 - one image's results failing must not stop the group
                why = str(exc) if isinstance(exc, CannotMake) else failure_reason(exc)
                files, reasons = {}, {"all": why}
            for kind, (relative, sop_class, sop_instance) in files.items():
                folders.add((self.store.data_dir / relative).parent)
                sends.append(NewSend(record.id, self.destination, kind, relative, sop_class, sop_instance))
            if reasons:
                failed[record.id] = "; ".join(f"{kind}: {why}" for kind, why in reasons.items())
                # The reason only: no image id nor patient data in the log (the store and the API
                # say which image).
                log.error("result objects of an image could not be made (%s)", failed[record.id])
            else:
                made.append(record.id)
        for folder in folders:
            fsync_folder(folder)
        self.store.record_results(made, none, sends, failed=failed)
        if sends:
            images = len({s.image_id for s in sends})
            log.info("results of %d image(s) queued for %s", images, self.destination)
            if self.on_queued is not None:
                self.on_queued()

    def _build(
        self, record: ImageRecord, number: int, study: StudyAnswer | None, group: str, when: dt.datetime
    ) -> tuple[dict[str, tuple[str, str, str]], dict[str, str]]:
        """Write the image's result objects that can be made: (kind -> (file relative to the data
        folder, SOP class, UID), kind -> why it could not be made)."""
        if record.model_id != self.model.name:
            raise CannotMake(f"analysed by model {record.model_id}, the node runs {self.model.name}")
        path = self.store.data_dir / record.file
        try:
            source = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            shown = display_path(self.store, record.id)
            pixels = read_display(shown) if shown.exists() else self.analyser.read(path).pixels
        except OSError as exc:  # the image's own files, gone or unreadable: not worth retrying
            raise CannotMake(f"the image could not be read again ({type(exc).__name__})") from exc
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
        for kind, dataset in objects.made().items():
            relative = Path("results") / record.id[:2] / f"{record.id}-{kind}.dcm"
            _write(dataset, self.store.data_dir / relative)
            out[kind] = (relative.as_posix(), str(dataset.SOPClassUID), str(dataset.SOPInstanceUID))
        return out, dict(objects.failures)


def remake_failed(store: Store, settings: DicomSettings, make_analyser: Callable[[], Any]) -> int:
    """Make again, in this process and in one pass, the result objects that could not be made
    (after a fix: ``dicom-node --resend``); returns how many images were waiting for them. The
    analyser (the model) is loaded only when some are. A running node's results stage may take
    some of them: each object is queued once."""
    due = store.retry_failed_results()
    if due and settings.forward is not None:
        ResultsStage(store, make_analyser(), settings).run_once()
    return due


def _finding(store: Store, record: ImageRecord, model: ModelIdentity) -> Finding:
    """The finding as the analysis recorded it (:meth:`Finding.from_record`), with the model's
    identity as this node runs it."""
    heat = store.heatmap(record.id)
    if heat is None or not record.result or record.probability is None or record.category is None:
        raise CannotMake("the analysis left no heat map or result")
    kept = Finding.from_record(record.result, heat, int(record.result["letterbox"]["size"]))
    return replace(kept, model=model)


def study_answer(images: list[ImageRecord]) -> StudyAnswer | None:
    """The study's answer (:func:`fracsight.decide.study_answer`) over its analysed images."""
    return decide_study_answer((i.category, i.probability) for i in images if i.status == "done")


def _write(dataset: Dataset, target: Path) -> None:
    """The object as a DICOM file, flushed to disk before it takes its name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as fh:
        dataset.save_as(fh, enforce_file_format=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, target)
