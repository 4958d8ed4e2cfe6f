"""Retention: originals and display copies deleted after a set time, and the disk watched.

About 10 MB are kept per image (the original as received, its display copy); a node that keeps
them for ever stops at its disk floor, where every C-STORE is refused with Out of Resources.
:class:`Retention` deletes, in a background thread, the original and the display copy of every
image received more than :attr:`ServiceSettings.retention_s` ago, but only once nothing waits for
them, in the whole study: every image of it is that old, analysed, its result objects made (or
none due) and delivered to the PACS (results made again for a study, after a late image, read
its sources). What is kept: the image's row (its finding, heat map and worklist
entry), the result objects, readers' marks and feedback (the audit trail). Purged images are
listed in the ``purged`` table of the store's database, so a pass looks at each image once.

Each pass also compares the data folder's free space with the warning level above the floor
(:attr:`ServiceSettings.disk_warning_bytes` over :attr:`DicomSettings.min_free_bytes`) and logs
a warning while it is under it, before instances start being refused.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections.abc import Callable

from fracsight.service.loop import QueueLoop
from fracsight.service.settings import ServiceSettings
from fracsight.service.store import STUDY_SOURCE, SqliteStore
from fracsight.service.worker import display_path

log = logging.getLogger(__name__)

PURGED_SCHEMA = """
CREATE TABLE IF NOT EXISTS purged (
    image_id TEXT PRIMARY KEY REFERENCES images (id),
    purged_at TEXT NOT NULL
);
"""
BATCH = 200  # images purged per transaction
_WARN_EVERY_S = 3600.0  # a disk that stays low is reported again this often


def _iso(epoch: float) -> str:
    """As the store writes its times (``store.now``), so the two compare as text."""
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat(timespec="milliseconds")


class Retention(QueueLoop):
    """Purges expired originals and watches the disk, every ``poll_s`` seconds; ``clock`` (epoch
    seconds) is injectable so a test need not wait for the retention time to pass."""

    name = "fracsight-retention"

    def __init__(
        self,
        store: SqliteStore,
        settings: ServiceSettings,
        clock: Callable[[], float] = time.time,
        poll_s: float = 60.0,
        free_bytes: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self.free_bytes = free_bytes or (lambda: shutil.disk_usage(store.data_dir).free)
        self._warned_at: float | None = None
        with store._transaction() as db:
            db.execute(PURGED_SCHEMA)
        super().__init__(poll_s)

    @property
    def floor_bytes(self) -> int:
        return self.settings.dicom.min_free_bytes if self.settings.dicom is not None else 0

    def run_once(self) -> int:
        self.check_disk()
        if self.settings.retention_s is None:
            return 0
        return self.purge()

    def purged_count(self) -> int:
        return int(self.store._connection().execute("SELECT COUNT(*) FROM purged").fetchone()[0])

    def purge(self) -> int:
        """Delete the files of up to :data:`BATCH` expired images nobody waits for; returns how many
        (a full batch: the loop comes back at once for the next)."""
        assert self.settings.retention_s is not None
        cutoff = _iso(self.clock() - self.settings.retention_s)
        rows = (
            self.store._connection()
            .execute(
                "SELECT i.id, i.file FROM images i WHERE i.received_at < ? "
                # a reader study's cases are read for months (the washout): kept for it
                f"AND i.source != '{STUDY_SOURCE}' "
                "AND NOT EXISTS (SELECT 1 FROM purged p WHERE p.image_id = i.id) "
                # the whole study waits: results made again for it (a late image) read its sources
                "AND NOT EXISTS (SELECT 1 FROM images j WHERE j.study_key = i.study_key AND ("
                "j.received_at >= ? OR j.status IN ('queued', 'analysing') "
                "OR j.results IN ('pending', 'failed') "
                "OR EXISTS (SELECT 1 FROM sends s WHERE s.image_id = j.id AND s.status != 'sent'))) "
                "ORDER BY i.received_at LIMIT ?",
                (cutoff, cutoff, BATCH),
            )
            .fetchall()
        )
        if not rows:
            return 0
        for row in rows:
            (self.store.data_dir / row["file"]).unlink(missing_ok=True)
            display_path(self.store, row["id"]).unlink(missing_ok=True)
        stamp = _iso(self.clock())
        with self.store._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO purged (image_id, purged_at) VALUES (?, ?)",
                [(row["id"], stamp) for row in rows],
            )
        log.info("retention: the original and display copy of %d image(s) deleted", len(rows))
        return len(rows) if len(rows) == BATCH else 0

    def check_disk(self) -> bool:
        """True while the disk is under the warning level; logged when it gets there, then hourly."""
        free = self.free_bytes()
        low = free < self.floor_bytes + self.settings.disk_warning_bytes
        now = time.monotonic()
        if not low:
            if self._warned_at is not None:
                log.info("disk: %d MB free again, above the warning level", free // 2**20)
            self._warned_at = None
            return False
        if self._warned_at is None or now - self._warned_at >= _WARN_EVERY_S:
            self._warned_at = now
            log.warning(
                "disk nearly full: %d MB free in the data folder; every received instance is refused "
                "under %d MB (shorten retention or free space)",
                free // 2**20,
                self.floor_bytes // 2**20,
            )
        return True
