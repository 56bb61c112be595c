"""Training: one trainer for every system, checkpoints, distributed set-up."""

from longrange.train.trainer import RECIPES, TrainConfig, Trainer, train

__all__ = ["RECIPES", "TrainConfig", "Trainer", "train"]
