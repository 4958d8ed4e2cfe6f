"""One fold of the "CPU route" of the model v2 issue, to see whether it is worth its CPU hours.

    python scripts/cpu_route_probe.py ../shared/data/fracatlas training/default-run/split.csv [--fold 0]

The only cut the CPU affords in a session (benchmarks/cpu_route_cost.py) freezes an ImageNet
EfficientNet-Lite0 up to its last block, caches what that trunk makes of every development
image (upright and mirrored), and trains the last block, the 1280-channel head convolution and
the CAM head on the CPU. This trains that on four folds of the committed v2 split and prints the
held-out fold's ROC AUC per epoch, to compare with the GPU recipe's fold model on the same fold
(training/default-run/fold*-summary.json). Upright only: it asks whether the frozen trunk can
reach the recipe's accuracy at all, before any orientation work. Needs the training extra.
"""

from __future__ import annotations

import argparse
import csv
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("fracatlas")
    parser.add_argument("split")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from sklearn.metrics import roc_auc_score

    from fracsight.training.arrays import prepare_examples
    from fracsight.training.examples import load_examples
    from fracsight.training.network import FractureNet

    torch.manual_seed(0)
    with open(args.split, newline="") as fh:
        folds = {row["image_id"]: int(row["fold"]) for row in csv.DictReader(fh) if row["split"] == "dev"}
    examples = [ex for ex in load_examples(args.fracatlas) if ex.image_id in folds]
    start = time.perf_counter()
    data = prepare_examples(examples, args.size)
    print(f"{len(data.examples)} development images prepared in {time.perf_counter() - start:.0f} s")

    net = FractureNet("lite0", heatmap_stride=32)
    net.backbone.load_imagenet("lite0")
    bb = net.backbone
    frozen, top = bb._blocks[:-1], bb._blocks[-1]

    def trunk(x: torch.Tensor) -> torch.Tensor:
        x = bb.act(bb._bn0(bb._conv_stem(x.expand(-1, 3, -1, -1))))
        for block in frozen:
            x = block(x)
        return x

    start = time.perf_counter()
    net.eval()
    cache = []  # (N, 2, C, h, w) float16: upright, mirrored
    with torch.no_grad():
        for i in range(0, len(data.images), 32):
            x = torch.from_numpy(data.images[i : i + 32]).float().div(127.5).sub(1.0).unsqueeze(1)
            cache.append(torch.stack([trunk(x), trunk(x.flip(-1))], 1).half())
    cache = torch.cat(cache)
    print(f"trunk cached, {tuple(cache.shape)}, in {time.perf_counter() - start:.0f} s")

    labels = torch.from_numpy(data.labels).float()
    fold = np.array([folds[ex.image_id] for ex in data.examples])
    train, val = np.flatnonzero(fold != args.fold), np.flatnonzero(fold == args.fold)
    params = list(top.parameters()) + list(bb._conv_head.parameters()) + list(bb._bn1.parameters())
    params += list(net.cam.parameters())
    steps = args.epochs * (len(train) // 32)
    optimiser = torch.optim.AdamW(params, 1e-3, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 1e-3, total_steps=steps, pct_start=0.1)
    pos_weight = (labels[train] == 0).sum() / (labels[train] == 1).sum()

    def logits(features: torch.Tensor) -> torch.Tensor:
        cells = net.cam(net.dropout(bb.act(bb._bn1(bb._conv_head(top(features))))))
        flat = cells.flatten(1)
        return flat.topk(max(1, round(0.05 * flat.shape[1])), dim=1).values.mean(1)

    for epoch in range(args.epochs):
        start = time.perf_counter()
        top.train(), bb._conv_head.train(), bb._bn1.train(), net.dropout.train()
        order = np.random.default_rng(epoch).permutation(train)
        for i in range(0, len(order) - 31, 32):
            batch = order[i : i + 32]
            mirror = torch.randint(0, 2, (len(batch),))
            x = cache[torch.from_numpy(batch), mirror].float()
            loss = F.binary_cross_entropy_with_logits(logits(x), labels[batch], pos_weight=pos_weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        top.eval(), bb._conv_head.eval(), bb._bn1.eval(), net.dropout.eval()
        with torch.no_grad():
            scores = [
                (logits(cache[val[i : i + 64], 0].float()) + logits(cache[val[i : i + 64], 1].float())) / 2
                for i in range(0, len(val), 64)
            ]
        auc = roc_auc_score(data.labels[val], torch.cat(scores).numpy())
        print(
            f"epoch {epoch + 1}: loss {loss.item():.3f}, fold {args.fold} AUC {auc:.3f} "
            f"({time.perf_counter() - start:.0f} s)"
        )


if __name__ == "__main__":
    main()
