"""Training: one trainer for every system, checkpoints, distributed set-up."""

from longrange.train.config import RECIPES, TrainConfig
from longrange.train.trainer import Trainer, train

__all__ = ["RECIPES", "TrainConfig", "Trainer", "train"]
