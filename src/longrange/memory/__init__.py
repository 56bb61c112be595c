"""State that lives across segments: explicit layer/model state, compression, kNN store."""

from longrange.memory.state import LayerState, ModelState

__all__ = ["LayerState", "ModelState"]
