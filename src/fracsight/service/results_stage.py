"""The results stage: for images received over DICOM, make the objects the PACS gets back and queue
them for sending, after analysis and without analysing again.

A thread that makes, as soon as an image is analysed, its Secondary Capture and (for fracture and
doubt) its presentation state, each study's in one series of its kind, numbered in the order the
images arrived, so the reader sees an image's result seconds after the modality sent it; and that
waits for studies the store says are complete (every image of the study finished, and no new image
for :attr:`DicomSettings.study_quiet_s`, whichever associations brought them) to make for each
study one Comprehensive SR (:func:`fracsight.service.dicom_results.study_report`)
with a finding group per analysed image, "not analysed: <reason>" for each refused one, and the
study's answer once. An image arriving later makes a new version of the SR (same series, new SOP
Instance UID, the next Instance Number, the earlier one in its Predecessor Documents Sequence).
Objects are made from what the analysis stored: its result, its heat map and the pixels the
worker kept for the viewer (decoded again only when those are missing). Each object is made and
queued on its own: one that cannot be made leaves the image's results ``failed`` with the reason
(``results_error``, shown by the API), the others are still sent, and :func:`remake_failed`
(``dicom-node --resend``) makes them again after a fix. Files are on disk before one transaction
marks the study's results made and queues the sends, so a stop at any point either repeats the
making (same UIDs, same files) or finds it done.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace
from importlib.resources import files
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from fracsight._version import __version__
from fracsight.decide import Category, StudyAnswer
from fracsight.decide import study_answer as decide_study_answer
from fracsight.finding import Finding
from fracsight.io.dicom_display import through_own_voi
from fracsight.io.durable import fsync_folder
from fracsight.model_card import ModelIdentity
from fracsight.service.dicom_results import (
    Algorithm,
    ReportUIDs,
    ResultUIDs,
    StudyImage,
    build_results,
    failure_reason,
    study_report,
)
from fracsight.service.loop import QueueLoop
from fracsight.service.sends import NewSend
from fracsight.service.settings import DicomSettings
from fracsight.service.store import ImageRecord, Store
from fracsight.service.worker import RecentPixels, display_path, read_display

log = logging.getLogger(__name__)
RETRY_S = 10.0  # after the disk or the store failed
WARM_UP_SAMPLE = "hd_dx_image.dcm"  # a bundled DX: its results are made once at start, not kept
BUSY_QUIET_FACTOR = 3.0  # a study's report waits this much longer while other images wait for analysis


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
        recent: RecentPixels | None = None,
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
        self.recent = recent  # the pixels the worker just analysed, if it keeps them
        super().__init__(poll_s, retry_s=RETRY_S)

    def resume(self) -> None:
        """Make (and drop) the results of the bundled sample radiograph once, so the first images
        a started node receives do not pay for loading the DICOM libraries' tables and fonts."""
        sample = Path(str(files("fracsight.samples") / WARM_UP_SAMPLE))
        try:
            header = pydicom.dcmread(sample, stop_before_pixels=True)
            radiograph = self.analyser.read(sample)
            finding = replace(self.analyser.analyse(radiograph), category=Category.DOUBT)  # all kinds
            build_results(header, radiograph.pixels, finding, self.model,
                          ResultUIDs.derived("warm-up", "warm-up", self.model), self.clock(),
                          instance_number=1, sc_max_side=self.settings.sc_max_side,
                          windowed=through_own_voi(radiograph.metadata.get("voi")))  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - only the first results are slower without it
            log.warning("warming up the results stage failed (%s)", type(exc).__name__)

    def run_once(self, quiet_s: float | None = None) -> int:
        """Make the objects of every image analysed since, then the report of every complete study
        (quiet for ``quiet_s``, the settings' quiet time unless given); returns how many images
        and studies were handled.

        Images come first: while other images wait for analysis, a study's report waits up to
        :data:`BUSY_QUIET_FACTOR` times the quiet time, and a newly analysed image's objects are
        made before the next report, so a burst of images is not slowed by the reports of the
        studies it completed."""
        images = self.store.objects_ready()
        for image_id in images:
            if self.stopping:
                return len(images)
            self.make_objects(image_id)
        quiet = self.settings.study_quiet_s if quiet_s is None else quiet_s
        if quiet_s is None and self.store.analysis_waiting():
            quiet *= BUSY_QUIET_FACTOR
        studies = self.store.results_ready(quiet)
        done = 0
        for study_key in studies:
            if self.stopping:
                break
            if quiet_s is None and self.store.objects_ready():
                return len(images) + done + 1  # more work now: no idle wait before the next pass
            self.make(study_key)
            done += 1
        return len(images) + done

    def make_objects(self, image_id: str) -> None:
        """One analysed image's SC and presentation state, in its study's series of each, queued at
        once; what cannot be made is noted for the study's report to settle."""
        record = self.store.get_image(image_id)
        if record is None or record.results != "pending" or record.objects_at is not None:
            return
        study = self._result_images(record.info.study_key)
        number = next(n for n, i in enumerate(study, start=1) if i.id == record.id)
        files, error = self._objects(
            record, self._header(record), number, record.info.study_key, self.clock()
        )
        sends = [
            NewSend(record.id, self.destination, kind, relative, sop_class, sop_instance)
            for kind, (relative, sop_class, sop_instance) in files.items()
        ]
        for relative, *_ in files.values():
            fsync_folder((self.store.data_dir / relative).parent)
        if error:
            log.error("result objects of an image could not be made (%s)", error)  # the reason only
        if self.store.record_objects(record.id, sends, error) and sends and self.on_queued is not None:
            self.on_queued()

    def _objects(
        self, record: ImageRecord, header: Dataset | None, number: int, study_key: str, when: dt.datetime
    ) -> tuple[dict[str, tuple[str, str, str]], str | None]:
        """Write the image's SC and presentation state, those that can be made: (kind -> (file, SOP
        class, UID), why some could not be made or None). The disk failing raises (made again
        later); anything else about the image is its reason."""
        try:
            files, reasons = self._build(record, header, number, study_key, when)
        except OSError:
            raise  # the disk, not the image: the image stays waiting and is made again later
        except Exception as exc:  # noqa: BLE001 - one image's results failing must not stop the others
            why = str(exc) if isinstance(exc, CannotMake) else failure_reason(exc)
            files, reasons = {}, {"all": why}
        return files, "; ".join(f"{kind}: {why}" for kind, why in reasons.items()) or None

    def _result_images(self, study_key: str) -> list[ImageRecord]:
        """The study's images that get result objects, in arrival order: their place is their
        Instance Number in the study's result series, whichever pass makes their objects."""
        return [i for i in self.store.images_of_study(study_key) if i.source == "dicom" and i.results]

    def make(self, study_key: str) -> None:
        """The study a new version of its SR over every image it has, once it is complete; the
        waiting images' own objects are made first where they were not yet (results made again
        after a failure), and the images settled: made, none (refused) or failed with the reason."""
        every = self._result_images(study_key)
        numbers = {i.id: n for n, i in enumerate(every, start=1)}
        images = [i for i in every if i.status not in ("queued", "analysing")]
        waiting = [i for i in images if i.results == "pending"]
        if not waiting:
            return
        study = study_answer(images)
        made: list[str] = []
        none = [i.id for i in waiting if i.status in ("refused", "failed")]
        failed: dict[str, str] = {}
        sends: list[NewSend] = []
        folders: set[Path] = set()
        when = self.clock()
        headers: dict[str, Dataset | None] = {}
        for record in images:
            headers[record.id] = self._header(record)
            if record.results != "pending" or record.status != "done":
                continue
            error = record.results_error
            if record.objects_at is None:
                files, error = self._objects(record, headers[record.id], numbers[record.id], study_key, when)
                if error:  # the reason only: no image id nor patient data (the store and API say which)
                    log.error("result objects of an image could not be made (%s)", error)
                for kind, (relative, sop_class, sop_instance) in files.items():
                    folders.add((self.store.data_dir / relative).parent)
                    sends.append(
                        NewSend(record.id, self.destination, kind, relative, sop_class, sop_instance)
                    )
            if error:
                failed[record.id] = error
            else:
                made.append(record.id)
        try:
            report = self._report(study_key, images, headers, study, when)
        except OSError:
            raise
        except Exception as exc:  # noqa: BLE001 - the study's report failing must not cost the SCs
            why = str(exc) if isinstance(exc, CannotMake) else failure_reason(exc)
            # An analysed image's results are incomplete without it; for a refused one there is
            # nothing else to make (a study of unreadable files has no header to report on).
            for record in (i for i in waiting if i.status == "done"):
                earlier = failed.get(record.id)
                failed[record.id] = f"{earlier}; sr: {why}" if earlier else f"sr: {why}"
            made = [i for i in made if i not in failed]
            log.warning("the study's report could not be made (%s)", why)
        else:
            if report is not None:
                relative, sop_class, sop_instance = report
                folders.add((self.store.data_dir / relative).parent)
                # Queued with the study's latest waiting image: the one whose arrival made this version.
                latest = waiting[-1].id
                sends.append(NewSend(latest, self.destination, "sr", relative, sop_class, sop_instance))
        for folder in folders:
            fsync_folder(folder)
        self.store.record_results(made, none, sends, failed=failed)
        if sends:
            log.info("the report of a study of %d image(s) queued for %s", len(images), self.destination)
            if self.on_queued is not None:
                self.on_queued()

    def _header(self, record: ImageRecord) -> Dataset | None:
        try:
            return pydicom.dcmread(self.store.data_dir / record.file, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001 - the report then says the image was not analysed
            return None

    def _report(
        self,
        study_key: str,
        images: list[ImageRecord],
        headers: dict[str, Dataset | None],
        study: StudyAnswer | None,
        when: dt.datetime,
    ) -> tuple[str, str, str] | None:
        """Write the next version of the study's SR: (file relative to the data folder, SOP class,
        UID); None when the latest already says all of it (results made again after a failure).
        A restart before it is recorded writes the same version again (same UID)."""
        earlier = self.store.study_reports(study_key, self.destination)
        content = " ".join(f"{i.id}:{i.status}" for i in sorted(images, key=lambda i: i.id))
        uids = ReportUIDs.derived(
            study_key, f"{self.model.name} {content}", self.model, earlier[-1] if earlier else None
        )
        if uids.sr in earlier:
            return None
        version = len(earlier) + 1
        entries = []
        for record in images:
            source = headers.get(record.id)
            uid = record.info.sop_instance_uid or (str(source.get("SOPInstanceUID", "")) if source else "")
            if record.status == "done":
                try:
                    finding = _finding(self.store, record, self.analyser.identity)
                    entries.append(StudyImage(source, uid, finding))
                except CannotMake as exc:
                    entries.append(StudyImage(source, uid, reason=str(exc)))
            else:
                entries.append(StudyImage(source, uid, reason=record.error or record.status))
        dataset = study_report(
            entries,
            self.model,
            uids,
            when,
            version,
            study,
        )
        digest = hashlib.sha256(study_key.encode()).hexdigest()[:32]
        relative = Path("results") / "studies" / digest[:2] / f"{digest}-sr-{version}.dcm"
        _write(dataset, self.store.data_dir / relative)
        return relative.as_posix(), str(dataset.SOPClassUID), str(dataset.SOPInstanceUID)

    def _build(
        self, record: ImageRecord, source: Dataset | None, number: int, study_key: str, when: dt.datetime
    ) -> tuple[dict[str, tuple[str, str, str]], dict[str, str]]:
        """Write the image's SC and presentation state, those that can be made: (kind -> (file
        relative to the data folder, SOP class, UID), kind -> why it could not be made)."""
        if record.model_id != self.model.name:
            raise CannotMake(f"analysed by model {record.model_id}, the node runs {self.model.name}")
        path = self.store.data_dir / record.file
        if source is None:
            raise CannotMake("the image could not be read again")
        pixels = self.recent.take(record.id) if self.recent is not None else None
        try:
            if pixels is None:
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
            ResultUIDs.derived(record.id, study_key, self.model),
            when,
            instance_number=number,
            sc_max_side=self.settings.sc_max_side,
            kinds=("sc", "gsps"),
            # analysed before the store kept "voi": fracsight's contrast stretch, as then
            windowed=through_own_voi(record.result.get("display", {}).get("voi")),
        )
        out = {}
        for kind, dataset in objects.made().items():
            relative = Path("results") / record.id[:2] / f"{record.id}-{kind}.dcm"
            _write(dataset, self.store.data_dir / relative)
            out[kind] = (relative.as_posix(), str(dataset.SOPClassUID), str(dataset.SOPInstanceUID))
        return out, {k: v for k, v in objects.failures.items() if k != "sr"}


def remake_failed(store: Store, settings: DicomSettings, make_analyser: Callable[[], Any]) -> int:
    """Make again, in this process and in one pass, the result objects that could not be made
    (after a fix: ``dicom-node --resend``); returns how many images were waiting for them. The
    analyser (the model) is loaded only when some are. A running node's results stage may take
    some of them: each object is queued once."""
    due = store.retry_failed_results()
    if due and settings.forward is not None:
        # Their studies were complete when first made: no quiet time to wait for again.
        ResultsStage(store, make_analyser(), settings).run_once(quiet_s=0.0)
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
