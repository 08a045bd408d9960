"""Evaluation: the confusion-matrix metrics, window/scale/flip inference, reports, and restoring a model
from a checkpoint for eval.py and predict.py."""
