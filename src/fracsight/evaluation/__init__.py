"""Honest evaluation: accuracy with 95% CIs, operating points, calibration and the HTML report.

The functions a user calls::

    from fracsight.evaluation import evaluate_predictions, write_report
    evaluation = evaluate_predictions("predictions.csv", "labels.csv", thresholds=[0.3])
    write_report(evaluation, "report/")            # metrics.json + report.html

    choose_thresholds(probabilities, labels, target_sensitivity=0.95, target_specificity=0.90)
    fit_temperature(logits, labels)

Statistics live in :mod:`~fracsight.evaluation.metrics` (ROC, DeLong, bootstrap, Wilson),
:mod:`~fracsight.evaluation.calibration` and :mod:`~fracsight.evaluation.operating_points`.
Owns: measuring a model on labelled cases (``sources``, ``inputs``, ``evaluate``), localisation
against expert boxes, the training-data guard, site-adapted model copies (``adapt``) and the HTML
report. Imports the inference core (it runs the model and scores its peak), :mod:`fracsight.data`,
:mod:`fracsight.io` and :mod:`fracsight.reporting`; never training, reader studies or the command line.
"""

from fracsight.evaluation.calibration import calibration_summary, fit_temperature, logits_from_probabilities
from fracsight.evaluation.errors import EvaluationInputError, LabelsError, PredictionsError, SingleClassError
from fracsight.evaluation.evaluate import Evaluation, EvaluationSettings, evaluate_cases, evaluate_predictions
from fracsight.evaluation.metrics import auc_with_ci, binary_rates, roc_curve, wilson_interval
from fracsight.evaluation.operating_points import choose_thresholds
from fracsight.evaluation.report import write_report

__all__ = [
    "Evaluation",
    "EvaluationSettings",
    "EvaluationInputError",
    "LabelsError",
    "PredictionsError",
    "SingleClassError",
    "auc_with_ci",
    "binary_rates",
    "calibration_summary",
    "choose_thresholds",
    "evaluate_cases",
    "evaluate_predictions",
    "fit_temperature",
    "logits_from_probabilities",
    "roc_curve",
    "wilson_interval",
    "write_report",
]
