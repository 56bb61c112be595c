"""Memorizing Transformer attention (Wu et al. 2022): local attention + kNN memory + learned gate.

Shape legend: B batch, T segment tokens, C XL cache slots (= mem_len), L = C + T local keys,
H heads, E head width, k retrieved neighbours, D model width.

Per head, two attentions over the same queries:
- local: causal attention over [XL cache ; segment] with a T5 relative position bias;
- memory: attention over each query's top-k (key, value) pairs retrieved from the external
  `KNNMemory` (no position information), searched with the query itself.
They are mixed by a learned per-head gate g = sigmoid(b_h): out = g * memory + (1 - g) * local.

As in the paper, keys and queries are L2-normalised (for both attentions) and scaled by a
learned per-head temperature, so retrieval by inner product is retrieval by cosine similarity.
The segment's keys and values enter the memory *after* the segment is processed, so no token
retrieves itself or its future; they are stored detached, so gradients reach queries and gate
but never the memory. Parameter names q / kv / out match `XLAttention`, so a transformer-xl
checkpoint loads into a memorizing model (the new gate, bias and scale start fresh).

Deliberate deviation of the presets (``memorizing-*``): the paper uses the T5 relative
bias in every layer; the presets use this layer (T5 bias) only at the kNN layer and Transformer-XL
attention (sinusoidal relative positions with the u/v biases) in all the others. Reason: the
memorizing presets are the transformer-xl presets with one layer swapped, so (a) memorizing vs XL
results differ only by the memory, and (b) a trained transformer-xl run loads into a memorizing
model for the paper's fine-tuning-into-memory experiment. Both position schemes are relative and
both attend over the same XL cache; the kNN retrieval itself uses no positions, as in the paper.
The paper's layout is `--set xl.positions=t5` (T5 bias in every layer). Measured (memorizing-tiny, 1,500
steps x 8 rows x 64 bytes, 2 seeds, held-out bpb): XL positions 3.393 / 3.324, T5 everywhere 3.961 / 3.911
(the zero-initialised T5 bias gives no position signal until it is learned; the XL terms do from step 0).

Numerics: keys and queries are normalised with a floor the dtype can hold (`_unit`), so empty
(zero) XL-cache slots stay finite under float16. Padding (``pad_mask``) with a state is stored as
invalid in the kNN store and in the XL cache. The layer runs without host synchronisation: the memory attention
runs whenever the store's host-side counters say it may hold an entry (rows that turn out empty are gated to 0),
and only the XL-cache slots that may hold states (`LayerState.live`) are scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.attention.base import (
    AttentionModule,
    AttentionOutput,
    empty_memory,
    fifo_append,
    fifo_live,
    merge_heads,
    newest,
    zero_gradient_anchor,
)
from longrange.attention.memory_attention import explicit_attention, memory_segment_mask, project
from longrange.attention.positions import T5RelativeBias
from longrange.memory.knn_store import KNNMemory
from longrange.memory.state import LayerState


@dataclass
class KNNConfig:
    """Memorizing Transformer (Wu et al. 2022): external kNN memory at the `knn` layers."""

    memory_size: int = 2048  # M, entries per batch row (FIFO)
    topk: int = 32
    backend: Literal["exact", "faiss-flat", "faiss-hnsw", "faiss-ivf"] = "exact"
    mem_len: int = 256  # XL cache of the local attention in a kNN layer
    storage: Literal["memory", "disk"] = "memory"  # "disk": keys/values in memory-mapped files (M beyond RAM)
    storage_dir: str | None = None  # folder for "disk" storage (default: the system temp folder)

    def reach(self) -> tuple[int, str]:
        """The last `memory_size` tokens, stored after each segment (so it covers the XL cache), or the cache."""
        return max(self.memory_size, self.mem_len), "kNN memory_size"

    def flops(self, d_model: int, segment_len: int) -> float:
        """Training FLOPs per token (`longrange.bench.mfu`): local attention over K = mem_len + (T + 1) / 2 keys
        (a T5 bias, no matmul) plus attention over the top-k retrieved pairs (``12 d k``)."""
        return 12 * d_model * (self.mem_len + (segment_len + 1) / 2) + 12 * d_model * self.topk

    def search_flops(self, d_model: int) -> float:
        """The search, ``2 d M`` per token over M stored keys (forward only): retrieval, not the model's arithmetic,
        so `longrange.bench.mfu` counts it only when asked."""
        return 2 * d_model * self.memory_size

    def run_files(self, folder: Path) -> dict[str, Any]:
        """A disk memory lives under run `folder` (reclaimed with it), unless a folder is set."""
        if self.storage == "disk" and self.storage_dir is None:
            return {"storage_dir": str(folder / "knn-memory")}
        return {}


class KNNAttention(AttentionModule):
    stateful = True
    causal_only = True

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float,
        causal: bool,
        layer_index: int,
        memory_size: int,
        topk: int,
        backend: str,
        mem_len: int,
        storage: str = "memory",
        storage_dir: str | None = None,
    ):
        super().__init__()
        if topk < 1 or memory_size < 0 or mem_len < 0:
            raise ValueError(
                f"knn.topk={topk} must be >= 1, knn.memory_size={memory_size} and knn.mem_len={mem_len} >= 0"
            )
        self.n_heads, self.d_model, self.dropout, self.causal = n_heads, d_model, dropout, causal
        self.memory_size, self.topk, self.backend, self.mem_len = memory_size, topk, backend, mem_len
        self.storage, self.storage_dir = storage, storage_dir
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.rel_bias = T5RelativeBias(n_heads)
        self.gate_bias = nn.Parameter(torch.zeros(n_heads))  # b_h; g = sigmoid(b_h) starts at 1/2
        # learned temperature for unit-norm q.k (a fixed 1/sqrt(E) would make attention too flat)
        self.log_scale = nn.Parameter(torch.full((n_heads,), math.log(math.sqrt(d_model // n_heads))))
        self.inspect = False  # when True, the last retrieval is kept in `self.last_retrieval`
        self.last_retrieval: dict | None = None

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> LayerState:
        store = None
        if self.memory_size > 0:
            store = KNNMemory(
                batch_size,
                self.memory_size,
                self.n_heads,
                self.d_model // self.n_heads,
                backend=self.backend,
                device=device,
                storage=self.storage,
                directory=self.storage_dir,
                dtype=dtype,  # the model's (a float64 model gets a float64 store; see KNNMemory)
                adopt_bf16=dtype == torch.float32,  # bf16 entries (bf16 autocast) make it a bf16 store
            )
        return LayerState(
            {
                **empty_memory(batch_size, self.mem_len, self.d_model, device, dtype),  # XL cache (B, C, D)
                "pos": torch.zeros(batch_size, dtype=torch.long, device=device),  # tokens seen in the document
            },
            store,
            live={"mem": 0},
        )

    def forward(self, x: Tensor, *, state=None, doc_start=None, pad_mask=None, carry=None) -> AttentionOutput:
        self.check_input(x, self.causal)
        if torch.compiler.is_exporting():
            raise ValueError(
                "knn attention cannot be exported with torch.export: its memory is an external store (a ring "
                "buffer with host-side counters, or faiss) updated as a side effect, not a tensor the program "
                "could take and return; export a model without knn layers"
            )
        b, t, _ = x.shape
        if state is None:
            state = self.init_state(b, x.device, x.dtype)
        mem, valid = state["mem"].to(x.dtype), state["valid"]
        n_mem = state.live_slots("mem")  # the cache's newest slots that may hold states (older: never written)
        q, k, v = project(self.q, self.kv, x, newest(mem, n_mem), self.n_heads)  # (B, H, T, E), (B, H, L, E) x 2
        q, k = _unit(q), _unit(k)
        scale = self.log_scale.exp()[None, :, None, None]  # (1, H, 1, 1)

        # local attention with T5 relative bias over [cache ; segment]
        mask = memory_segment_mask(newest(valid, n_mem), n_mem, t, x.device, pad_mask)  # (B, 1, T, L)
        local_bias = self.rel_bias.shifted(n_mem, t, x.device)[None].to(q.dtype)  # (1, H, T, L)
        dropout = self.dropout if self.training else 0.0
        local, _ = explicit_attention(q * scale, k, v, local_bias, mask, dropout, self.training, 1.0)

        # memory attention over the top-k retrieved pairs (searched before this segment is added). Run whenever
        # the store may hold an entry (its host-side counters say so without reading the device); a row that
        # turns out empty is gated to 0. A store nothing was ever added to is skipped: the output is then the
        # local attention exactly, and the gate gets the gradient 0 it would get from an empty store (DDP and
        # AdamW see the same parameters used)
        store: KNNMemory | None = state.store
        if store is not None and not store.never_written:
            mem_keys, mem_values, _, found = store.search(q.detach(), self.topk)  # (B, H, T, k, E), mask (B, H, T, k)
            # one (1 x E) @ (E x k) product per query; gradient reaches q only (the store is detached)
            scores = (q.unsqueeze(-2) @ mem_keys.transpose(-1, -2)).squeeze(-2) * scale  # (B, H, T, k)
            weights = scores.masked_fill(~found, float("-inf")).softmax(-1).nan_to_num(0.0)
            memory_out = (weights.unsqueeze(-2) @ mem_values).squeeze(-2)  # (B, H, T, E)
            has_memory = found.any(-1, keepdim=True)  # rows with an empty memory use local attention only
            gate = torch.sigmoid(self.gate_bias)[None, :, None, None] * has_memory
            y = gate * memory_out + (1 - gate) * local
            if self.inspect:
                self.last_retrieval = {
                    "weights": weights.detach(),
                    "found": found,
                    "slots": store.search_slots(q.detach(), self.topk)[1],
                    "gate": torch.sigmoid(self.gate_bias).detach(),
                }
        elif store is not None:
            y = local + zero_gradient_anchor([self.gate_bias])
        else:
            y = local

        # the segment enters the memory only now: no token can retrieve itself or its future. Padding
        # (pad_mask False) is stored as invalid, in the kNN store and in the XL cache, so no later
        # segment attends to it; positions count real tokens only
        new_keys, new_values = k[:, :, n_mem:], v[:, :, n_mem:]
        real = None if pad_mask is None else pad_mask.bool()
        n_real = torch.full_like(state["pos"], t) if real is None else real.sum(1)
        if store is not None:
            offsets = torch.arange(t, device=x.device) if real is None else real.long().cumsum(1) - 1
            positions = state["pos"][:, None] + offsets
            store.add(new_keys.detach(), new_values.detach(), positions, valid=real)
        new_mem, new_valid = fifo_append(mem, valid, x, self.mem_len, new_valid=real)
        live = {"mem": fifo_live(n_mem, t, self.mem_len)}
        next_state = state.replace(live, mem=new_mem, valid=new_valid, pos=state["pos"] + n_real)
        return AttentionOutput(self.out(merge_heads(y)), next_state)


def _unit(x: Tensor) -> Tensor:
    """x / |x| over the last axis, with a floor on |x| that the dtype can hold: F.normalize's 1e-12 is 0 in
    float16, so the zero keys of empty XL-cache slots became 0 / 0 = NaN under fp16 autocast, and a NaN key
    poisons attention even where it is masked (NaN + -inf). 1e-12 where representable (float32/64, bf16)."""
    return F.normalize(x, dim=-1, eps=max(1e-12, torch.finfo(x.dtype).tiny))
