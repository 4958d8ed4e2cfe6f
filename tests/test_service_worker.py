"""The analysis worker's pipeline: the next images are decoded while the model runs on one, the
images it took from the queue are all finished when it stops, and a service starts with its
decoder processes and model warm.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fracsight.service.intake import receive_stream
from fracsight.service.store import SqliteStore
from fracsight.service.worker import AnalysisWorker, RecentPixels

SAMPLES = Path(__file__).resolve().parents[1] / "src" / "fracsight" / "samples"


def _queue(store: SqliteStore, count: int) -> list[str]:
    images = sorted(SAMPLES.glob("*.jpg"))
    ids = []
    for n in range(count):
        data = images[n % len(images)].read_bytes()
        ids.append(receive_stream(store, [data, n.to_bytes(4, "big")], 10**8).id)
    return ids


def test_a_stopped_worker_leaves_no_image_it_took_half_done(tmp_path: Path, default_analyser) -> None:
    store = SqliteStore(tmp_path)
    ids = _queue(store, 6)
    worker = AnalysisWorker(store, default_analyser, poll_s=0.2)
    worker.start()
    deadline = time.monotonic() + 60
    while not any(store.get_image(i).status != "queued" for i in ids) and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    statuses = [store.get_image(i).status for i in ids]
    assert "analysing" not in statuses, statuses
    assert statuses.count("done") >= 1
    assert [s for s in statuses if s != "done"] == ["queued"] * statuses.count("queued")
    taken = [store.get_image(i) for i in ids if store.get_image(i).status == "done"]
    assert all(r.analyses == 1 and r.attempts <= 1 for r in taken)
    again = AnalysisWorker(store, default_analyser, poll_s=0.2)
    again.start()
    try:
        deadline = time.monotonic() + 120
        while any(store.get_image(i).status != "done" for i in ids) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        again.stop()
    assert [store.get_image(i).status for i in ids] == ["done"] * 6, "every image analysed, in the end"
    assert all(store.get_image(i).analyses == 1 for i in ids), "and each once"


def test_the_worker_starts_its_decoders_and_keeps_pixels_only_for_whoever_takes_them(
    tmp_path: Path, default_analyser
) -> None:
    store = SqliteStore(tmp_path)
    worker = AnalysisWorker(store, default_analyser, poll_s=0.2)
    worker.recent = RecentPixels(keep=2)
    worker.start()
    try:
        assert default_analyser.decoders.worker_pids(), "decoder processes started with the service"
        ids = _queue(store, 3)
        worker.wake()
        deadline = time.monotonic() + 60
        while any(store.get_image(i).status != "done" for i in ids) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
    assert worker.recent.take(ids[0]) is None, "only the last two are kept"
    kept = worker.recent.take(ids[2])
    assert isinstance(kept, np.ndarray) and kept.ndim == 2
    assert worker.recent.take(ids[2]) is None, "taken once"
