"""Splits that keep duplicate groups together, so a near-copy never sits on both sides."""

from __future__ import annotations

import numpy as np


def grouped_stratified_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Assign each item a fold in 0..n_folds-1; a group stays in one fold; classes balanced.

    Groups are dealt largest first to the fold that currently lacks most of that group's
    class (a greedy balance); ties go to the smallest fold, then to a seeded draw.
    """
    labels = np.asarray(labels).astype(int)
    groups = np.asarray(groups)
    if n_folds < 2:
        raise ValueError(f"n_folds={n_folds}: need at least 2")
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    rng.shuffle(unique)
    members = {g: np.flatnonzero(groups == g) for g in unique}
    # A group counts as positive when any member is fractured (conflicting labels stay together).
    group_pos = {g: int(labels[m].max()) for g, m in members.items()}
    order = sorted(unique, key=lambda g: -len(members[g]))
    fold_of = np.empty(len(labels), dtype=int)
    counts = np.zeros((n_folds, 2))
    targets = np.array([np.sum(labels == 0), np.sum(labels == 1)]) / n_folds
    for g in order:
        c = group_pos[g]
        need = (targets[c] - counts[:, c]) / max(targets[c], 1)
        # Most in need of this class first; among equals, the smallest fold; then chance.
        order_key = np.lexsort((rng.random(n_folds), counts.sum(axis=1), -np.round(need, 9)))
        best = int(order_key[0])
        fold_of[members[g]] = best
        counts[best, c] += len(members[g])
    return fold_of


def grouped_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of a grouped, class-balanced held-out test split of about ``fraction``."""
    if not 0.0 < fraction < 0.5:
        raise ValueError(f"test fraction {fraction} must be in (0, 0.5)")
    n_parts = max(2, round(1.0 / fraction))
    parts = grouped_stratified_folds(labels, groups, n_parts, seed + 7919)
    return parts == 0
