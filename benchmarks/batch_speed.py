"""Images per second of ``fracsight predict`` and ``fracsight batch`` (Ray) on the same images: a table.

    python benchmarks/batch_speed.py [--count 2000] [--workers 1 2] [--data ../shared/data/fracatlas/images]
        [--model M.onnx] [--precision both|float32|int8] [--rounds 1]

The first ``--count`` FracAtlas JPEGs in path order, behind one folder of links so that both
commands walk the same inputs. Each command runs as a user runs it: ``predict --json`` on all
cores, then ``batch`` on a Ray instance it starts on this machine with 1, then 2 model actors
(``--workers``); each on all the images and on the first 32, whose difference gives the cost per
image apart from the start-up. CPU seconds are summed over the command's whole process tree
(Ray's processes and the decoder processes included), sampled from /proc every 0.2 s. Ray's
overhead per image is batch's CPU time per image beyond predict's; its start-up is what remains
of the 32-image run. Last, how many rows per second the driver takes and writes to Parquet parts
(no Ray: the driver's ceiling, whatever the cluster's size).

float32 and 8-bit side by side (``--precision both``, the default): every command run is made
with ``--precision float32`` and with ``--precision int8`` one after the other, the order reversed
every other round (``--rounds``), so a shared machine's changing load hits both alike; each
figure is the median over the rounds, and a second table gives the ratios int8 / float32. The
8-bit model is NAME.int8.onnx (with its card) beside ``--model``; without it only float32 is
measured. The shipped model has none (it does not meet the agreement bar, training/README.md); to
measure one, make a site copy and quantise it::

    mkdir /tmp/q && cp src/fracsight/models/default.onnx src/fracsight/models/default.card.json /tmp/q/
    fracsight quantise /tmp/q/default.onnx --data /work/shared/data/fracatlas \
        --split-file training/default-run/split.csv --calibration-images 60 --evaluate-images 40
    python benchmarks/batch_speed.py --model /tmp/q/default.onnx --count 200 --rounds 3

(``fracsight quantise`` needs the ``train`` extra; fewer calibration and evaluation images make it
quicker, not the 8-bit model any faster.) The model ids the outputs carry are printed, so the
table says which model answered.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from precision_choice import add_precision_option  # beside this script
from precision_choice import precisions as precisions_to_measure

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




def _model_ids(out: Path) -> set[str]:
    """The model ids a command's output carries: predict's JSON lines, or batch's Parquet parts."""
    import json

    if out.is_dir():
        import pyarrow.parquet as pq

        return {m for m in pq.read_table(out, columns=["model_id"]).column("model_id").to_pylist() if m}
    rows = (json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line.strip())
    return {row["model"]["id"] for row in rows if "model" in row}


@dataclass
class Measured:
    """One command at one precision: each round's (wall s, CPU s) on the few and on all the images,
    the Ray start-up the last run reported, and the model ids its outputs carried."""

    few: list[tuple[float, float]] = field(default_factory=list)
    all: list[tuple[float, float]] = field(default_factory=list)
    ray_start: float | None = None
    models: set[str] = field(default_factory=set)

    def figures(self, n: int) -> tuple[float, float, float, float]:
        """(end-to-end images/s, marginal wall s/image, marginal CPU s/image, start-up s), from the
        medians over the rounds."""
        wall0, cpu0 = (statistics.median(v) for v in zip(*self.few, strict=True))
        wall, cpu = (statistics.median(v) for v in zip(*self.all, strict=True))
        marginal_wall, marginal_cpu = (wall - wall0) / (n - FEW), (cpu - cpu0) / (n - FEW)
        return n / wall, marginal_wall, marginal_cpu, wall0 - FEW * marginal_wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data", type=Path, default=DATA)
    add_precision_option(parser)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every command and precision")
    args = parser.parse_args()
    images = sorted(args.data.rglob("*.jpg"))[: args.count]
    if len(images) < args.count or args.count <= FEW:
        sys.exit(f"{args.data}: {len(images)} JPEGs; --count must be at most that and more than {FEW}")
    precisions = precisions_to_measure(args.model, args.precision)
    print(f"machine: {machine()}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        folders = {}
        for name, chosen in (("all", images), ("few", images[:FEW])):
            folders[name] = Path(work) / name
            folders[name].mkdir()
            for i, image in enumerate(chosen):
                (folders[name] / f"{i:05d}_{image.name}").symlink_to(image)
        fracsight = [sys.executable, "-m", "fracsight"]
        model = ["--model", args.model] if args.model else []
        commands = {"predict": lambda inputs, out: ["predict", inputs, "--json", "--output", out]}
        for workers in args.workers:
            name = f"batch, {workers} worker{'s' if workers > 1 else ''}"
            commands[name] = _batch_command(workers)
        results = {(name, p): Measured() for name in commands for p in precisions}
        runs = 0
        for r in range(args.rounds):
            for name, command in commands.items():
                for size in ("few", "all"):
                    for precision in precisions if r % 2 == 0 else precisions[::-1]:
                        runs += 1
                        out = Path(work) / f"{runs}.out"
                        wall, cpu, err = run(
                            [*fracsight, *command(str(folders[size]), str(out)), *model,
                             "--precision", precision, "--no-progress"]
                        )  # fmt: skip
                        measured = results[(name, precision)]
                        getattr(measured, size).append((wall, cpu))
                        measured.models |= _model_ids(out)
                        startup = re.search(r"([\d.]+) s of it starting Ray", err)
                        if size == "all" and startup:
                            measured.ray_start = float(startup.group(1))
                        print(f"round {r + 1}, {name}, {precision}, {size}: {wall:.1f} s, {cpu:.1f} CPU s",
                              flush=True)  # fmt: skip
    n = args.count
    rounds = f"median of {args.rounds} rounds" if args.rounds > 1 else "one round"
    print(
        f"\n{n} FracAtlas JPEGs (first in path order); {machine()}; {' and '.join(precisions)}"
        f"{' alternating' if len(precisions) == 2 else ''}, {rounds}"
    )
    for precision in precisions:
        answered = sorted(set().union(*(results[(c, precision)].models for c in commands)))
        print(f"# {precision}: outputs name the model {', '.join(answered) or 'none'}")
    print(
        "\n| command | precision | images/s, end to end | wall ms/image | CPU ms/image | beyond predict "
        "| start-up |"
    )
    print("|---|---|---|---|---|---|---|")
    figures = {key: m.figures(n) for key, m in results.items()}
    for (name, precision), (rate, marginal_wall, marginal_cpu, start) in figures.items():
        predict_cpu = figures[("predict", precision)][2]
        ray_start = results[(name, precision)].ray_start
        print(
            f"| {name} | {precision} | {rate:.1f} | {marginal_wall * 1e3:.1f} | {marginal_cpu * 1e3:.1f} | "
            f"{(marginal_cpu - predict_cpu) * 1e3:+.1f} | {start:.1f} s"
            + (f" (Ray {ray_start:.1f} s)" if ray_start is not None else "")
            + " |"
        )
    if len(precisions) == 2:
        print(
            "\n| command | float32 images/s | int8 images/s | int8 / float32 | float32 wall ms/image "
            "| int8 wall ms/image | int8 / float32 | CPU ms/image, int8 / float32 |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for name in commands:
            f, q = figures[(name, "float32")], figures[(name, "int8")]
            print(
                f"| {name} | {f[0]:.1f} | {q[0]:.1f} | {q[0] / f[0]:.2f} | {f[1] * 1e3:.1f} | "
                f"{q[1] * 1e3:.1f} | {q[1] / f[1]:.2f} | {q[2] / f[2]:.2f} |"
            )
    rate = driver_rows_per_second()
    print(f"\ndriver: {rate:,.0f} rows/s taken from Arrow blocks and written as Parquet parts")


if __name__ == "__main__":
    main()
