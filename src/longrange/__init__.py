"""longrange: long-range sequence modelling in PyTorch.

import longrange
cfg = longrange.ModelConfig.from_name("transformer-xl-tiny")
model = longrange.build_model(cfg)
state = model.init_state(batch_size=2)
out = model(tokens, state=state, doc_start=doc_start)
"""

from longrange.config import ConfigError, ModelConfig, preset_names
from longrange.memory.state import LayerState, ModelState
from longrange.model import CheckpointError, LMOutput, LongRangeLM, build_model, load, save

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "LMOutput",
    "LayerState",
    "LongRangeLM",
    "ModelConfig",
    "ModelState",
    "build_model",
    "load",
    "preset_names",
    "save",
]
