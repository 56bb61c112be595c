"""Byte-level tokenizer: vocabulary of 256, so bits per byte compare across corpora and papers."""

from __future__ import annotations

import numpy as np


class ByteTokenizer:
    name = "bytes"
    vocab_size = 256
    dtype = np.dtype(np.uint8)
    token_bytes = None  # every token is one byte (see longrange.data.tokenizers)

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def decode(self, tokens: list[int]) -> str:
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")

    def id_to_bytes(self, token: int) -> bytes:
        """The bytes token `token` stands for (ids past 255, from a converted model's head, stand for none)."""
        return bytes([token]) if 0 <= token < 256 else b""

    def encode_document(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8)

    def describe(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size}
