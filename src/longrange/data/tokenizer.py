"""Byte-level tokenizer: vocabulary of 256, so bits per byte compare across corpora and papers."""

from __future__ import annotations


class ByteTokenizer:
    vocab_size = 256

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def decode(self, tokens: list[int]) -> str:
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")
