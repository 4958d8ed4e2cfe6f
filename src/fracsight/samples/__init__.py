"""Bundled sample radiographs, with their attribution in README.md: data, no code."""
