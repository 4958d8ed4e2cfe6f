"""Users and hardening of the web service: own tokens and roles, verdicts under the signed-in
reader, security headers, owner-only files, spreadsheet-safe CSV.

The app runs in-process (FastAPI's TestClient) over a real SQLite store and a real analysis
worker with the shipped model.
"""

from __future__ import annotations

import csv
import io
import os
import stat
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from fracsight.cli import main  # noqa: E402
from fracsight.service.store import SqliteStore  # noqa: E402
from fracsight.service.users import UserDirectory, token_hash  # noqa: E402
from fracsight.service.web import create_app  # noqa: E402
from fracsight.service.worker import AnalysisWorker  # noqa: E402

SITE = {"Authorization": "Bearer " + "s" * 24}


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, default_analyser):
    store = SqliteStore(tmp_path_factory.mktemp("users"))
    worker = AnalysisWorker(store, default_analyser, poll_s=0.2)
    worker.start()
    client = TestClient(create_app(store, worker, "s" * 24, 4 * 1024 * 1024))
    yield client, store
    worker.stop()


def _analysed(client: TestClient, data: bytes, name: str = "x.jpg") -> dict:
    ack = client.post("/api/images", files={"file": (name, data)}, headers=SITE)
    assert ack.status_code == 202, ack.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = client.get(f"/api/images/{ack.json()['id']}", headers=SITE).json()
        if body["status"] not in ("queued", "analysing"):
            return body
        time.sleep(0.1)
    raise AssertionError("not analysed in 60 s")


def _add(client: TestClient, name: str, role: str = "reader") -> str:
    r = client.post("/api/users", json={"name": name, "role": role}, headers=SITE)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name and r.json()["role"] == role
    return r.json()["token"]


def _verdict(image: dict) -> dict:
    return {"fracture": True} if image["category"] == "doubt" else {"agree": True}


def test_two_readers_each_verdict_carries_its_reader(service, sample_images: list[Path]) -> None:
    client, store = service
    ana, ben = _add(client, "Dr Ana"), _add(client, "Dr Ben")
    assert ana != ben and len(ana) >= 40
    image = _analysed(client, next(p for p in sample_images if p.name == "IMG0000001.jpg").read_bytes())
    url = f"/api/images/{image['id']}/feedback"
    for token, note in ((ana, "ana's note"), (ben, "ben's note")):
        r = client.post(url, json={**_verdict(image), "note": note}, headers=_auth(token))
        assert r.status_code == 201, r.text
    verdicts = client.get(f"/api/images/{image['id']}", headers=_auth(ana)).json()["feedback"]
    assert [(v["reader"], v["note"]) for v in verdicts] == [
        ("Dr Ana", "ana's note"),
        ("Dr Ben", "ben's note"),
    ]
    rows = [r for r in csv.DictReader(io.StringIO(client.get("/api/feedback.csv", headers=_auth(ben)).text))
            if r["id"] == image["id"]]  # fmt: skip
    assert [r["reader"] for r in rows] == ["Dr Ana", "Dr Ben"]
    # "Read" is marked by the signed-in reader too.
    r = client.post(f"/api/studies/{image['study']}/read", json={"read": True}, headers=_auth(ben))
    assert r.status_code == 200 and r.json()["reader"] == "Dr Ben"
    listed = {s["study"]: s for s in client.get("/api/studies?read=true", headers=_auth(ana)).json()}
    assert listed[image["study"]]["read_by"] == "Dr Ben"
    assert client.get("/api/me", headers=_auth(ana)).json() == {"name": "Dr Ana", "role": "reader"}
    assert client.get("/api/me", headers=SITE).json() == {"name": "site-token", "role": "admin"}
    # Tokens are kept hashed only.
    raw = b"".join(p.read_bytes() for p in store.data_dir.glob("fracsight.db*"))  # with the -wal
    assert ana.encode() not in raw and token_hash(ana).encode() in raw


def test_a_reader_cannot_act_as_another(service, sample_images: list[Path]) -> None:
    client, store = service
    cleo = _add(client, "Dr Cleo")
    image = _analysed(client, next(p for p in sample_images if p.name == "IMG0000020.jpg").read_bytes())
    before = len(store.feedback(image["id"]))
    url = f"/api/images/{image['id']}/feedback"
    r = client.post(url, json={**_verdict(image), "reader": "Dr Dan"}, headers=_auth(cleo))
    assert r.status_code == 403 and "Dr Cleo" in r.json()["detail"]
    r = client.post(f"/api/studies/{image['study']}/read", json={"reader": "Dr Dan"}, headers=_auth(cleo))
    assert r.status_code == 403
    assert len(store.feedback(image["id"])) == before
    # Giving one's own name is accepted (older clients send it).
    r = client.post(url, json={**_verdict(image), "reader": "Dr Cleo"}, headers=_auth(cleo))
    assert r.status_code == 201 and store.feedback(image["id"])[-1].reader == "Dr Cleo"


def test_a_reader_cannot_use_administrator_endpoints(service) -> None:
    client, _ = service
    reader = _auth(_add(client, "Dr Eve"))
    assert client.get("/api/users", headers=reader).status_code == 403
    mallory = {"name": "mallory", "role": "admin"}
    assert client.post("/api/users", json=mallory, headers=reader).status_code == 403
    assert client.delete("/api/users/Dr Ana", headers=reader).status_code == 403
    assert client.post("/api/sends/resend", headers=reader).status_code == 403
    names = [u["name"] for u in client.get("/api/users", headers=SITE).json()]
    assert "mallory" not in names and "Dr Eve" in names
    assert all("token" not in u for u in client.get("/api/users", headers=SITE).json())
    # An administrator account may, like the site token.
    admin = _auth(_add(client, "Ada", role="admin"))
    assert client.get("/api/users", headers=admin).status_code == 200
    taken = {"name": "Dr Eve", "role": "reader"}
    assert client.post("/api/users", json=taken, headers=admin).status_code == 409
    for bad in ({"name": "site-token", "role": "reader"}, {"name": "x", "role": "root"},
                {"name": "", "role": "reader"}, {"name": "a/b", "role": "reader"}):  # fmt: skip
        assert client.post("/api/users", json=bad, headers=admin).status_code == 422, bad


def test_unknown_and_revoked_tokens_are_refused(service) -> None:
    client, _ = service
    frank = _auth(_add(client, "Dr Frank"))
    assert client.get("/api/studies", headers=frank).status_code == 200
    for header in ({"Authorization": "Bearer " + "u" * 43}, {"Authorization": "Bearer "}, {}):
        assert client.get("/api/studies", headers=header).status_code == 401
    revoked = client.delete("/api/users/Dr Frank", headers=SITE)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    assert client.get("/api/studies", headers=frank).status_code == 401
    assert client.get("/api/me", headers=frank).status_code == 401
    assert client.delete("/api/users/nobody", headers=SITE).status_code == 404
    assert client.delete("/api/users/site-token", headers=SITE).status_code == 404


def test_users_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    SqliteStore(data)
    assert main(["users", "add", "Dr Gus", "--role", "reader", "--data", str(data)]) == 0
    token = capsys.readouterr().out.strip()
    assert main(["users", "add", "Root", "--role", "admin", "--data", str(data)]) == 0
    capsys.readouterr()
    directory = UserDirectory.of_data_dir(data)
    assert directory.authenticate(token).name == "Dr Gus"
    assert main(["users", "add", "Dr Gus", "--data", str(data)]) == 2  # the name is taken
    assert main(["users", "list", "--data", str(data)]) == 0
    listing = capsys.readouterr().out
    assert "Dr Gus\treader" in listing and "Root\tadmin" in listing and token not in listing
    assert main(["users", "revoke", "Dr Gus", "--data", str(data)]) == 0
    assert directory.authenticate(token) is None
    assert main(["users", "token", "Dr Gus", "--data", str(data)]) == 0
    fresh = capsys.readouterr().out.strip()
    assert fresh != token and directory.authenticate(fresh).name == "Dr Gus"
    assert directory.authenticate(token) is None
    assert main(["users", "list", "--data", str(tmp_path / "none")]) == 2


def test_security_headers_on_every_response(service) -> None:
    client, _ = service
    for path, headers, status in (("/", {}, 200), ("/static/app.js", {}, 200), ("/api/health", {}, 200),
                                  ("/api/studies", SITE, 200), ("/api/studies", {}, 401),
                                  ("/api/images/nope", SITE, 404), ("/nowhere", {}, 404)):  # fmt: skip
        r = client.get(path, headers=headers)
        assert r.status_code == status, path
        assert "default-src 'none'" in r.headers["content-security-policy"], path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "unsafe-inline" not in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        if path.startswith("/api/"):
            assert r.headers["cache-control"] == "no-store", path
    # The page needs no inline code, so the policy can forbid it.
    page = client.get("/").text
    assert "<script>" not in page and "<style" not in page and " on" + "click=" not in page


def test_feedback_csv_neutralises_formulas(service, sample_images: list[Path]) -> None:
    client, _ = service
    image = _analysed(client, next(p for p in sample_images if p.name == "IMG0001739.jpg").read_bytes())
    url = f"/api/images/{image['id']}/feedback"
    notes = ["=1+1", "+1", "-2+3", "@SUM(A1)", "\tx", "\r=2", "plain -ok"]
    for note in notes:
        assert client.post(url, json={**_verdict(image), "note": note}, headers=SITE).status_code == 201
    rows = list(csv.DictReader(io.StringIO(client.get("/api/feedback.csv", headers=SITE).text, newline="")))
    written = [r["note"] for r in rows if r["id"] == image["id"]][-len(notes):]
    assert written == ["'=1+1", "'+1", "'-2+3", "'@SUM(A1)", "'\tx", "'\r=2", "plain -ok"]
    # The API itself keeps what the reader typed.
    assert client.get(f"/api/images/{image['id']}", headers=SITE).json()["feedback"][-2]["note"] == "\r=2"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_and_files_are_owner_only(service, sample_images: list[Path], tmp_path: Path) -> None:
    client, store = service
    _analysed(client, next(p for p in sample_images if p.suffix == ".dcm").read_bytes(), "d.dcm")
    data = store.data_dir
    files = [p for p in data.rglob("*") if p.is_file()]
    kinds = {p.suffix for p in files}
    assert {".db", ".u16", ".dcm", ".jpg"} <= kinds and any(p.name.endswith("-wal") for p in files), kinds
    for path in files:
        assert _mode(path) & 0o077 == 0, (path, oct(_mode(path)))
    for folder in [data, *(p for p in data.rglob("*") if p.is_dir())]:
        assert _mode(folder) & 0o077 == 0, (folder, oct(_mode(folder)))


def test_an_older_stores_files_are_tightened_at_start(tmp_path: Path) -> None:
    data = tmp_path / "old"
    SqliteStore(data).close()
    (data / "display" / "ab").mkdir(parents=True)
    old = [data / "fracsight.db", data / "display" / "ab" / "ab12.u16"]
    old[1].write_bytes(b"\0" * 8)
    theirs = data / "site-notes.txt"  # not the service's: left as it is
    theirs.write_text("x")
    for path in [*old, theirs]:
        path.chmod(0o644)
    for folder in (data, data / "display", data / "display" / "ab"):
        folder.chmod(0o755)
    os.umask(0o022)  # as a fresh process has it
    SqliteStore(data)
    assert [_mode(p) for p in old] == [0o600, 0o600] and _mode(theirs) == 0o644
    assert [_mode(f) for f in (data, data / "display", data / "display" / "ab")] == [0o700] * 3
    (data / "display" / "cd").mkdir()  # made after the start: owner-only too
    assert _mode(data / "display" / "cd") == 0o700
