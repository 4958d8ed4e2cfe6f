"""Re-reading an archive: ``fracsight batch`` on Ray Data, results as a folder of Parquet parts.

Owns: which inputs a run has (:mod:`inputs`: folders and manifests, one absolute path each), the
results folder (:mod:`results`: its columns, parts written whole or not at all, what a run
already did), and the Ray pipeline (:mod:`engine`: decoding and preprocessing as tasks, the model
as a pool of actors, each loading it once and running :meth:`fracsight.inference.Analyser.finish`,
so every answer is the one ``fracsight predict`` gives).

Imports the analysis core (``fracsight.io``, ``fracsight.finding``, ``fracsight.inference``,
``fracsight.model_card``, ``fracsight.preprocess``) and never ``fracsight.cli`` or the services.
Ray and pyarrow are the ``cluster`` extra: they are imported inside functions only, so neither
``import fracsight`` nor ``fracsight predict`` needs them.
"""
