"""`LongRangeForCausalLM`: any longrange model as a transformers causal LM, its memories carried through `generate`.

The wrapper owns the `LongRangeLM` that `build_model` makes and registers that model's modules as its own
(``embed``, ``blocks``, ``norm``, ``head``, ``positions``), so its weights carry exactly longrange's names: the
safetensors file `save_pretrained` writes is a longrange checkpoint, and a longrange checkpoint is this model's.
``model.longrange_model`` is the wrapped `LongRangeLM`, for every longrange function (evaluate, generate).

A call has one of two meanings, as longrange's own programs do:

- **scoring** (no cache given; what lm-evaluation-harness and ``labels`` use): `longrange eval`'s reading. The
  tokens are one document from its start, read segment by segment (``segment_len``); a model with memories
  (``model.stateful``: XL, compressive, memorizing) carries them from segment to segment, a model without
  reads each segment alone. With gradients enabled the memories are detached between segments (truncated
  backpropagation, as the trainer does) and ``loss`` adds the layers' auxiliary losses (compressive).
- **streaming** (a `LongRangeCache` given, which `generate` creates): `longrange generate`'s reading. The cache holds
  the `ModelState` (XL and compressed memories, the kNN store, Luna's prefix sums, Reformer's decode caches); new
  tokens are read into it segment by segment, so a prompt longer than a segment and then one token at a time give
  exactly the tokens `longrange.generate` samples. A model whose layers keep no state at all (plain full attention)
  recomputes over its last ``segment_len`` tokens, which the cache keeps instead; its call returns the logits of
  the last ``min(new tokens, segment_len)`` positions only. Streaming runs without gradients.

The cache travels under the name this transformers version gives it (``cache`` in 5.24, ``past_key_values`` in
4.x: `CACHE_NAME`, read from the fields of transformers' own output class), through the model's own
`prepare_inputs_for_generation`, so transformers never builds a `DynamicCache` for it. Checked on transformers
4.40, 4.57 and 5.24. Greedy decoding gives `longrange.generate`'s tokens exactly; sampling works, but draws from
torch's global generator through transformers' logits processors, so its tokens differ from those of
`longrange generate --seed` (a private generator). What `generate` cannot do with the cache, and why:

- beam search and assisted/speculative decoding: they roll back or reorder the cache per step, and the kNN store
  is an external FIFO with no copy per beam (refused with a ValueError; greedy and sampling work);
- padded batches (an ``attention_mask`` with zeros): the padding would enter the memories, so a short prompt would
  not continue as it does alone (refused; give prompts of one length per call, as `longrange.generate_batch` does);
- ``use_cache=False``: ignored; the memories are the model, recomputing without them gives other tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import Tensor
from transformers import GenerationMixin, PreTrainedModel
from transformers.generation.configuration_utils import GenerationMode
from transformers.modeling_outputs import CausalLMOutputWithPast

from longrange.generate import carries_state
from longrange.hf.configuration import LongRangeConfig
from longrange.memory.state import ModelState
from longrange.model.build import build_model
from longrange.model.lm import IGNORE_INDEX, LongRangeLM

# the output field (and generate's keyword) that holds the cache: `past_key_values` in 4.x, `cache` in recent 5.x
CACHE_NAME = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"
_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
# keyword arguments transformers or its users pass that carry nothing for this model
_IGNORED = {"position_ids", "cache_position", "token_type_ids", "logits_to_keep", "num_logits_to_keep"}


class LongRangeCache:
    """The state `generate` carries between steps: a model's memories, or a stateless model's last tokens.

    ``state`` is the `ModelState` (None until the first call); ``context`` the last ``segment_len`` tokens of a model
    that keeps no state; ``seen_tokens`` how many tokens of the sequence the cache has read (a host-side count, so
    slicing the next inputs never reads the device). The kNN store inside the state is updated in place.
    """

    is_compileable = False  # transformers: never compile generate around it
    is_croppable = False  # no rolling back (assisted decoding)
    is_linear = (True,)  # transformers 5: it holds no per-token entries to slice the prompt by

    def __init__(self) -> None:
        self.state: ModelState | None = None
        self.context: Tensor | None = None
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reorder_cache(self, beam_idx: Tensor) -> None:
        raise ValueError(_NO_BEAMS)


_NO_BEAMS = (
    "longrange models generate with greedy decoding or sampling (num_beams=1): beam search would need a copy of "
    "every memory per beam, and the kNN store is one external FIFO per row"
)


class LongRangeForCausalLM(PreTrainedModel, GenerationMixin):
    """A `LongRangeLM` as a transformers causal LM (see the module docstring for what a call means)."""

    config_class = LongRangeConfig
    main_input_name = "input_ids"
    _is_stateful = True  # transformers refuses assisted decoding for stateful models
    _supported_generation_modes = (GenerationMode.GREEDY_SEARCH, GenerationMode.SAMPLE)  # read by transformers 5
    # transformers 5 maps tied parameters target -> source; 4.x lists the targets
    _tied_weights_keys = {"head.weight": "embed.weight"} if _TRANSFORMERS_MAJOR >= 5 else ["head.weight"]

    def __init__(self, config: LongRangeConfig, model: LongRangeLM | None = None):
        super().__init__(config)
        lm = model if model is not None else build_model(config.model_config())
        self.__dict__["longrange_model"] = lm  # not a submodule: its modules are registered below, by their names
        for name, child in lm.named_children():
            self.add_module(name, child)
        self.post_init()

    @classmethod
    def from_longrange(cls, model: LongRangeLM) -> LongRangeForCausalLM:
        """Wrap a built or loaded `LongRangeLM` (its modules, not a copy)."""
        wrapper = cls(LongRangeConfig.from_model_config(model.config), model=model)
        return wrapper.train(model.training)

    def _init_weights(self, module) -> None:
        """`build_model` initialised every weight (each mechanism its own); transformers must not redraw them."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.longrange_model.train(mode)  # the LongRangeLM reads its own flag (dropout, evaluation padding)
        return self

    def get_input_embeddings(self):
        return self.longrange_model.embed

    def get_output_embeddings(self):
        return self.longrange_model.head

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the cache is a LongRangeCache, made by prepare_inputs_for_generation

    @property
    def segment_len(self) -> int:
        return self.longrange_model.config.segment_len

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        cache: LongRangeCache | None = None,
        past_key_values: LongRangeCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        inputs_embeds: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        **kwargs: Any,
    ):
        """input_ids (B, T) -> logits (B, T, V): scoring without a cache, streaming into one (module docstring).

        The cache comes as ``cache`` or ``past_key_values`` (transformers 5 and 4 names); ``use_cache`` changes
        nothing (module docstring). ``labels`` (B, T), transformers' convention (shifted inside; -100 ignored),
        give ``loss``. An ``attention_mask`` must be all ones: padding would enter the memories (checked once per
        scoring call, before the model runs, and never in a streaming step: `generate` checked it before the first).
        """
        cache = cache if cache is not None else past_key_values
        unknown = sorted(k for k, v in kwargs.items() if k not in _IGNORED and v is not None)
        if unknown:
            raise ValueError(f"LongRangeForCausalLM.forward got unexpected arguments {unknown}")
        if inputs_embeds is not None or input_ids is None:
            raise ValueError("longrange models read token ids (input_ids), not inputs_embeds")
        if output_attentions or output_hidden_states:
            raise ValueError("longrange models return no attentions or hidden states (output_attentions/hidden_states)")
        if cache is not None and not isinstance(cache, LongRangeCache):
            raise ValueError(f"the cache of a longrange model is a LongRangeCache, got {type(cache).__name__}")
        if cache is None:
            check_unpadded(attention_mask)
            logits, loss = self._score(input_ids, labels)
        else:
            logits, loss = self._stream(input_ids, cache), None
            if labels is not None:
                raise ValueError("labels are for scoring (a call without a cache), not for streaming into one")
        out = CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_NAME: cache})
        return out if return_dict is not False else out.to_tuple()

    def _score(self, tokens: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """`longrange eval`'s reading: segment by segment from a fresh state, memories carried where the model
        keeps them (state None for models without, as evaluate passes)."""
        lm = self.longrange_model
        state = lm.init_state(tokens.shape[0], tokens.device) if lm.stateful else None
        logits, aux = [], []
        for start in range(0, tokens.shape[1], self.segment_len):
            out = lm(tokens[:, start : start + self.segment_len], state=state)
            if lm.stateful:
                state = out.state.detach() if torch.is_grad_enabled() else out.state
            logits.append(out.logits)
            if out.aux_loss is not None:
                aux.append(out.aux_loss)
        logits = torch.cat(logits, dim=1)
        if labels is None:
            return logits, None
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        if aux and self.training:  # the trainer's objective: language modelling plus the layers' auxiliary losses
            loss = loss + torch.stack(aux).mean()
        return logits, loss

    @torch.no_grad()
    def _stream(self, tokens: Tensor, cache: LongRangeCache) -> Tensor:
        """`longrange generate`'s reading: the new tokens enter the cache's memories segment by segment."""
        lm = self.longrange_model
        batch, length = tokens.shape
        if cache.seen_tokens and cache.state is not None and cache.state.batch_size != batch:
            raise ValueError(f"the cache holds {cache.state.batch_size} rows, the inputs have {batch}")
        if carries_state(lm):
            if cache.state is None:
                cache.state = lm.init_state(batch, tokens.device)
            logits = []
            for start in range(0, length, self.segment_len):
                out = lm(tokens[:, start : start + self.segment_len], state=cache.state)
                cache.state = out.state
                logits.append(out.logits)
            logits = torch.cat(logits, dim=1)
        else:  # nothing to carry: the last segment_len tokens are the model's context, as in longrange.generate
            context = tokens if cache.context is None else torch.cat([cache.context, tokens], dim=1)
            cache.context = context[:, -self.segment_len :]
            logits = lm(cache.context).logits[:, -min(length, self.segment_len) :]
        cache.seen_tokens += length
        return logits

    # ------------------------------------------------------------------ generate
    def prepare_inputs_for_generation(self, input_ids: Tensor, **kwargs: Any) -> dict[str, Any]:
        """The tokens the cache has not read yet, and the cache (a fresh one on the first step)."""
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("longrange models generate from token ids (input_ids), not inputs_embeds")
        cache = next((kwargs[k] for k in (CACHE_NAME, "cache", "past_key_values") if kwargs.get(k) is not None), None)
        if cache is None:
            check_unpadded(kwargs.get("attention_mask"))  # once per generate call, before the first step
            cache = LongRangeCache()
        if not isinstance(cache, LongRangeCache):
            raise ValueError(f"the cache of a longrange model is a LongRangeCache, got {type(cache).__name__}")
        if cache.seen_tokens >= input_ids.shape[1]:
            raise ValueError(
                f"the cache has read {cache.seen_tokens} tokens and the inputs hold {input_ids.shape[1]}: "
                "pass the whole sequence so far, with new tokens at its end"
            )
        return {"input_ids": input_ids[:, cache.seen_tokens :], CACHE_NAME: cache}

    def _reorder_cache(self, cache, beam_idx):  # transformers 4.x beam search
        raise ValueError(_NO_BEAMS)


def check_unpadded(attention_mask: Tensor | None) -> None:
    """ValueError (one line) for an attention mask with padding: it would enter the memories.

    It reads the mask on the host, so callers do it once per call or per generate, never per decoding step."""
    if attention_mask is not None and not bool(attention_mask.bool().all()):
        raise ValueError(
            "padded inputs (an attention_mask with zeros) are not supported: the padding would enter the memories; "
            "give prompts or documents of one length per call"
        )
