"""fracsight's version, in a leaf that imports nothing: every part of the house that writes the version
into what it makes (PNG text, reports, DICOM) imports it from here, never the package root, which sits
above them all. ``pyproject.toml`` carries the same number."""

__version__ = "0.1.0"
