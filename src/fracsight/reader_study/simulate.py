"""Simulated reader studies with known structure: the Roe & Metz (1997) model.

A reader's latent decision variable for case k, reader j, modality i is

    X_ijk = mu_t + delta_i t + R_j + C_k + (tau R)_ij + (tau C)_ik + (R C)_jk + E_ijk,

with t the case's truth (1 fractured, 0 not), mu_1 = mu, mu_0 = 0, and every random
effect drawn independently (and separately for the two truth states, as in Roe & Metz)
from a normal with its own variance. With delta all zero the modalities are equivalent:
the null hypothesis of a type I error check. Ratings are the continuous X; binary calls
are X >= ``call_threshold``.

Used by the tests (type I error, power) and for checking a study plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from fracsight.reader_study.data import ReadStudy, make_study


@dataclass(frozen=True)
class RoeMetzConfig:
    """Sizes, effects and variance components of a Roe-Metz simulation.

    Defaults are a moderate-variability structure of the kind Roe & Metz used (case-related
    components summing to 1, small reader components); with mu = 1.5 the AUC is about 0.86.
    """

    n_readers: int = 5
    n_normal: int = 50
    n_diseased: int = 50
    mu: float = 1.5
    delta: tuple[float, ...] = (0.0, 0.0)  # shift of the fractured cases' mean per modality
    var_r: float = 0.011
    var_c: float = 0.1
    var_tr: float = 0.011
    var_tc: float = 0.1
    var_rc: float = 0.2
    var_e: float = 0.6
    call_threshold: float = 0.75

    @property
    def n_modalities(self) -> int:
        return len(self.delta)

    @property
    def total_variance(self) -> float:
        """Variance of X within one truth state (for one reader and modality)."""
        return self.var_r + self.var_c + self.var_tr + self.var_tc + self.var_rc + self.var_e

    def expected_auc(self, modality: int = 0) -> float:
        """AUC of the population-average reader: Phi(separation / sqrt(2 * total variance))."""
        return float(stats.norm.cdf((self.mu + self.delta[modality]) / np.sqrt(2 * self.total_variance)))


def simulate_roe_metz(config: RoeMetzConfig, rng: np.random.Generator) -> ReadStudy:
    """One simulated fully crossed study (ratings and binary calls) under ``config``."""
    study, _ = _simulate(config, rng)
    return study


def simulate_roe_metz_with_ai(
    config: RoeMetzConfig, rng: np.random.Generator, ai_auc_shift: float = 0.0
) -> tuple[ReadStudy, np.ndarray]:
    """A simulated study plus an AI's probabilities on the same cases.

    The AI shares the case effect C_k with the readers (a hard case is hard for both) and
    has its own case noise; its separation is set so that its population AUC equals the
    readers' expected AUC in modality 1 plus ``ai_auc_shift`` (0: the null hypothesis of
    a readers-versus-AI comparison).
    """
    study, case_effect = _simulate(config, rng)
    own_noise = config.var_tc + config.var_rc + config.var_e
    spread = np.sqrt(2 * (config.var_c + own_noise))
    target = config.expected_auc(0) + ai_auc_shift
    if not 0.5 < target < 1.0:
        raise ValueError(f"AI target AUC {target:.3f} must lie in (0.5, 1)")
    separation = spread * stats.norm.ppf(target)
    score = separation * study.truth + case_effect + rng.normal(0, np.sqrt(own_noise), study.n_cases)
    return study, 1.0 / (1.0 + np.exp(-(score - separation / 2)))


def _simulate(config: RoeMetzConfig, rng: np.random.Generator) -> tuple[ReadStudy, np.ndarray]:
    t, r = config.n_modalities, config.n_readers
    n0, n1 = config.n_normal, config.n_diseased
    truth = np.concatenate([np.zeros(n0, dtype=np.int8), np.ones(n1, dtype=np.int8)])
    ratings = np.empty((t, r, n0 + n1))
    case_effect = np.empty(n0 + n1)
    for state, cases in ((0, slice(0, n0)), (1, slice(n0, n0 + n1))):
        n = n0 if state == 0 else n1
        reader = rng.normal(0, np.sqrt(config.var_r), (1, r, 1))
        case = rng.normal(0, np.sqrt(config.var_c), (1, 1, n))
        modality_reader = rng.normal(0, np.sqrt(config.var_tr), (t, r, 1))
        modality_case = rng.normal(0, np.sqrt(config.var_tc), (t, 1, n))
        reader_case = rng.normal(0, np.sqrt(config.var_rc), (1, r, n))
        error = rng.normal(0, np.sqrt(config.var_e), (t, r, n))
        mean = np.zeros((t, 1, 1)) if state == 0 else (config.mu + np.asarray(config.delta))[:, None, None]
        ratings[:, :, cases] = mean + reader + case + modality_reader + modality_case + reader_case + error
        case_effect[cases] = case[0, 0]
    calls = (ratings >= config.call_threshold).astype(float)
    study = make_study(
        [f"c{k + 1}" for k in range(n0 + n1)],
        truth,
        [f"r{j + 1}" for j in range(r)],
        [f"m{i + 1}" for i in range(t)],
        ratings,
        calls,
        source=f"Roe-Metz simulation ({r} readers, {n0} + {n1} cases, mu {config.mu}, delta {config.delta})",
        call_rule=f"rating >= {config.call_threshold}",
    )
    return study, case_effect


def write_reads_csv(study: ReadStudy, path: str) -> None:
    """Write a study in the long reads format ``load_reads`` accepts (for examples and planning)."""
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        header = ["case_id", "truth", "reader", "modality"]
        header += ["rating"] if study.ratings is not None else []
        header += ["call"] if study.calls is not None else []
        header += ["region"] if study.regions is not None else []
        writer.writerow(header)
        for i, modality in enumerate(study.modalities):
            for j, reader in enumerate(study.readers):
                for k, case in enumerate(study.case_ids):
                    row: list[object] = [case, int(study.truth[k]), reader, modality]
                    if study.ratings is not None:
                        row.append(repr(float(study.ratings[i, j, k])))
                    if study.calls is not None:
                        row.append(int(study.calls[i, j, k]))
                    if study.regions is not None:
                        row.append(study.regions[k])
                    writer.writerow(row)
