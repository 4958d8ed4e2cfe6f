"""The store's worklist: the studies table kept in step with the images, filtered, sorted and
paged in SQL, the change feed, and the schema upgrade of a store made before the table existed.

The worklist is checked against an independent reading of the images (grouped and ranked in
Python, as the store did before the table), after a mixed run of inserts, results, refusals,
interrupted analyses and read marks.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from fracsight.service.store import (
    SCHEMA_VERSION,
    STUDY_SOURCE,
    Analysis,
    DuplicateInstance,
    SqliteStore,
    StudyInfo,
    WorklistQuery,
)

# The schema of the store as first released (schema version 1; user_version was never set).
V1_SCHEMA = """
CREATE TABLE images (
    id TEXT PRIMARY KEY, received_at TEXT NOT NULL, source TEXT NOT NULL, file TEXT NOT NULL,
    kind TEXT NOT NULL, size_bytes INTEGER NOT NULL, study_key TEXT NOT NULL DEFAULT '',
    study_instance_uid TEXT NOT NULL DEFAULT '', series_instance_uid TEXT NOT NULL DEFAULT '',
    sop_instance_uid TEXT NOT NULL DEFAULT '', patient_name TEXT NOT NULL DEFAULT '',
    patient_id TEXT NOT NULL DEFAULT '', patient_birth_date TEXT NOT NULL DEFAULT '',
    patient_sex TEXT NOT NULL DEFAULT '', study_date TEXT NOT NULL DEFAULT '',
    study_time TEXT NOT NULL DEFAULT '', study_description TEXT NOT NULL DEFAULT '',
    accession_number TEXT NOT NULL DEFAULT '', modality TEXT NOT NULL DEFAULT '',
    body_part TEXT NOT NULL DEFAULT '', view_position TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'queued', attempts INTEGER NOT NULL DEFAULT 0,
    analyses INTEGER NOT NULL DEFAULT 0, error TEXT, probability REAL, category TEXT, model_id TEXT,
    result TEXT, heatmap BLOB, heatmap_shape TEXT, analysed_at TEXT, batch TEXT NOT NULL DEFAULT '',
    results TEXT, results_at TEXT
);
CREATE INDEX images_status ON images (status, received_at);
CREATE INDEX images_study ON images (study_key);
CREATE INDEX images_results ON images (results, study_key, batch);
CREATE INDEX images_instance ON images (sop_instance_uid);
CREATE TABLE batches (
    id TEXT PRIMARY KEY, calling_aet TEXT NOT NULL, opened_at TEXT NOT NULL, last_at REAL NOT NULL,
    closed_at TEXT
);
CREATE TABLE study_reads (study_key TEXT PRIMARY KEY, read_by TEXT NOT NULL, read_at TEXT NOT NULL);
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT, image_id TEXT NOT NULL REFERENCES images (id),
    reader TEXT NOT NULL, reader_label INTEGER NOT NULL, agrees INTEGER, note TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE sends (
    id INTEGER PRIMARY KEY AUTOINCREMENT, image_id TEXT NOT NULL REFERENCES images (id),
    destination TEXT NOT NULL, kind TEXT NOT NULL, file TEXT NOT NULL, sop_class_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL, claimed_at REAL, last_error TEXT,
    created_at TEXT NOT NULL, sent_at TEXT
);
CREATE INDEX sends_due ON sends (status, next_try);
CREATE INDEX sends_image ON sends (image_id);
"""
HEAT = np.zeros((4, 4), dtype=np.float32)


def _info(study: int, n: int, **extra: str) -> StudyInfo:
    return StudyInfo(
        study_key=f"1.2.826.0.1.{study}",
        study_instance_uid=f"1.2.826.0.1.{study}",
        sop_instance_uid=f"1.2.826.0.1.{study}.{n}",
        patient_name=f"Doe{study} Jane",
        patient_id=f"PID{study:04d}",
        accession_number=f"ACC{study:04d}",
        study_date=f"2024{1 + study % 12:02d}{1 + study % 28:02d}",
        body_part=("HAND", "wrist", "")[study % 3],
        **extra,
    )


def _expected_worklist(store: SqliteStore) -> list[tuple]:
    """The worklist read from the images themselves: (study, category, probability, counts, read)."""
    db = sqlite3.connect(store.path)
    images = db.execute(
        "SELECT study_key, status, category, probability, received_at FROM images ORDER BY received_at, rowid"
    ).fetchall()
    reads = {k for (k,) in db.execute("SELECT study_key FROM study_reads")}
    grouped: dict[str, list] = {}
    for row in images:
        grouped.setdefault(row[0], []).append(row)
    out = []
    rank = {"fracture": 0, "doubt": 1, "no_fracture": 2}
    for key, rows in grouped.items():
        done = [r for r in rows if r[1] == "done"]
        worst = min(done, key=lambda r: (rank[r[2]], -r[3]), default=None)
        pending = sum(r[1] in ("queued", "analysing") for r in rows)
        refused = sum(r[1] in ("refused", "failed") for r in rows)
        category = worst[2] if worst else None
        place = {"fracture": 0, "doubt": 1, "no_fracture": 3}[category] if category else (2 if pending else 4)
        sort = (place, -(worst[3] if worst else 0.0), [-ord(c) for c in rows[0][4]], key)
        probability = worst[3] if worst else None
        out.append((sort, (key, category, probability, len(rows), pending, refused, key in reads)))
    return [entry for _, entry in sorted(out)]


def _listed(studies: list[dict]) -> list[tuple]:
    return [
        (s["study"], s["category"], s["probability"], s["n_images"], s["n_pending"], s["n_refused"],
         s["read"])
        for s in studies
    ]


def _mixed_run(store: SqliteStore, seed: int = 7, studies: int = 30) -> None:
    """Inserts, results, refusals, failures, interrupted analyses and read marks, interleaved."""
    rng = random.Random(seed)
    n = 0
    for _ in range(160):
        action = rng.random()
        if action < 0.45:
            study = rng.randrange(studies)
            n += 1
            store.add_image(f"img{n:05d}", "dicom", "f", "dicom", 1, _info(study, n))
        elif action < 0.8:
            record = store.claim_next()
            if record is None:
                continue
            outcome = rng.random()
            if outcome < 0.7:
                category = rng.choice(["fracture", "doubt", "no_fracture"])
                store.finish(record.id, Analysis(round(rng.random(), 3), category, "m", {}, HEAT))
            elif outcome < 0.85:
                store.refuse(record.id, "not a radiograph")
            elif outcome < 0.95:
                store.refuse(record.id, "analysis failed", status="failed")
            # else: left analysing, as a stopped service leaves it
        elif action < 0.9:
            keys = [s["study"] for s in store.studies()]
            if keys:
                store.mark_read(rng.choice(keys), "Dr R", rng.random() < 0.7)
        elif action < 0.95:
            store.requeue_interrupted()


def test_studies_table_follows_every_change(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    _mixed_run(store)
    assert _listed(store.studies()) == _expected_worklist(store)
    # A store reopened reads the same rows (nothing is kept in memory).
    assert _listed(SqliteStore(tmp_path).studies()) == _expected_worklist(store)


def test_upgrade_from_a_store_made_before_the_studies_table(tmp_path: Path) -> None:
    # A store made by the first release: its schema, rows written as it wrote them, no user_version.
    reference = SqliteStore(tmp_path / "reference")
    _mixed_run(reference, seed=11)
    old = sqlite3.connect(tmp_path / "fracsight.db")
    old.executescript(V1_SCHEMA)
    src = sqlite3.connect(reference.path)
    for table in ("images", "study_reads", "feedback", "batches"):
        columns = [r[1] for r in old.execute(f"PRAGMA table_info({table})")]
        rows = src.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
        old.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(columns))})", rows)
    old.commit()
    assert old.execute("PRAGMA user_version").fetchone()[0] == 0
    old.close()

    upgraded = SqliteStore(tmp_path)
    db = sqlite3.connect(upgraded.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert _listed(upgraded.studies()) == _expected_worklist(upgraded) == _listed(reference.studies())
    # The upgraded store goes on as a new one does: a new image in a study appears in the change feed.
    cursor = upgraded.change_cursor()
    key = upgraded.studies()[0]["study"]
    upgraded.add_image("late1", "upload", "f", "png", 1, StudyInfo(study_key=key))
    changed, new_cursor, more = upgraded.changes(cursor)
    assert [s["study"] for s in changed] == [key] and new_cursor > cursor and not more
    assert "late1" in changed[0]["images"]
    # Opening again does not step again.
    SqliteStore(tmp_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_store_from_a_newer_fracsight_is_not_opened(tmp_path: Path) -> None:
    SqliteStore(tmp_path)
    db = sqlite3.connect(tmp_path / "fracsight.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    with pytest.raises(RuntimeError, match="schema version"):
        SqliteStore(tmp_path)


def test_filters_sorting_and_paging_in_sql(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    _mixed_run(store, seed=3, studies=40)
    everything = store.studies()
    for query, keep in [
        (WorklistQuery(category="fracture"), lambda s: s["category"] == "fracture"),
        (WorklistQuery(read=True), lambda s: s["read"]),
        (WorklistQuery(read=False), lambda s: not s["read"]),
        (WorklistQuery(search="doe1"), lambda s: "doe1" in s["patient_name"].lower()),
        (WorklistQuery(search="pid0007"), lambda s: s["patient_id"] == "PID0007"),
        (WorklistQuery(search="acc0012"), lambda s: s["accession_number"] == "ACC0012"),
        (WorklistQuery(search="%"), lambda s: False),  # a wildcard is searched for as itself
        (WorklistQuery(search="_"), lambda s: False),
        (
            WorklistQuery(date_from="2024-03-01", date_to="2024-05-31"),
            lambda s: "20240301" <= s["study_date"] <= "20240531",
        ),
    ]:
        page = store.study_page(query)
        assert page.studies == [s for s in everything if keep(s)], query
        assert page.total == len(page.studies)
    # Paging: pages put together are the whole list, in order, each with the total.
    pages, offset = [], 0
    while True:
        page = store.study_page(WorklistQuery(limit=7, offset=offset))
        assert page.total == len(everything)
        if not page.studies:
            break
        pages += page.studies
        offset += 7
    assert pages == everything
    # Every sort column, both ways; descending is ascending reversed (ties go by study key).
    for sort in ("priority", "probability", "patient_name", "patient_id", "accession_number", "study",
                 "date", "regions", "images", "received_at", "changed_at", "read"):  # fmt: skip
        up = store.studies(WorklistQuery(sort=sort))
        down = store.studies(WorklistQuery(sort=sort, descending=True))
        assert [s["study"] for s in down] == [s["study"] for s in reversed(up)], sort
        assert sorted(s["study"] for s in up) == sorted(s["study"] for s in everything)
    by_name = store.studies(WorklistQuery(sort="patient_name"))
    assert [s["patient_name"] for s in by_name] == sorted(s["patient_name"] for s in everything)
    with pytest.raises(ValueError, match="sort"):
        store.studies(WorklistQuery(sort="patient_name; DROP TABLE images"))


def test_the_worklist_query_uses_indexes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    db = sqlite3.connect(store.path)
    plan = " ".join(
        r[3] for r in db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM studies ORDER BY rank, probability DESC, received_at DESC, "
            "study_key LIMIT 50"
        )
    )
    assert "studies_priority" in plan
    plan = " ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN SELECT * FROM studies WHERE change > 5"))
    assert "studies_change" in plan


def test_change_feed(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    assert store.changes(0) == ([], 0, False)
    store.add_image("a", "upload", "f", "png", 1, StudyInfo(study_key="upload-a"))
    store.add_image("b", "upload", "f", "png", 1, StudyInfo(study_key="upload-b"))
    cursor = store.change_cursor()
    assert store.changes(cursor) == ([], cursor, False)  # nothing since: nothing to send
    store.finish(store.claim_next().id, Analysis(0.9, "fracture", "m", {}, HEAT))
    changed, cursor2, _ = store.changes(cursor)
    assert [(s["study"], s["category"]) for s in changed] == [("upload-a", "fracture")]
    store.mark_read("upload-b", "Dr R", True)
    changed, cursor3, _ = store.changes(cursor2)
    assert [(s["study"], s["read"]) for s in changed] == [("upload-b", True)] and cursor3 > cursor2
    # A long feed comes in parts and loses nothing, also after every row was rewritten at once
    # (as the schema upgrade fills the table).
    for n in range(12):
        store.add_image(f"c{n}", "upload", "f", "png", 1, StudyInfo(study_key=f"upload-c{n}"))

    def feed(since: int) -> list[str]:
        seen, more = [], True
        while more:
            part, since, more = store.changes(since, limit=5)
            seen += [s["study"] for s in part]
        return seen

    assert feed(cursor3) == [f"upload-c{n}" for n in range(12)]
    before = store.change_cursor()
    store.rebuild_studies()
    assert sorted(feed(before)) == sorted(feed(0)) == sorted(s["study"] for s in store.studies())
    assert len(feed(0)) == 14


def test_a_new_image_reopens_a_read_study(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.add_image("a", "dicom", "f", "dicom", 1, _info(1, 1))
    key = _info(1, 1).study_key
    store.mark_read(key, "Dr R", True)
    assert store.study(key)["read"] and store.studies(WorklistQuery(read=False)) == []
    store.add_image("b", "dicom", "f", "dicom", 1, _info(1, 2))
    assert not store.study(key)["read"]
    assert [s["study"] for s in store.studies(WorklistQuery(read=False))] == [key]


def test_an_uploaded_instance_is_kept_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    first = store.add_image("a", "dicom", "f", "dicom", 1, _info(1, 1), unique_instance=True)
    for source in ("upload", "dicom"):
        with pytest.raises(DuplicateInstance) as caught:
            store.add_image("b", source, "f", "dicom", 1, _info(1, 1), unique_instance=True)
        assert caught.value.existing.id == first.id
    assert store.study(_info(1, 1).study_key)["images"] == ["a"]


def test_predictions_in_worklist_order(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    _mixed_run(store, seed=5)
    expected = [
        image_id
        for s in store.studies()
        for image_id in s["images"]
        if store.get_image(image_id).status in ("done", "refused", "failed")
    ]
    assert [r["id"] for r in store.finished_images()] == expected


def _finish_all(store: SqliteStore) -> None:
    while (record := store.claim_next()) is not None:
        store.finish(record.id, Analysis(0.9, "fracture", "m", {}, HEAT))


def test_reader_study_cases_stay_out_of_the_clinical_views(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.add_image("p1", "dicom", "f", "dicom", 1, _info(1, 1))
    store.mark_read(_info(1, 1).study_key, "Dr R", True)
    cursor = store.change_cursor()
    # a study case of its own, and one from the same DICOM study as the patient's image
    store.add_image("s1", STUDY_SOURCE, "f", "png", 1, StudyInfo(study_key="upload-s1"))
    store.add_image("s2", STUDY_SOURCE, "f", "dicom", 1, _info(1, 2))
    assert store.claim_next().id == "p1"  # the patient's image before the study's cases
    store.requeue_interrupted()
    store.add_image("p2", "upload", "f", "dicom", 1, _info(2, 1), unique_instance=True)
    _finish_all(store)
    assert store.get_image("s1").status == store.get_image("s2").status == "done"  # analysed all the same
    assert sorted(s["study"] for s in store.studies()) == [_info(1, 1).study_key, _info(2, 1).study_key]
    assert store.study(_info(1, 1).study_key)["images"] == ["p1"]
    assert store.study(_info(1, 1).study_key)["read"]  # a study case does not reopen it
    assert store.study("upload-s1") is None and not store.mark_read("upload-s1", "Dr R", True)
    assert [i.id for i in store.images_of_study(_info(1, 1).study_key)] == ["p1"]
    changed, _, _ = store.changes(cursor)
    assert all(not {"s1", "s2"} & set(s["images"]) for s in changed) and "upload-s1" not in str(changed)
    assert [r["id"] for r in store.monitored_images()] == ["p1", "p2"]
    assert sorted(r["id"] for r in store.finished_images()) == ["p1", "p2"]
    assert store.counts()["done"] == 2
    # the same instance as a study case is no duplicate of a patient's upload, nor the reverse
    assert store.find_instance(_info(1, 2).sop_instance_uid, dicom_only=False) is None
    store.add_image("s3", STUDY_SOURCE, "f", "dicom", 1, _info(2, 1))
    assert store.find_instance(_info(2, 1).sop_instance_uid, dicom_only=False).id == "p2"


def test_upgrade_moves_uploaded_study_cases_out_of_the_worklist(tmp_path: Path) -> None:
    # A version 3 store whose reader study's cases were kept as uploads.
    store = SqliteStore(tmp_path)
    store.add_image("p1", "upload", "f", "png", 1, StudyInfo(study_key="upload-p1"))
    store.add_image("s1", "upload", "f", "png", 1, StudyInfo(study_key="upload-s1"))
    store.add_image("s2", "upload", "f", "dicom", 1, _info(1, 2))
    store.add_image("p2", "dicom", "f", "dicom", 1, _info(1, 1))
    _finish_all(store)
    store.close()
    db = sqlite3.connect(tmp_path / "fracsight.db")
    db.execute("CREATE TABLE reader_study_images (study_id, case_id, ordinal, image_id)")
    db.executemany("INSERT INTO reader_study_images VALUES ('x', ?, 0, ?)", [("c1", "s1"), ("c2", "s2")])
    db.execute("PRAGMA user_version = 3")
    db.commit()
    before = {s["study"] for s in SqliteStore(tmp_path).studies()}
    assert before == {"upload-p1", _info(1, 1).study_key}  # moved when opened
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    upgraded = SqliteStore(tmp_path)
    assert {upgraded.get_image(i).source for i in ("s1", "s2")} == {STUDY_SOURCE}
    assert upgraded.get_image("p1").source == "upload"
    assert upgraded.study(_info(1, 1).study_key)["images"] == ["p2"]
    assert [r["id"] for r in upgraded.monitored_images()] == ["p1", "p2"]
    assert {s["study"] for s in upgraded.changes(0)[0]} == before


def test_retention_keeps_reader_study_cases(tmp_path: Path) -> None:
    """A study's cases are read for months (the washout): retention deletes a patient's original,
    never a case's."""
    import time

    from fracsight.service.retention import Retention
    from fracsight.service.settings import ServiceSettings

    store = SqliteStore(tmp_path)
    for image_id, source in (("p1", "upload"), ("s1", STUDY_SOURCE)):
        (tmp_path / image_id).write_bytes(b"x")
        store.add_image(image_id, source, image_id, "png", 1, StudyInfo(study_key=f"upload-{image_id}"))
    _finish_all(store)
    settings = ServiceSettings(data_dir=tmp_path, retention_s=60.0)
    Retention(store, settings, clock=lambda: time.time() + 61).run_once()
    assert not (tmp_path / "p1").exists() and (tmp_path / "s1").exists()
