"""fracsight: finds bone fractures on radiographs and shows where.

An aid to the clinician who reads the radiograph, not a diagnosis.

The front door is :func:`analyse`::

    import fracsight
    finding = fracsight.analyse("wrist.dcm")
    finding.probability, finding.category, finding.heatmap_on_image()

Everything else is reached through its own sub-package: ``fracsight.io`` (reading),
``fracsight.inference`` (batches), ``fracsight.evaluation``, ``fracsight.reader_study``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fracsight.finding import Finding
    from fracsight.inference import Analyser
    from fracsight.io import Radiograph

__all__ = ["__version__", "analyse"]


@lru_cache(maxsize=4)
def _analyser(model: str | None) -> Analyser:
    from fracsight.inference import Analyser

    return Analyser(model)


def analyse(source: str | Path | Radiograph, model: str | Path | None = None) -> Finding:
    """Probability, category and heat map for one radiograph file (or one already read).

    Raises :class:`fracsight.io.RefusedInput` with the reason when the file cannot be analysed.
    The model (default: the one shipped in the package) is loaded once and reused.
    """
    from fracsight.io import Radiograph, RefusedInput
    from fracsight.preprocess import NotAnalysable

    analyser = _analyser(str(model) if model else None)
    radiograph = source if isinstance(source, Radiograph) else analyser.read(source)
    try:
        return analyser.analyse(radiograph)
    except NotAnalysable as exc:  # blank, tiny or strip-shaped: refused like an unreadable file
        raise RefusedInput(radiograph.source, str(exc)) from exc
