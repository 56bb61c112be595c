"""Evaluation: bits per byte with carried state, loss by position in the document."""

from longrange.eval.evaluate import evaluate

__all__ = ["evaluate"]
