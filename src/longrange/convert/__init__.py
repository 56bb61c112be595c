"""Import checkpoints of other libraries into longrange's format (safetensors + config.yaml)."""

from longrange.convert.hf_reformer import convert_hf_reformer, hf_reformer_config, load_hf_reformer

__all__ = ["convert_hf_reformer", "hf_reformer_config", "load_hf_reformer"]
