"""Images per second of ``fracsight predict`` and ``fracsight batch`` (Ray) on the same images: a table.

    python benchmarks/batch_speed.py [--count 2000] [--workers 1 2] [--data ../shared/data/fracatlas/images]

The first ``--count`` FracAtlas JPEGs in path order, behind one folder of links so that both
commands walk the same inputs. Each command runs as a user runs it: ``predict --json`` on all
cores, then ``batch`` on a Ray instance it starts on this machine with 1, then 2 model actors
(``--workers``); each on all the images and on the first 32, whose difference gives the cost per
image apart from the start-up. CPU seconds are summed over the command's whole process tree
(Ray's processes and the decoder processes included), sampled from /proc every 0.2 s. Ray's
overhead per image is batch's CPU time per image beyond predict's; its start-up is what remains
of the 32-image run. Last, how many rows per second the driver takes and writes to Parquet parts
(no Ray: the driver's ceiling, whatever the cluster's size).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "fracatlas" / "images"
_TICK = os.sysconf("SC_CLK_TCK")
# Each command also runs on the first FEW images: the difference is the cost per image, what is
# left of the FEW-image run is the start-up (loading the model; for batch, starting Ray too).
FEW = 32


def _tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        pending += children.get(current, [])
    return found


def _stat(pid: int) -> tuple[float, float]:
    """(start time, user + system CPU seconds) of one process, its own only (not its children's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return float(fields[19]), (int(fields[11]) + int(fields[12])) / _TICK


def run(command: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds of the process tree, and standard error of ``command``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seen: dict[tuple[int, float], float] = {}  # (pid, start time) -> last CPU seconds seen
    while process.poll() is None:
        for pid in _tree(process.pid):
            try:
                start, cpu = _stat(pid)
            except (OSError, IndexError, ValueError):
                continue
            seen[(pid, start)] = cpu
        time.sleep(0.2)
    err = process.stderr.read()
    wall = time.perf_counter() - started
    if process.returncode not in (0, 1):
        sys.exit(f"{' '.join(command[:4])} ... failed ({process.returncode}):\n{err[-2000:]}")
    return wall, sum(seen.values()), err


def driver_rows_per_second(rows: int = 200_000) -> float:
    """Rows per second the driver takes from Arrow blocks of 16 and writes as Parquet parts of 10,000."""
    import pyarrow as pa

    from fracsight.batch.results import ResultsFolder, row_of, schema

    block = [
        row_of({"path": f"/archive/{i:08d}.dcm", "probability": 0.5, "category": "doubt", "heatmap": None})
        for i in range(16)
    ]
    tables = [
        pa.Table.from_pylist([{**r, "path": f"{r['path']}.{n}"} for r in block], schema=schema())
        for n in range(rows // 16)
    ]
    with tempfile.TemporaryDirectory() as folder:
        results = ResultsFolder(Path(folder) / "results.parquet")
        buffer: list[dict] = []
        started = time.perf_counter()
        for table in tables:
            for row in table.to_pylist():
                if row["path"] not in results.written:
                    buffer.append(row)
            if len(buffer) >= 10_000:
                results.write(buffer)
                buffer = []
        results.write(buffer)
        return rows / (time.perf_counter() - started)


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) / 2**20
    return f"{os.cpu_count()} cores ({model}), {memory:.0f} GiB, load average {os.getloadavg()[0]:.1f}"


def _batch_command(workers: int):
    return lambda inputs, out: ["batch", inputs, "--output", out, "--workers", str(workers)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    images = sorted(args.data.rglob("*.jpg"))[: args.count]
    if len(images) < args.count or args.count <= FEW:
        sys.exit(f"{args.data}: {len(images)} JPEGs; --count must be at most that and more than {FEW}")
    print(f"machine: {machine()}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as work:
        folders = {}
        for name, chosen in (("all", images), ("few", images[:FEW])):
            folders[name] = Path(work) / name
            folders[name].mkdir()
            for i, image in enumerate(chosen):
                (folders[name] / f"{i:05d}_{image.name}").symlink_to(image)
        fracsight = [sys.executable, "-m", "fracsight"]
        commands = {"predict": lambda inputs, out: ["predict", inputs, "--json", "--output", out]}
        for workers in args.workers:
            name = f"batch, {workers} worker{'s' if workers > 1 else ''}"
            commands[name] = _batch_command(workers)
        for name, command in commands.items():
            measured = {}
            for size in ("few", "all"):
                out = str(Path(work) / f"{len(results)}-{size}.out")
                measured[size] = run([*fracsight, *command(str(folders[size]), out), "--no-progress"])
                wall, cpu, _ = measured[size]
                print(f"{name}, {size}: {wall:.1f} s, {cpu:.1f} CPU s", flush=True)
            startup = re.search(r"([\d.]+) s of it starting Ray", measured["all"][2])
            results.append(
                (name, measured["few"][:2], measured["all"][:2], startup and float(startup.group(1)))
            )
    n = args.count
    print(f"\n{n} FracAtlas JPEGs (first in path order); {machine()}\n")
    print("| command | images/s, end to end | wall ms/image | CPU ms/image | beyond predict | start-up |")
    print("|---|---|---|---|---|---|")
    predict_cpu = None
    for name, (wall0, cpu0), (wall, cpu), ray_start in results:
        marginal_wall, marginal_cpu = (wall - wall0) / (n - FEW), (cpu - cpu0) / (n - FEW)
        predict_cpu = marginal_cpu if predict_cpu is None else predict_cpu
        start = wall0 - FEW * marginal_wall
        print(
            f"| {name} | {n / wall:.1f} | {marginal_wall * 1e3:.1f} | {marginal_cpu * 1e3:.1f} | "
            f"{(marginal_cpu - predict_cpu) * 1e3:+.1f} | {start:.1f} s"
            + (f" (Ray {ray_start:.1f} s)" if ray_start is not None else "")
            + " |"
        )
    rate = driver_rows_per_second()
    print(f"\ndriver: {rate:,.0f} rows/s taken from Arrow blocks and written as Parquet parts")


if __name__ == "__main__":
    main()
