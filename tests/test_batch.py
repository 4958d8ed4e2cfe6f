"""``fracsight batch`` on Ray (issue 15): one row per input, ``predict``'s answers to the last digit,
refusals with their reasons, no row lost to a killed worker, a stopped run resumed without
repeating work, Ray held to loopback.

The Ray tests share one single-machine Ray cluster started with ``ray start --head`` on 127.0.0.1
(the command's ``--address`` path); one test starts Ray the way the command does without
``--address``. A decoder process that aborts is made by ``tests/abort_hook`` (on PYTHONPATH of
every process here, Ray's workers included): a file whose name holds ``crash-me`` aborts it, as
GDCM does on some damaged codestreams. The Ray token comes from the environment, so nothing is
written to the home folder.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SAMPLE_PATIENT, stretched_sop_class_uid

from fracsight.cli import main

pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from fracsight.batch.engine import heatmap_target  # noqa: E402 - needs the cluster extra
from fracsight.batch.results import COLUMNS, ResultsFolder, display_path, row_of  # noqa: E402
from fracsight.io.listing import RESULTS_CSV_START, expand_paths  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HOOK = Path(__file__).resolve().parent / "abort_hook"
RAY = str(Path(sys.executable).with_name("ray"))
CRASH = "crash-me"
# Patient values of the bundled DX sample that must appear in no message or log (its UIDs hold
# digit runs such as 123456, so the ID is not searched for in Ray's logs).
PATIENT_NAMES = tuple(v for v in SAMPLE_PATIENT if not v.isdigit())
FRACATLAS_EACH = 100  # per class: 200 FracAtlas radiographs in the archive
IN_MANIFEST = FRACATLAS_EACH  # every other one of them in the manifest of the kill and resume tests


def _environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT / "src"), str(HOOK), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "PYTHONPATH": path,
        "FRACSIGHT_TEST_ABORT_ON": CRASH,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
        **extra,
    }


TOKEN = secrets.token_hex(32)


def _fracsight(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fracsight", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or _environment(),
    )


def _finish(process: subprocess.Popen, timeout: float = 400) -> tuple[int, str]:
    try:
        _, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
        pytest.fail(f"timed out: {err[-3000:]}")
    return process.returncode, err


def _rows(output: Path) -> list[dict]:
    table = pq.read_table(output)
    assert table.column_names == COLUMNS
    return table.to_pylist()


# --- processes and their sockets, from /proc ----------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    return children


def _descendants(pid: int) -> list[int]:
    children, found, pending = _children(), [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending += children.get(current, [])
    return found


def _title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address.split(":")[0])
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def _listening(pids: list[int]) -> list[tuple[str, str]]:
    """(process name, local address) of every listening TCP socket and bound UDP socket of ``pids``."""
    owner: dict[int, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owner[int(link[8:-1])] = pid
        except OSError:
            continue
    found = []
    for table, listening in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == listening and int(fields[9]) in owner:
                pid = owner[int(fields[9])]
                name = Path(f"/proc/{pid}/comm").read_text().strip() if Path(f"/proc/{pid}").exists() else "?"
                found.append((name, str(_address(fields[1]))))
    return found


def _is_loopback(text: str) -> bool:
    address = ipaddress.ip_address(text)
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


# --- the cluster and the archive ------------------------------------------------------------------


@dataclass
class Cluster:
    address: str
    pid: int
    temp: Path


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    """``ray start --head`` on 127.0.0.1 (2 CPUs), stopped by its own process at the end."""
    temp = Path(tempfile.mkdtemp(prefix="fsray-", dir="/tmp"))  # short: Ray's socket paths
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"127.0.0.1:{port}"
    env = _environment()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=500000000",
         f"--temp-dir={temp}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while subprocess.run(
            [RAY, "status", f"--address={address}"], env=env, capture_output=True
        ).returncode:
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.5)
        yield Cluster(address, head.pid, temp)
    finally:
        started = _descendants(head.pid)
        head.send_signal(signal.SIGTERM)  # ray start --block stops what it started...
        try:
            head.wait(3)
        except subprocess.TimeoutExpired:  # ... after draining for up to 30 s: not worth waiting for
            pass
        for pid in started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.wait(30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def archive(
    tmp_path_factory, dicom_dir: Path, graz_dir: Path, fracatlas_dir: Path, samples_dir: Path
) -> Path:
    """The shared samples, 200 FracAtlas radiographs and hostile files, in one folder tree."""
    root = tmp_path_factory.mktemp("archive")
    shutil.copytree(dicom_dir, root / "dicom")
    shutil.copytree(graz_dir, root / "graz")
    (root / "samples").mkdir()
    for sample in samples_dir.iterdir():
        if sample.suffix in (".jpg", ".dcm"):
            shutil.copyfile(sample, root / "samples" / sample.name)
    for label in ("Fractured", "Non_fractured"):
        (root / "fracatlas" / label).mkdir(parents=True)
        for image in sorted((fracatlas_dir / label).glob("*.jpg"))[:FRACATLAS_EACH]:
            shutil.copyfile(image, root / "fracatlas" / label / image.name)
    hostile = root / "hostile"
    hostile.mkdir()
    jpeg = (samples_dir / "IMG0001739.jpg").read_bytes()
    dx = (samples_dir / "hd_dx_image.dcm").read_bytes()
    (hostile / "truncated.jpg").write_bytes(jpeg[: len(jpeg) * 2 // 5])
    (hostile / "notes.dcm").write_text("no image here\n")
    (hostile / "empty.jpg").write_bytes(b"")
    (hostile / f"{CRASH}.dcm").write_bytes(dx)
    (hostile / "stretched.dcm").write_bytes(stretched_sop_class_uid(dx))
    with open(os.fsencode(hostile) + b"/caf\xe9.jpg", "wb") as latin1_name:
        latin1_name.write(jpeg)
    from PIL import Image

    Image.new("L", (16, 16), 128).save(hostile / "tiny.png")
    return root


@pytest.fixture(scope="module")
def predicted(archive: Path, tmp_path_factory) -> dict[str, dict]:
    """``fracsight predict --json`` on the archive, by absolute path as batch shows it."""
    out = tmp_path_factory.mktemp("predict") / "predict.jsonl"
    code, err = _finish(_fracsight("predict", str(archive), "--json", "--output", str(out), "--no-progress"))
    assert code == 1, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return {display_path(row["path"]): row for row in rows}


@pytest.fixture(scope="module")
def fracatlas_manifest(archive: Path) -> Path:
    """A CSV manifest of some of the archive's FracAtlas radiographs, relative to the archive."""
    manifest = archive / "fracatlas.csv"
    files = sorted(p.relative_to(archive) for p in (archive / "fracatlas").rglob("*.jpg"))[::2]
    manifest.write_text("path\n" + "".join(f"{f}\n" for f in files))
    return manifest


def _check_against_predict(rows: list[dict], predicted: dict[str, dict]) -> None:
    for row in rows:
        expected = predicted[row["path"]]
        if "probability" in expected:
            assert row["probability"] == expected["probability"], row["path"]  # to the last digit
            assert row["category"] == expected["category"]
            assert (row["model_id"], row["model_version"], row["onnx_sha256"]) == (
                expected["model"]["id"],
                expected["model"]["version"],
                expected["model"]["onnx_sha256"],
            )
            assert [row["study_uid"], row["series_uid"], row["sop_uid"]] == [
                expected["study_uid"],
                expected["series_uid"],
                expected["sop_uid"],
            ]
            assert row["error_code"] is None
        else:
            assert row["probability"] is None and row["category"] is None
            assert (row["error_code"], row["error"]) == (expected["error_code"], expected["error"])


def _parts_rows(output: Path) -> dict[str, int]:
    return {part.name: pq.read_metadata(part).num_rows for part in sorted(output.glob("part-*.parquet"))}


def _wait_for_parts(output: Path, process: subprocess.Popen, parts: int) -> None:
    deadline = time.monotonic() + 300
    while len(list(output.glob("part-*.parquet"))) < parts:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no part written"
        time.sleep(0.1)


# --- the tests ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_row_per_input_with_predicts_answers(
    cluster: Cluster, archive: Path, predicted: dict[str, dict], tmp_path: Path
) -> None:
    out = tmp_path / "results.parquet"
    code, err = _finish(
        _fracsight("batch", str(archive), "--output", str(out), "--address", cluster.address,
                   "--part-rows", "64", "--no-progress")
    )  # fmt: skip
    assert code == 1, err  # some inputs refused
    rows = _rows(out)
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == len(predicted) == len(expand_paths([str(archive)]))
    assert set(paths) == set(predicted)
    assert sum(row["probability"] is not None for row in rows) >= 2 * FRACATLAS_EACH
    _check_against_predict(rows, predicted)
    by_name = {os.path.basename(row["path"]): row for row in rows}
    assert by_name[f"{CRASH}.dcm"]["error_code"] == "decoder_failed"
    assert "killed by signal 6 (SIGABRT)" in by_name[f"{CRASH}.dcm"]["error"]
    assert by_name["truncated.jpg"]["error_code"] == "truncated"
    assert by_name["notes.dcm"]["error_code"] == by_name["empty.jpg"]["error_code"] == "unreadable"
    assert by_name["pyd_CT_small.dcm"]["error_code"] == "not_a_radiograph"
    assert by_name["tiny.png"]["error_code"] == "not_analysable"
    assert by_name["stretched.dcm"]["error_code"] == "not_a_radiograph"
    assert by_name["caf\\xe9.jpg"]["probability"] == by_name["IMG0001739.jpg"]["probability"]
    codes = Counter(row["error_code"] for row in rows if row["error_code"])
    summary = ", ".join(f"{code} {n}" for code, n in codes.most_common())
    assert f"{len(rows) - sum(codes.values())} analysed, {sum(codes.values())} refused ({summary})" in err
    # Nothing of the patient reaches the results, the console or Ray's logs on the node, and Ray's
    # logs name no input.
    files = [p for p in cluster.temp.rglob("*") if p.is_file() and p.stat().st_size < 1e8]
    logs = "".join(p.read_text(errors="replace") for p in files)
    assert not any(name in json.dumps(rows) + err + logs for name in PATIENT_NAMES)
    assert not any(name in logs for name in ("truncated.jpg", "notes.dcm", CRASH, "IMG0001739"))


@pytest.mark.slow
def test_a_killed_actor_and_decode_worker_cost_no_row(
    cluster: Cluster, archive: Path, fracatlas_manifest: Path, predicted: dict[str, dict], tmp_path: Path
) -> None:
    out = tmp_path / "results.parquet"
    run = _fracsight("batch", "--manifest", str(fracatlas_manifest), "--output", str(out),
                     "--address", cluster.address, "--part-rows", "10", "--no-progress")  # fmt: skip
    killed = {}
    # A decode task while it decodes (decoding runs ahead of the model, so this comes first), then
    # a model actor once rows are being written.
    for kind, parts in (("ray::MapBatches(decode)", 0), ("ray::MapWorker(MapBatches(ModelActor))", 1)):
        _wait_for_parts(out, run, parts)
        deadline = time.monotonic() + 60
        while kind not in killed and time.monotonic() < deadline and run.poll() is None:
            for pid in _descendants(cluster.pid):
                if _title(pid).startswith(kind):
                    os.kill(pid, signal.SIGKILL)
                    killed[kind] = pid
                    break
            time.sleep(0.02)
    assert len(killed) == 2 and run.poll() is None, f"killed only {killed}"
    code, err = _finish(run)
    assert code == 0, err
    rows = _rows(out)
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == IN_MANIFEST
    assert all(row["error_code"] is None for row in rows)  # a killed Ray worker is retried, not refused
    _check_against_predict(rows, predicted)


@pytest.mark.slow
def test_an_interrupted_run_resumes_without_repeating_work(
    cluster: Cluster, archive: Path, fracatlas_manifest: Path, predicted: dict[str, dict], tmp_path: Path
) -> None:
    """Stopped by SIGINT, continued by the same command; the inputs may come from another manifest."""
    out = tmp_path / "results.parquet"
    common = ["--output", str(out), "--address", cluster.address, "--part-rows", "10", "--no-progress"]
    first = _fracsight("batch", "--manifest", str(fracatlas_manifest), *common)
    _wait_for_parts(out, first, 2)
    first.send_signal(signal.SIGINT)
    code, err = _finish(first)
    assert code == 130, err
    assert "interrupted (SIGINT)" in err and "run the same command" in err
    before = _parts_rows(out)
    done = sum(before.values())
    assert 20 <= done < IN_MANIFEST  # two parts of a block (up to 16 rows) each, and not all
    assert len({row["path"] for row in _rows(out)}) == done
    # The same inputs, named by absolute paths in a Parquet manifest elsewhere.
    import pyarrow as pa

    files = [str(archive / line) for line in fracatlas_manifest.read_text().splitlines()[1:]]
    pq.write_table(pa.table({"path": files}), tmp_path / "same.parquet")
    code, err = _finish(_fracsight("batch", "--manifest", str(tmp_path / "same.parquet"), *common))
    assert code == 0, err
    assert f"{IN_MANIFEST} inputs: {done} already done, {IN_MANIFEST - done} to analyse" in err
    after = _parts_rows(out)
    assert {name: after[name] for name in before} == before  # the first run's parts are untouched
    assert sum(n for name, n in after.items() if name not in before) == IN_MANIFEST - done
    rows = _rows(out)
    assert len(rows) == len({row["path"] for row in rows}) == IN_MANIFEST
    _check_against_predict(rows, predicted)
    code, err = _finish(_fracsight("batch", "--manifest", str(fracatlas_manifest), *common))
    assert code == 0 and f"{IN_MANIFEST} already done, 0 to analyse" in err  # no Ray started
    assert _parts_rows(out) == after


@pytest.mark.slow
def test_ray_listens_on_loopback_only(cluster: Cluster, archive: Path, tmp_path: Path) -> None:
    """The test cluster (``ray start`` on 127.0.0.1) and the Ray the command starts without
    ``--address``; the latter also draws heat maps."""
    sockets = _listening(_descendants(cluster.pid))
    assert {"gcs_server", "raylet"} <= {name for name, _ in sockets}, sockets
    assert all(_is_loopback(address) for _, address in sockets), sockets

    out, heat = tmp_path / "results.parquet", tmp_path / "heat"
    temp = Path(tempfile.mkdtemp(prefix="fsray-", dir="/tmp"))
    try:
        run = _fracsight("batch", str(archive / "samples"), "--output", str(out), "--heatmaps", str(heat),
                         "--no-progress", env=_environment(RAY_TMPDIR=str(temp)))  # fmt: skip
        seen: set[tuple[str, str]] = set()
        while run.poll() is None:
            seen |= set(_listening(_descendants(run.pid)))
            time.sleep(0.2)
        code, err = _finish(run)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert code == 0, err
    assert {"gcs_server", "raylet"} <= {name for name, _ in seen}, seen
    assert all(_is_loopback(address) for _, address in seen), seen
    rows = _rows(out)
    assert len(rows) == 6 and all(row["heatmap"] for row in rows)
    from PIL import Image

    for row in rows:
        assert Path(row["heatmap"]) == heatmap_target(heat.resolve(), row["path"])
        with Image.open(row["heatmap"]) as picture:
            assert picture.text["fracsight:probability"] == f"{row['probability']:.6f}"
            assert picture.text["fracsight:onnx_sha256"] == row["onnx_sha256"]


@pytest.mark.slow
def test_precision_int8_runs_the_8bit_copy_on_every_actor(
    cluster: Cluster, int8_model: Path, samples_dir: Path, tmp_path: Path
) -> None:
    """``--precision int8`` sends the actors the 8-bit file and its card: every row names the
    8-bit model and its file, with ``predict --precision int8``'s answers to the last digit."""
    from fracsight.model_card import ModelCard

    card = ModelCard.for_model(int8_model.with_name("default.int8.onnx"))
    assert card.model_id == ModelCard.for_model(int8_model).model_id + "-int8"
    out, expected = tmp_path / "results.parquet", tmp_path / "predict.jsonl"
    code, err = _finish(
        _fracsight("batch", str(samples_dir), "--output", str(out), "--address", cluster.address,
                   "--model", str(int8_model), "--precision", "int8", "--no-progress")
    )  # fmt: skip
    assert code == 0, err
    code, err = _finish(
        _fracsight("predict", str(samples_dir), "--json", "--output", str(expected),
                   "--model", str(int8_model), "--precision", "int8", "--no-progress")
    )  # fmt: skip
    assert code == 0, err
    rows = _rows(out)
    assert len(rows) == 6
    assert {(r["model_id"], r["onnx_sha256"]) for r in rows} == {(card.model_id, card.onnx_sha256)}
    predicted = {display_path(r["path"]): r for r in map(json.loads, expected.read_text().splitlines())}
    _check_against_predict(rows, predicted)


# --- without Ray running ----------------------------------------------------------------------------


def test_a_manifest_without_paths_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results.parquet"
    (tmp_path / "files.csv").write_text("file,label\na.jpg,1\n")
    assert main(["batch", "--manifest", str(tmp_path / "files.csv"), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "has no 'path' column (its columns: file, label)" in err
    (tmp_path / "gaps.csv").write_text('path\na.jpg\n""\nb.jpg\n')
    assert main(["batch", "--manifest", str(tmp_path / "gaps.csv"), "--output", str(out)]) == 2
    assert "row 2 has no path" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text("a.jpg\n")
    assert main(["batch", "--manifest", str(tmp_path / "list.txt"), "--output", str(out)]) == 2
    assert "give a .csv or .parquet file" in capsys.readouterr().err
    assert main(["batch", "--output", str(out)]) == 2
    assert "give files or folders to analyse, or --manifest FILE" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["batch", str(tmp_path), "--output", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_an_address_where_no_cluster_answers_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], samples_dir: Path
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "results.parquet"
    assert main(["batch", str(samples_dir), "--output", str(out), "--address", f"127.0.0.1:{port}"]) == 2
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers there" in capsys.readouterr().err
    assert main(["batch", str(samples_dir), "--output", str(out), "--address", "head-node"]) == 2
    assert "give HOST:PORT, ray://HOST:PORT or auto" in capsys.readouterr().err
    assert not list(out.glob("part-*"))


def test_without_the_cluster_extra_batch_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], samples_dir: Path
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    assert main(["batch", str(samples_dir), "--output", str(tmp_path / "r.parquet")]) == 2
    assert "pip install 'fracsight[cluster]'" in capsys.readouterr().err


def test_fracsight_and_its_command_line_do_not_import_ray() -> None:
    code = "import sys, fracsight, fracsight.cli; fracsight.cli.build_parser(); print('ray' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "False"


def test_parts_are_whole_and_never_repeat_a_path(tmp_path: Path) -> None:
    folder = tmp_path / "results.parquet"
    results = ResultsFolder(folder)
    row = row_of({"path": "/a.jpg", "error_code": "unreadable", "error": "empty"})
    assert results.write([row, row]) == 1  # a path twice in one part: once
    assert results.write([row]) == 0 and len(results.parts()) == 1  # a path already written: never
    (folder / ".part-x-00001.parquet.tmp").write_bytes(b"PAR1 half")
    again = ResultsFolder(folder)  # a new run: the half part of a stopped one is gone
    assert not list(folder.glob(".part-*"))
    have, refused, duplicates = again.done({"/a.jpg", "/b.jpg"})
    assert (have, refused, duplicates) == (1, Counter(unreadable=1), 0)
    assert again.write([row, row_of({"path": "/b.jpg", "probability": 0.5, "category": "doubt"})]) == 1
    table = pq.read_table(folder)
    assert sorted(table.column("path").to_pylist()) == ["/a.jpg", "/b.jpg"]
    assert str(table.schema.field("probability").type) == "double"


def test_paths_are_absolute_and_names_that_are_not_utf8_are_escaped(tmp_path: Path) -> None:
    assert display_path("x/a.jpg") == os.path.join(os.getcwd(), "x", "a.jpg")
    assert display_path(os.fsdecode(b"/data/caf\xe9.jpg")) == "/data/caf\\xe9.jpg"
    first, second = heatmap_target(tmp_path, "/a/x.jpg"), heatmap_target(tmp_path, "/b/x.jpg")
    assert first != second and first.name.startswith("x.jpg~") and first.name.endswith(".heatmap.png")


def test_results_are_not_inputs(tmp_path: Path, samples_dir: Path) -> None:
    """Parquet parts, a results folder and predict's CSV under another name are skipped inside folders."""
    shutil.copyfile(samples_dir / "IMG0000001.jpg", tmp_path / "a.jpg")
    (tmp_path / "results.parquet").mkdir()
    (tmp_path / "results.parquet" / "part-1.parquet").write_bytes(b"PAR1")
    (tmp_path / "old.dat").write_bytes(b"PAR1....")
    (tmp_path / "old.out").write_bytes(RESULTS_CSV_START + b",error_code\n")
    assert [p.name for p in expand_paths([str(tmp_path)])] == ["a.jpg"]
    from fracsight.cli.predict_output import COLUMNS as PREDICT_COLUMNS

    assert RESULTS_CSV_START == ",".join(PREDICT_COLUMNS[:5]).encode()
