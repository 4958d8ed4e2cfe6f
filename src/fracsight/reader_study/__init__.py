"""Reader studies (MRMC): readers with and without the AI, and the AI alone, on the same cases.

Needs no model: the AI arm is a predictions file, its operating points a model card
(:mod:`fracsight.model_card`). Imports only that, :mod:`fracsight.data` (labels),
:mod:`fracsight.evaluation` (interval statistics) and :mod:`fracsight.reporting`; never the
inference core's model run, training or the command line.

The few functions a user calls::

    study = load_reads("reads.csv", cutoff=3)
    ai = load_ai_predictions("predictions.csv", study.case_ids, threshold=0.5)
    result = analyse_study(study, ai=ai)
    plan = plan_study(VAN_DYKE_PILOT, effect=0.05)
    simulated = simulate_roe_metz(RoeMetzConfig(), np.random.default_rng(0))
"""

from fracsight.reader_study.ai_arm import load_ai_predictions
from fracsight.reader_study.analysis import analyse_study
from fracsight.reader_study.data import IncompletePolicy, ReadStudy, load_reads
from fracsight.reader_study.fom import CovarianceMethod, FigureOfMerit
from fracsight.reader_study.power import VAN_DYKE_PILOT, PilotComponents, plan_study, power
from fracsight.reader_study.results import StudyAnalysis
from fracsight.reader_study.simulate import RoeMetzConfig, simulate_roe_metz, simulate_roe_metz_with_ai

__all__ = [
    "CovarianceMethod",
    "FigureOfMerit",
    "IncompletePolicy",
    "PilotComponents",
    "ReadStudy",
    "RoeMetzConfig",
    "StudyAnalysis",
    "VAN_DYKE_PILOT",
    "analyse_study",
    "load_ai_predictions",
    "load_reads",
    "plan_study",
    "power",
    "simulate_roe_metz",
    "simulate_roe_metz_with_ai",
]
