"""What the out-of-scope check costs per image on this machine's CPU; prints a table.

    python benchmarks/scope_speed.py [--model M.onnx] [--images DIR] [--n 20] [--rounds 7]

The issue asks that the check add at most 2 ms per image to ``predict``. Measured side by side
in the same rounds, alternating (the order reversed every other round), on the same prepared
images, so that a shared machine's changing load falls on every row alike; each row is the
median over every image of every round; the model's two calls are also compared image by image
(the median of their paired differences):

* the model alone, asked for what ``predict`` needed before the check (logit, heat map);
* the model asked also for the check's outputs (region head, pooled features), as
  ``Analyser.run_outputs`` does now: the difference is what the extra outputs cost;
* ``ScopeCheck.score`` alone (the distance), and ``check_scope`` (distance, threshold, region and
  Body Part Examined, the reason in words), and ``Analyser.scope_of`` (the whole step ``predict``
  times as ``scope``, with the region head's sigmoid and names).

Images: typical FracAtlas JPEGs, the first ``--n`` of ``--images`` (default: FracAtlas in
../shared/data, else the bundled samples).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from fracsight.inference import Analyser  # noqa: E402
from fracsight.safety import check_scope  # noqa: E402

FRACATLAS = ROOT.parent / "shared" / "data" / "fracatlas" / "images"
SAMPLES = ROOT / "src" / "fracsight" / "samples"


def _images(folder: Path | None, n: int) -> list[Path]:
    if folder is None:
        folder = FRACATLAS if FRACATLAS.is_dir() else SAMPLES
    return sorted(folder.rglob("*.jpg"))[:n]


def extra_nodes(model_path: Path) -> str:
    """The graph nodes on which only the extra outputs depend: all the work they can add, beside
    what the timing can resolve on a busy machine."""
    try:
        import onnx
    except ImportError:
        return "(onnx not installed: the graph was not inspected)"
    graph = onnx.load(str(model_path)).graph
    producer = {out: node for node in graph.node for out in node.output}

    def ancestors(outputs: list[str]) -> set[int]:
        seen: set[int] = set()
        stack = list(outputs)
        while stack:
            node = producer.get(stack.pop())
            if node is not None and id(node) not in seen:
                seen.add(id(node))
                stack.extend(node.input)
        return seen

    only = ancestors(["region", "features"]) - ancestors(["logit", "heatmap"])
    ops = [n.op_type for n in graph.node if id(n) in only and n.op_type != "Constant"]
    counts = ", ".join(f"{ops.count(op)} {op}" for op in sorted(set(ops)))
    return (
        f"only the extra outputs depend on {len(only)} of the {len(graph.node)} graph nodes: {counts} "
        "(and constants)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    analyser = Analyser(args.model)
    check = analyser.scope_check
    if check is None:
        raise SystemExit("the model has no fitted out-of-scope check (card section 'out_of_scope')")
    paths = _images(args.images, args.n)
    prepared = [analyser.preparer.prepare(p) for p in paths]
    images = [item.image[None] for item in prepared if item.refusal is None]
    feeds = [{"image": image[:, None].astype(np.float32)} for image in images]
    outputs = [analyser.run_outputs(image) for image in images]
    features = [o.features[0] for o in outputs]
    regions = [dict(zip(analyser.region_labels, map(float, o.region[0]), strict=True)) for o in outputs]
    names = {o.name for o in analyser.session.get_outputs()}
    extra = [name for name in ("region", "features") if name in names]

    def model(names: list[str]):
        return lambda feed: analyser.session.run(names, feed)

    def per_image(fn, items):
        return lambda i: fn(items[i])

    stages = {
        "model alone (logit, heat map)": per_image(model(["logit", "heatmap"]), feeds),
        "model with the extra outputs (+ region, features)": per_image(
            model(["logit", "heatmap", *extra]), feeds
        ),
        "ScopeCheck.score (distance only)": per_image(check.score, features),
        "check_scope (distance + region + body part)": lambda i: check_scope(
            check, features[i], regions[i], None
        ),
        "Analyser.scope_of (the step predict times as 'scope')": lambda i: analyser.scope_of(
            outputs[i], 0, None
        ),
    }
    order = list(stages.items())
    for _, fn in order:
        fn(0)  # warm-up
    # Each image goes through every stage in turn, the order reversed every other image and round,
    # so the two model calls of a pair see the same load: their paired difference is what the extra
    # outputs cost, far steadier than the difference of two medians on a busy machine.
    times: dict[str, list[float]] = {name: [] for name in stages}
    cpu: dict[str, list[float]] = {name: [] for name in stages}
    for r in range(args.rounds):
        for i in range(len(images)):
            for name, fn in order if (r + i) % 2 == 0 else reversed(order):
                c0, t0 = time.process_time(), time.perf_counter()
                fn(i)
                times[name].append((time.perf_counter() - t0) * 1e3)
                cpu[name].append((time.process_time() - c0) * 1e3)
    med = {name: statistics.median(values) for name, values in times.items()}
    med_cpu = {name: statistics.median(values) for name, values in cpu.items()}
    alone, with_extra = (np.asarray(times[n]) for n in list(stages)[:2])
    added = float(np.median(with_extra - alone))
    added_cpu = float(np.median(np.subtract(*(cpu[n] for n in list(stages)[1::-1]))))
    step = med["Analyser.scope_of (the step predict times as 'scope')"]
    step_cpu = med_cpu["Analyser.scope_of (the step predict times as 'scope')"]

    print(
        f"{len(images)} FracAtlas JPEGs from {paths[0].parent if paths else '?'}, {args.rounds} rounds "
        f"({len(alone)} calls per stage), alternating; {platform.machine()}, {os.cpu_count()} cores; "
        f"ONNX Runtime threads as predict uses them; load average {os.getloadavg()[0]:.1f} at the end"
    )
    print("| stage | wall ms per image (median) | wall IQR | CPU ms per image (median, all threads) |")
    print("|---|---|---|---|")
    for name in stages:
        lo, hi = np.percentile(times[name], [25, 75])
        print(f"| {name} | {med[name]:.3f} | {lo:.3f}-{hi:.3f} | {med_cpu[name]:.3f} |")
    lo, hi = np.percentile(with_extra - alone, [25, 75])
    print(f"| extra outputs: paired difference, same image | {added:.3f} | {lo:.3f}-{hi:.3f} | "
          f"{added_cpu:.3f} |")  # fmt: skip
    print(f"| **the check adds** (extra outputs + scope_of) | **{added + step:.3f}** | | "
          f"**{added_cpu + step_cpu:.3f}** |")  # fmt: skip
    print("target: at most 2 ms per image")
    print(extra_nodes(analyser.model_path))

if __name__ == "__main__":
    main()
