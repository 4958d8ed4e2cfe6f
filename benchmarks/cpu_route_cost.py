"""What the "CPU route" of the model v2 issue would cost on this machine; prints a table.

    python benchmarks/cpu_route_cost.py [--size 384] [--batch 16] [--epochs 20]

Why: when no GPU is lent for a long while, the issue asks whether the recipe can be run on the
CPU instead: freeze the backbone's early blocks, compute their output once for every
development image in all eight orientations (four turns, each mirrored), and train only the
last blocks and the heads, with the same five grouped folds. This times, with PyTorch on this
CPU, the three costs that decide it: the frozen trunk's forward pass (the cache, paid once per
image and orientation), a training step of what stays trainable (per image and epoch), and, for
comparison, a training step of the whole network (the GPU recipe). It then projects hours for
the development split of FracAtlas (2,766 images, about 2,213 per fold's training part).
Weights are ImageNet's; time does not depend on them. Needs the training extra (torch).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

DEV_IMAGES = 2766  # 'dev' rows of training/default-run/split.csv
TRAIN_PER_FOLD = 2213  # four folds of five
ORIENTATIONS = 8
FOLDS = 5


def _seconds(step, repeats: int = 3) -> float:
    step()  # the first call pays for allocation and kernel choice
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def _measure(cut_after: str, size: int, batch: int) -> tuple[float, float, float]:
    """(trunk forward, trainable part's train step, whole network's train step), seconds per image."""
    import torch
    import torch.nn.functional as F

    from fracsight.training.network import FractureNet

    net = FractureNet("lite0")
    bb = net.backbone
    cut = bb.stride16_block if cut_after == "stage 5 (stride 16)" else len(bb._blocks) - 2
    frozen, trainable = bb._blocks[: cut + 1], bb._blocks[cut + 1 :]
    image = torch.randn(batch, 1, size, size)

    def trunk(x: torch.Tensor) -> torch.Tensor:
        x = bb.act(bb._bn0(bb._conv_stem(x.expand(-1, 3, -1, -1))))
        for block in frozen:
            x = block(x)
        return x

    net.eval()
    with torch.no_grad():
        cached = trunk(image)
        forward = _seconds(lambda: trunk(image)) / batch

    net.train()
    top = list(trainable.parameters()) + list(bb._conv_head.parameters()) + list(bb._bn1.parameters())
    optimiser = torch.optim.AdamW(top + list(net.cam.parameters()), 1e-3)

    def top_step() -> None:
        x = cached
        for block in trainable:
            x = block(x)
        cells = net.cam(bb.act(bb._bn1(bb._conv_head(x))))
        if cut == bb.stride16_block:  # the fine heat map reads the cached stride-16 features
            cells = F.interpolate(cells, size=cached.shape[-2:], mode="bilinear") + net.fine_cam(cached)
        loss = cells.flatten(1).logsumexp(1).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    whole_optimiser = torch.optim.AdamW(net.parameters(), 1e-3)

    def whole_step() -> None:
        loss = net(image).logit.mean()
        whole_optimiser.zero_grad()
        loss.backward()
        whole_optimiser.step()

    return forward, _seconds(top_step) / batch, _seconds(whole_step, repeats=2) / batch


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20, help="epochs per fold (v2 stopped at 9-25)")
    args = parser.parse_args()
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(
        f"# {platform.processor() or platform.machine()}, {threads} threads, load {os.getloadavg()[0]:.1f}, "
        f"torch {torch.__version__}, {args.size} px, batch {args.batch}"
    )
    print(
        "| frozen up to | trunk forward ms/img | trainable step ms/img | whole-network step ms/img "
        "| cache, h | 5 folds x epochs, h | whole network, same, h |"
    )
    print("|---|---|---|---|---|---|---|")
    for cut in ("stage 5 (stride 16)", "stage 6 (all but the last block)"):
        forward, top, whole = _measure(cut, args.size, args.batch)
        cache_h = DEV_IMAGES * ORIENTATIONS * forward / 3600
        train_h = FOLDS * args.epochs * TRAIN_PER_FOLD * top / 3600
        whole_h = FOLDS * args.epochs * TRAIN_PER_FOLD * whole / 3600
        print(
            f"| {cut} | {forward * 1000:.0f} | {top * 1000:.0f} | {whole * 1000:.0f} "
            f"| {cache_h:.1f} | {train_h:.1f} | {whole_h:.1f} |"
        )


if __name__ == "__main__":
    main()
