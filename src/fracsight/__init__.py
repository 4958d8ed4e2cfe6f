"""fracsight: finds bone fractures on radiographs and shows where.

An aid to the clinician who reads the radiograph, not a diagnosis.
The front door is :func:`fracsight.analyse`; everything else is reached through
its own sub-package (``fracsight.io``, ``fracsight.evaluation``, ``fracsight.readers``).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
