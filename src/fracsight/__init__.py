"""fracsight: finds bone fractures on radiographs and shows where.

An aid to the clinician who reads the radiograph, not a diagnosis.

The front door is :func:`analyse`::

    import fracsight
    finding = fracsight.analyse("wrist.dcm")
    finding.probability, finding.category, finding.heatmap_on_image()

The house, from the bottom up; each part imports only parts above it in this list (checked by
``tests/test_layout.py``), and each package's docstring says what it owns:

* ``_version``: the version number, a leaf that every part may import (never the root for it)
* ``io``: radiograph files -> :class:`~fracsight.io.Radiograph` (pixels, refusals with reasons)
* ``reporting``: self-contained HTML and SVG for reports (imports nothing of fracsight)
* ``preprocess``: contrast stretch and letterbox, shared by training and inference
* ``model_card``: a model's card: identity, input size, operating points -> category
* ``explain``: heat map -> peak and overlay picture
* ``finding``: :class:`~fracsight.finding.Finding`, what travels from inference to every surface
* ``inference``: :class:`~fracsight.inference.Analyser`, ONNX Runtime in batches, no torch
* ``data``: datasets, manifests, split files, labels, boxes, duplicates, the data audit
* ``evaluation``: accuracy with CIs, localisation, the training-data guard, site-adapted copies
* ``reader_study``: MRMC reader studies; ``training``: the network and its training (torch)
* ``service``: the web worklist and the DICOM node; ``batch``: an archive on a Ray cluster (Ray Data)
* ``cli``: one module per sub-command; nothing imports it
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from fracsight._version import __version__

if TYPE_CHECKING:
    from fracsight.finding import Finding
    from fracsight.inference import Analyser
    from fracsight.io import Radiograph

__all__ = ["__version__", "analyse"]


@lru_cache(maxsize=4)
def _analyser(model: str | None) -> Analyser:
    from fracsight.inference import Analyser

    return Analyser(model)


def analyse(source: str | Path | bytes | Radiograph, model: str | Path | None = None) -> Finding:
    """Probability, category and heat map for one radiograph (a file, its bytes, a pydicom
    Dataset, or one already read).

    Raises :class:`fracsight.io.RefusedInput` with the reason (and its ``code``) when it cannot be
    analysed; :meth:`fracsight.inference.Analyser.outcome` returns the refusal instead.
    The model (default: the one shipped in the package) is loaded once and reused.
    """
    from fracsight.finding import Refusal
    from fracsight.io import RefusedInput

    result = _analyser(str(model) if model else None).outcome(source)
    if isinstance(result, Refusal):
        raise RefusedInput(result.source, result.reason, code=result.code)
    return result
