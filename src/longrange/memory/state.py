"""Explicit state carried across segments: `LayerState` per layer, `ModelState` for the model.

Memories are never hidden module buffers. A mechanism's `init_state` returns a `LayerState` whose
tensors are all *batch first* (B, ...), so three operations work for every mechanism without
knowing what the tensors mean:

- ``detach()``: truncated backpropagation between segments (the trainer calls it);
- ``reset(where)``: zero the rows ``where`` (B,) bool. Mechanisms keep validity masks (bool,
  True = slot holds a real memory) and counters beside their tensors, so zeroing a row is exactly
  "this row's memory is empty";
- ``to(device)``.

``live`` holds host-side counts, per memory tensor (e.g. ``{"mem": 512}``), of the newest slots that may hold a
state: slots older than that were never written since `init_state`, so a layer may leave them out of its
attention (exactly: they are masked) instead of scoring them. A fresh state says 0 and the layer raises the count
as segments enter the memory; a reset leaves it (an upper bound stays true); a missing key means "any slot may be
live". It is a Python int, known without reading the device, so using it costs no host synchronisation.

An external, non-differentiable store (the kNN memory) rides along as ``store``; it must offer
``reset(rows: BoolTensor (B,))`` and may offer ``to(device)`` and ``state_dict()`` / ``load_state_dict()``.

``state_dict()`` / ``load_state_dict()`` give the memories as a checkpoint holds them: plain containers of
tensors and numbers (what ``torch.load(weights_only=True)`` reads), loaded into a fresh state of the same model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils import _pytree as pytree


@dataclass
class LayerState:
    tensors: dict[str, Tensor] = field(default_factory=dict)  # every tensor batch-first (B, ...)
    store: Any = None  # external store (KNNMemory) with reset(rows) / to(device)
    live: dict[str, int] = field(default_factory=dict)  # host-side bound on the live newest slots per memory

    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    def live_slots(self, key: str) -> int:
        """How many of the newest slots of memory ``key`` (B, M, ...) may hold a state (M when unknown)."""
        slots = self.tensors[key].shape[1]
        return min(self.live.get(key, slots), slots)

    def replace(self, live: dict[str, int] | None = None, **tensors: Tensor) -> LayerState:
        """A new state with some tensors (and live counts) replaced (the store object is shared)."""
        return LayerState({**self.tensors, **tensors}, self.store, {**self.live, **(live or {})})

    def _with_tensors(self, tensors: dict[str, Tensor]) -> LayerState:
        """The same state (store shared, live counts copied) over other tensors."""
        return LayerState(tensors, self.store, dict(self.live))

    def detach(self) -> LayerState:
        return self._with_tensors({k: v.detach() for k, v in self.tensors.items()})

    def reset(self, where: Tensor | None) -> LayerState:
        """Clear the rows `where` (B,) bool; out of place for the tensors (autograd-safe).

        Always applied when `where` is given, even if it holds no True: asking the device whether any row
        starts a document would synchronise with the host in every forward pass."""
        if where is None:
            return self
        tensors = {}
        for key, value in self.tensors.items():
            keep = ~where.view(-1, *([1] * (value.dim() - 1)))
            tensors[key] = value * keep if value.dtype != torch.bool else value & keep
        if self.store is not None:
            self.store.reset(where)
        return self._with_tensors(tensors)  # emptied slots stay counted: still a bound

    def to(self, device: torch.device | str) -> LayerState:
        if self.store is not None and hasattr(self.store, "to"):
            self.store.to(device)
        return self._with_tensors({k: v.to(device) for k, v in self.tensors.items()})

    def state_dict(self) -> dict[str, Any]:
        """The tensors, the live counts and the store's own state (when it has one), for a checkpoint."""
        saved: dict[str, Any] = {"tensors": dict(self.tensors), "live": dict(self.live)}
        if self.store is not None and hasattr(self.store, "state_dict"):
            saved["store"] = self.store.state_dict()
        return saved

    def load_state_dict(self, saved: dict[str, Any], device: torch.device | str) -> None:
        """Take the saved tensors (onto `device`), live counts and store state, in place.

        A checkpoint without live counts (written before they existed) leaves them unknown: every slot may be
        live. Never the fresh state's zeros, which would hide the loaded memories from attention."""
        self.tensors.update({key: value.to(device) for key, value in saved["tensors"].items()})
        self.live = dict(saved.get("live", {}))
        if "store" in saved and self.store is not None:
            self.store.load_state_dict(saved["store"])


@dataclass
class ModelState:
    """The state of a whole model: one entry per layer (None for stateless layers).

    ``pos`` (B,) int64 counts the tokens already seen in each row's current document; absolute
    position embeddings and streaming generation use it as the offset of the next token.
    """

    layers: list[LayerState | None]
    pos: Tensor

    @property
    def batch_size(self) -> int:
        return self.pos.shape[0]

    def detach(self) -> ModelState:
        return ModelState([s.detach() if s is not None else None for s in self.layers], self.pos.detach())

    def reset(self, where: Tensor | None) -> ModelState:
        if where is None:  # (no host read of `where`: see LayerState.reset)
            return self
        layers = [s.reset(where) if s is not None else None for s in self.layers]
        return ModelState(layers, self.pos.masked_fill(where, 0))

    def to(self, device: torch.device | str) -> ModelState:
        return ModelState([s.to(device) if s is not None else None for s in self.layers], self.pos.to(device))

    def state_dict(self) -> dict[str, Any]:
        """``{"layers": [per layer: LayerState.state_dict() or None], "pos": pos}``: what a checkpoint holds."""
        return {"layers": [s.state_dict() if s is not None else None for s in self.layers], "pos": self.pos}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Take a `state_dict` in place; `self` is a fresh state of the same model (``model.init_state``), and
        the saved tensors move to its device."""
        device = self.pos.device
        for layer, layer_saved in zip(self.layers, saved["layers"], strict=True):
            if layer is not None and layer_saved is not None:
                layer.load_state_dict(layer_saved, device)
        self.pos = saved["pos"].to(device)


# ---------------------------------------------------------------------------- pytrees
# LayerState and ModelState cross the model's boundary (forward's input and output), so torch.export,
# torch.compile and the functional APIs must see their tensors as leaves. A layer's tensors flatten in
# their dict order under their keys; the external store (KNNMemory) is not a tensor: it rides in the
# context, so a traced program takes it as a constant object (see tests/model/test_export.py for what exports).


def _flatten_layer(state: LayerState) -> tuple[list[Tensor], tuple]:
    keys = tuple(state.tensors)
    return [state.tensors[k] for k in keys], (keys, state.store, tuple(sorted(state.live.items())))


def _flatten_layer_with_keys(state: LayerState) -> tuple[list, tuple]:
    values, context = _flatten_layer(state)
    return [(pytree.MappingKey(k), v) for k, v in zip(context[0], values, strict=True)], context


def _unflatten_layer(values, context: tuple) -> LayerState:
    keys, store, live = context
    return LayerState(dict(zip(keys, values, strict=True)), store, dict(live))


def _flatten_model(state: ModelState) -> tuple[list, None]:
    return [state.layers, state.pos], None


def _flatten_model_with_keys(state: ModelState) -> tuple[list, None]:
    return [(pytree.GetAttrKey("layers"), state.layers), (pytree.GetAttrKey("pos"), state.pos)], None


pytree.register_pytree_node(
    LayerState,
    _flatten_layer,
    _unflatten_layer,
    serialized_type_name="longrange.memory.state.LayerState",
    flatten_with_keys_fn=_flatten_layer_with_keys,
)
pytree.register_pytree_node(
    ModelState,
    _flatten_model,
    lambda values, context: ModelState(*values),
    serialized_type_name="longrange.memory.state.ModelState",
    flatten_with_keys_fn=_flatten_model_with_keys,
)
