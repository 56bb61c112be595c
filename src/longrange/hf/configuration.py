"""`LongRangeConfig`: a Hugging Face configuration that holds a `ModelConfig` as a plain dict.

The dict (``config.longrange``) is `ModelConfig.to_dict()`, every mechanism section included, so a model of any
registered mechanism round-trips through ``config.json``; the usual Hugging Face names (``vocab_size``,
``hidden_size``, ``num_hidden_layers``, ...) are derived from it for tools that read them. The mechanisms a
config names must be registered when it is read (a plug-in mechanism: call its `register` before loading).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from longrange.config import ConfigError, ModelConfig, sections
from longrange.model.io import HF_MODEL_TYPE


class LongRangeConfig(PretrainedConfig):
    """``LongRangeConfig(longrange=ModelConfig(...).to_dict())``, or `from_model_config`.

    ``max_position_embeddings`` is the config's ``max_len``: what tools such as lm-evaluation-harness read as the
    longest input. Models with memories read any length segment by segment; the bound matters to absolute position
    tables (``positions: learned | axial | sinusoidal``).
    """

    model_type = HF_MODEL_TYPE

    def __init__(self, longrange: dict[str, Any] | None = None, **kwargs: Any):
        # an explicit __init__ (the style transformers 4.x and 5.x both accept) rather than dataclass fields
        # the attribute's name is config.json's key that longrange.model.io reads (HF_CONFIG_KEY)
        self.longrange = dict(longrange) if longrange is not None else {}
        model_cfg = _model_config(self.longrange) if longrange is not None else ModelConfig()
        self.vocab_size = model_cfg.vocab_size
        self.hidden_size = model_cfg.d_model
        self.num_hidden_layers = model_cfg.n_layers
        self.num_attention_heads = model_cfg.n_heads
        self.max_position_embeddings = model_cfg.max_len
        self.use_cache = kwargs.pop("use_cache", True)
        kwargs["tie_word_embeddings"] = model_cfg.tie_embeddings  # the weights decide, whatever the file says
        super().__init__(**kwargs)

    @classmethod
    def from_model_config(cls, model_cfg: ModelConfig, **kwargs: Any) -> LongRangeConfig:
        return cls(longrange=model_cfg.to_dict(), **kwargs)

    def model_config(self) -> ModelConfig:
        """The `ModelConfig` this configuration holds (ConfigError, one line, for a mechanism not registered)."""
        return _model_config(self.longrange)


def _model_config(data: dict[str, Any]) -> ModelConfig:
    try:
        return ModelConfig.from_dict(data)
    except ConfigError as err:
        known = set(sections())
        unknown = [kind for kind in data.get("layers", []) if kind not in known]
        if not unknown:
            raise
        raise ConfigError(
            f"{err}; the model uses the attention kind(s) {unknown}: a plug-in mechanism must be registered "
            "(longrange.attention.register) before its model is loaded"
        ) from err
