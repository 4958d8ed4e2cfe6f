"""Training a fracture model (torch): network and heads, augmentation, training loop, grouped splits,
distillation, ONNX export, and the model card writer.

Owns everything that needs torch; nothing else in fracsight imports it, so inference runs without
torch. Imports the data it trains on (:mod:`fracsight.data`), the preprocessing it shares with
inference (:mod:`fracsight.preprocess`), the card format (:mod:`fracsight.model_card`) and the
statistics the card reports (:mod:`fracsight.evaluation`); never the command line or reader studies.
"""
