"""The shipped default model (``default.onnx``) and its card (``default.card.json`` and ``.md``).

Data, no code: nothing to import.
"""
