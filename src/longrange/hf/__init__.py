"""Every longrange model from Hugging Face `transformers` (the optional ``hf`` extra).

``import longrange.hf`` registers the ``longrange`` model type with `AutoConfig` and `AutoModelForCausalLM`, so a
folder written by ``longrange export hf RUN OUT`` (or `export_hf`) loads with
``AutoModelForCausalLM.from_pretrained(OUT)``: no remote code, no network. The core library never imports this
package; it imports transformers.

- `LongRangeConfig`: the `ModelConfig` as a dict, for every preset and every registered mechanism (a plug-in
  registered at run time included: register it before loading);
- `LongRangeForCausalLM`: the model; its memories travel through `generate` as a `LongRangeCache`;
- `loglikelihood`: what lm-evaluation-harness asks of a model, equal to `longrange eval`'s loss.
"""

from transformers import AutoConfig, AutoModelForCausalLM

from longrange.hf.configuration import LongRangeConfig
from longrange.hf.export import export_hf
from longrange.hf.modeling import CACHE_NAME, LongRangeCache, LongRangeForCausalLM
from longrange.hf.scoring import loglikelihood
from longrange.model.io import HF_MODEL_TYPE

AutoConfig.register(HF_MODEL_TYPE, LongRangeConfig, exist_ok=True)
AutoModelForCausalLM.register(LongRangeConfig, LongRangeForCausalLM, exist_ok=True)

__all__ = ["CACHE_NAME", "LongRangeCache", "LongRangeConfig", "LongRangeForCausalLM", "export_hf", "loglikelihood"]
