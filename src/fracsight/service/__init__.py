"""The services a hospital runs: a persistent store, an analysis queue, the web viewer and API.

Owns: where received images and their results live (:mod:`store`), the worker that analyses
each received image exactly once (:mod:`worker`), how an upload is checked and kept
(:mod:`intake`), the HTTP API and the viewer page (:mod:`web`); for the DICOM node, the Storage
SCP (:mod:`dicom_node`), the results it makes (:mod:`results_stage`, :mod:`dicom_results`) and
sends (:mod:`sender`). The background workers share one loop (:mod:`loop`); one builder
(:class:`server.Service`) wires the store, analyser and worker under the web front, the DICOM
node or both.

Imports the analysis core (``fracsight.inference``, ``fracsight.io``, ``fracsight.explain``)
and never ``fracsight.cli``: the command line only builds :class:`ServiceSettings` and
starts what is here, so tests and other programs start the same service in-process.
"""

from fracsight.service.settings import ServiceSettings

__all__ = ["ServiceSettings"]
