"""Attention mechanisms behind one protocol; `REGISTRY` maps a config `kind` to its class.

Each mechanism registers itself here by an explicit import (no import magic).
"""

from longrange.attention.base import Attention, AttentionModule, AttentionOutput
from longrange.attention.compressive import CompressiveAttention
from longrange.attention.full import FullAttention
from longrange.attention.knn import KNNAttention
from longrange.attention.local import LocalAttention
from longrange.attention.lsh import LSHAttention
from longrange.attention.luna import LunaAttention
from longrange.attention.xl import XLAttention

REGISTRY: dict[str, type[AttentionModule]] = {
    "full": FullAttention,
    "xl": XLAttention,
    "knn": KNNAttention,
    "compressive": CompressiveAttention,
    "luna": LunaAttention,
    "lsh": LSHAttention,
    "local": LocalAttention,
}

__all__ = [
    "REGISTRY",
    "Attention",
    "AttentionModule",
    "AttentionOutput",
    "FullAttention",
    "KNNAttention",
    "LSHAttention",
    "LocalAttention",
    "LunaAttention",
    "XLAttention",
]
