"""Model assembly: blocks, feed-forward, positions, the LM and its builder."""

from longrange.model.build import build_model
from longrange.model.io import CheckpointError, load, save
from longrange.model.lm import LMOutput, LongRangeLM

__all__ = ["CheckpointError", "LMOutput", "LongRangeLM", "build_model", "load", "save"]
