"""Labelled radiographs and what is known about them, before any model sees them.

Owns: the FracAtlas layout (``fracatlas``), the one manifest reader (``manifest``), split files
(``split_file``), the one rule for case ids (``ids``), fracture labels (``labels``) and boxes
(``boxes``), content hashes of images (``image_hashes``), exact and near duplicates
(``duplicates``) and the data audit (``audit``).

Imports only :mod:`fracsight.io` (every pixel is read through it) and :mod:`fracsight.reporting`
(the audit's HTML page); never the inference core, evaluation, training or the command line, so
a dataset can be checked without a model.
"""
