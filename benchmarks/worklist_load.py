"""The worklist at a department's year: 100,000 images in 40,000 studies; prints a table.

    python benchmarks/worklist_load.py [--images 100000] [--studies 40000] [--calls 300]

Builds a store in a temporary folder (images written by bulk SQL with the columns and values
``SqliteStore.add_image``/``finish``/``refuse``/``mark_read`` write, then the studies table rebuilt
by the store itself, as its schema upgrade does), serves it with the web app under uvicorn in its
own process on 127.0.0.1 (no analysis worker), and measures over HTTP, one call at a time:

- the worklist page the viewer opens with (``GET /api/worklist``, 100 studies, most suspicious
  first), and the same with a filter, a text search and another sort column;
- opening one study (``GET /api/studies/{key}``, a random one each time);

while a thread polls ``GET /api/changes?since=<cursor>`` every 2 s as the page does, and another
adds a new image to the store every second (and a result every second), so the polls find
changes. Reported: median and 95th percentile per call; target: each at most 50 ms at the 95th.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
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
sys.path.insert(0, str(ROOT / "src"))

from fracsight.service.store import Analysis, SqliteStore, StudyInfo, now  # noqa: E402

TOKEN = "worklist-load-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
NAMES = ["Smith", "Jones", "Garcia", "Müller", "Rossi", "Dubois", "Nowak", "Silva", "Kim", "Okafor"]
_SERVE = """
import sys, uvicorn
from pathlib import Path
from fracsight.service.store import SqliteStore
from fracsight.service.web import create_app
app = create_app(SqliteStore(Path(sys.argv[1])), None, sys.argv[2], 1 << 20)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning", access_log=False)
"""


_STATUSES = (("done", 0.96), ("refused", 0.985), ("failed", 0.99), ("queued", 1.0))  # a year's share


def build(folder: Path, n_images: int, n_studies: int, seed: int = 1) -> list[str]:
    """A store of ``n_images`` in ``n_studies`` studies; returns the study keys."""
    rng = random.Random(seed)
    store = SqliteStore(folder)
    keys = [f"1.2.826.0.1.3680043.2.1125.{n}" for n in range(n_studies)]
    # Every study gets one image; the rest go to random studies.
    owners = list(range(n_studies)) + [rng.randrange(n_studies) for _ in range(n_images - n_studies)]
    rows = []
    stamp = time.time() - 365 * 86400
    for n, study in enumerate(owners):
        stamp += 365 * 86400 / n_images
        received = time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime(stamp))
        state = rng.random()
        status = next(name for name, upto in _STATUSES if state < upto)
        probability = rng.random() if status == "done" else None
        category = None
        if probability is not None:
            category = "fracture" if probability >= 0.7 else "doubt" if probability >= 0.4 else "no_fracture"
        rng_study = random.Random(study)
        rows.append(
            (
                f"{n:024x}", received, "dicom", f"images/{n:024x}.dcm", "dicom", 500_000,
                keys[study], keys[study], f"{keys[study]}.1", f"{keys[study]}.1.{n}",
                f"{rng_study.choice(NAMES)} {rng_study.choice('ABCDEFGH')}", f"P{study:07d}",
                "19700101", rng_study.choice("MF"), time.strftime("%Y%m%d", time.gmtime(stamp)), "101500",
                "XR WRIST", f"A{study:08d}", "DX", rng_study.choice(["HAND", "WRIST", "ANKLE"]), "PA",
                status, 1 if status != "queued" else 0, 1 if status == "done" else 0,
                "not a radiograph" if status in ("refused", "failed") else None,
                probability, category, "fracsight-bench" if status == "done" else None,
                json.dumps({"peak": {"x": 10, "y": 10}}) if status == "done" else None,
                received if status != "queued" else None,
            )
        )  # fmt: skip
    db = sqlite3.connect(store.path)
    db.executemany(
        "INSERT INTO images (id, received_at, source, file, kind, size_bytes, study_key, study_instance_uid, "
        "series_instance_uid, sop_instance_uid, patient_name, patient_id, patient_birth_date, patient_sex, "
        "study_date, study_time, study_description, accession_number, modality, body_part, view_position, "
        "status, attempts, analyses, error, probability, category, model_id, result, analysed_at) "
        f"VALUES ({', '.join('?' * 30)})",
        rows,
    )
    db.executemany(
        "INSERT INTO study_reads (study_key, read_by, read_at) VALUES (?, 'Dr Bench', ?)",
        [(k, now()) for k in keys if rng.random() < 0.8],  # most of a year's studies are read
    )
    db.commit()
    db.close()
    store.rebuild_studies()
    return keys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _arrivals(folder: Path, stop: threading.Event) -> None:
    """A new image every second, and the oldest queued one analysed: the polls find changes."""
    store = SqliteStore(folder)
    n = 0
    while not stop.wait(1.0):
        n += 1
        key = f"2.25.{n}"
        info = StudyInfo(study_key=key, study_instance_uid=key, sop_instance_uid=f"{key}.1",
                         patient_name="New Arrival", patient_id=f"N{n:05d}")  # fmt: skip
        store.add_image(f"new{n:021d}", "dicom", "images/new.dcm", "dicom", 1, info)
        record = store.claim_next()
        if record is not None:
            store.finish(record.id, Analysis(0.8, "fracture", "fracsight-bench", {}, np.zeros((8, 8))))


def _poller(base: str, cursor: int, stop: threading.Event, seen: list[int], times: list[float]) -> None:
    """The page's poll: what changed since the cursor, every 2 s."""
    with httpx.Client(base_url=base, headers=HEADERS, timeout=30) as client:
        while not stop.wait(2.0):
            started = time.perf_counter()
            body = client.get(f"/api/changes?since={cursor}&limit=200").json()
            times.append((time.perf_counter() - started) * 1e3)
            seen.append(len(body["studies"]))
            cursor = body["cursor"]


def _measure(client: httpx.Client, paths: list[str]) -> list[float]:
    times = []
    for path in paths:
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1e3)
        assert response.status_code == 200, (path, response.status_code)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--studies", type=int, default=40_000)
    parser.add_argument("--calls", type=int, default=300, help="calls of each kind measured")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="worklist-load-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        keys = build(folder, args.images, args.studies)
        size = (folder / "fracsight.db").stat().st_size / 1e6
        print(f"store: {args.images} images in {args.studies} studies, built in "
              f"{time.perf_counter() - started:.1f} s ({size:.0f} MB)")  # fmt: skip
        port = _free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        server = subprocess.Popen([sys.executable, "-c", _SERVE, str(folder), TOKEN, str(port)], env=env)
        base = f"http://127.0.0.1:{port}"
        stop = threading.Event()
        try:
            with httpx.Client(base_url=base, headers=HEADERS, timeout=30) as client:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        first = client.get("/api/worklist")
                        break
                    except httpx.TransportError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.2)
                seen: list[int] = []
                polls: list[float] = []
                cursor = first.json()["cursor"]
                threads = [
                    threading.Thread(target=_poller, args=(base, cursor, stop, seen, polls), daemon=True),
                    threading.Thread(target=_arrivals, args=(folder, stop), daemon=True),
                ]
                for t in threads:
                    t.start()
                rng = random.Random(2)
                page = "/api/worklist?limit=100"
                cases = {
                    "worklist page (100, priority)": [page] * args.calls,
                    "worklist: unread fractures": [f"{page}&category=fracture&read=false"] * args.calls,
                    "worklist: search name": [f"{page}&q={rng.choice(NAMES)[:4]}" for _ in range(args.calls)],
                    "worklist: search, no match": [f"{page}&q=zz{n}" for n in range(args.calls)],
                    "worklist: by patient, page 51": [f"{page}&sort=patient_name&offset=5000"] * args.calls,
                    "worklist: date range": [f"{page}&date_from=2026-03-01&date_to=2026-03-31"] * args.calls,
                    "open study": [f"/api/studies/{rng.choice(keys)}" for _ in range(args.calls)],
                }
                _measure(client, ["/api/worklist?limit=100"] * 10)  # warm the caches
                results = {name: _measure(client, paths) for name, paths in cases.items()}
            stop.set()
            for t in threads:
                t.join(timeout=10)
            results["changes poll (every 2 s, beside)"] = polls
        finally:
            stop.set()
            server.terminate()
            server.wait(timeout=30)

    print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}; {args.calls} calls each, one at a time, while the changes "
          f"were polled every 2 s ({len(seen)} polls, {sum(seen)} studies changed)")  # fmt: skip
    print(f"{'call':<38} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}  target p95 <= 50 ms")
    worst = 0.0
    for name, times in results.items():
        p50, p95 = np.percentile(times, [50, 95])
        worst = max(worst, p95)
        print(f"{name:<38} {p50:>10.1f} {p95:>8.1f} {max(times):>8.1f}  {'ok' if p95 <= 50 else 'OVER'}")
    sys.exit(0 if worst <= 50 else 1)


if __name__ == "__main__":
    main()
