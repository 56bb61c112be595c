"""The tokenizer: bytes (the default) or byte-level BPE through the optional Hugging Face `tokenizers` package.

``--tokenizer bytes | bpe:VOCAB | FILE.json``:

- ``bytes``: 256 ids, one per byte (`ByteTokenizer`);
- ``bpe:VOCAB``: a byte-level BPE (GPT-2's byte-to-unicode alphabet, its pre-tokenizer regex) trained on the
  training split with VOCAB ids (VOCAB > 256: the 256 byte symbols come first, so any text encodes);
- ``FILE.json``: a byte-level BPE saved by `tokenizers` (ours, from a run folder's ``tokenizer.json``, or
  GPT-2's); any other kind of tokenizer is refused, because bits per byte need each id's exact bytes.

Every id of a byte-level vocabulary stands for a fixed byte string (`id_to_bytes`), so ``token_bytes[id]``
(its length) turns a loss over tokens into bits per byte of the text the tokens cover, and generation prints
bytes through an incremental UTF-8 decoder whatever the tokenizer. A run keeps its tokenizer as
``RUN/tokenizer.json`` (`save_run_tokenizer`, `load_run_tokenizer`); a corpus read through a tokenizer is a
`longrange.data.tokenized_corpus.TokenizedCorpus`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from longrange.data.corpus import CORPUS_RECORD, read_corpus_record
from longrange.data.token_store import dtype_for

RUN_TOKENIZER = "tokenizer.json"
CHOICES = "bytes, bpe:VOCAB (train a byte-level BPE of VOCAB > 256 ids) or a tokenizer FILE.json"


class ByteTokenizer:
    """Bytes: a vocabulary of 256, so bits per byte compare across corpora and papers (the default)."""

    name = "bytes"
    vocab_size = 256
    dtype = np.dtype(np.uint8)
    token_bytes = None  # every token is one byte (`BPETokenizer.token_bytes` gives each id's length)

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


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes to printable characters (what byte-level BPE vocabularies hold)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


def _require_tokenizers():
    try:
        import tokenizers  # an optional extra (longrange[bpe]), needed only for BPE tokenizers
    except ImportError as err:
        raise ValueError(
            "--tokenizer bpe:VOCAB / FILE.json needs the Hugging Face `tokenizers` package: "
            "pip install 'longrange[bpe]'"
        ) from err
    return tokenizers


class BPETokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` with each id's bytes known."""

    name = "bpe"

    def __init__(self, tokenizer, source: str = "trained"):
        self._tok, self.source = tokenizer, source
        spec = json.loads(tokenizer.to_str())
        if spec.get("model", {}).get("type") != "BPE" or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
            raise ValueError(
                f"tokenizer {source!r} is not a byte-level BPE (model {spec.get('model', {}).get('type')!r}, no "
                f"ByteLevel pre-tokenizer); bits per byte need each id's bytes. Use --tokenizer {CHOICES}"
            )
        self.vocab_size = tokenizer.get_vocab_size()
        self._bytes: list[bytes] = []
        for i in range(self.vocab_size):
            token = tokenizer.id_to_token(i)
            if token is None or any(c not in _UNICODE_TO_BYTE for c in token):
                raise ValueError(
                    f"tokenizer {source!r} is not a byte-level BPE (id {i} is {token!r}); bits per byte need each "
                    f"id's bytes. Use --tokenizer {CHOICES}"
                )
            self._bytes.append(bytes(_UNICODE_TO_BYTE[c] for c in token))
        self.token_bytes = np.array([len(b) for b in self._bytes], dtype=np.int64)  # (V,) bytes per id
        self.dtype = dtype_for(self.vocab_size)
        self.identity = hashlib.sha256(tokenizer.to_str().encode()).hexdigest()

    @classmethod
    def train(cls, texts: Iterable[bytes], vocab_size: int) -> BPETokenizer:
        tk = _require_tokenizers()
        tok = tk.Tokenizer(tk.models.BPE())
        tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tok.train_from_iterator((t.decode("utf-8", errors="replace") for t in texts), trainer=trainer)
        return cls(tok, f"bpe:{vocab_size}")

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        tk = _require_tokenizers()
        try:
            tok = tk.Tokenizer.from_file(str(path))
        except Exception as err:  # noqa: BLE001 -- the library raises a bare Exception for a bad file
            raise ValueError(f"--tokenizer {str(path)!r} is not a tokenizers JSON file: {err}") from err
        return cls(tok, str(path))

    def save(self, path: str | Path) -> None:
        self._tok.save(str(path))

    def encode(self, text: str | bytes) -> list[int]:
        text = text.decode("utf-8", errors="replace") if isinstance(text, bytes | bytearray) else text
        return self._tok.encode(text).ids

    def decode(self, tokens: Iterable[int]) -> str:
        return b"".join(self.id_to_bytes(int(t)) for t in tokens).decode("utf-8", errors="replace")

    def id_to_bytes(self, token: int) -> bytes:
        return self._bytes[token] if 0 <= token < self.vocab_size else b""

    def encode_document(self, data: bytes) -> np.ndarray:
        return np.asarray(self.encode(data), dtype=self.dtype)

    def describe(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "source": self.source, "sha256": self.identity}


Tokenizer = ByteTokenizer | BPETokenizer


def get_tokenizer(spec: str | None, train_texts: Callable[[], Iterable[bytes]] | None = None) -> Tokenizer:
    """The tokenizer `spec` names; ``bpe:VOCAB`` is trained on ``train_texts()`` (the training split)."""
    if spec is None or spec == "bytes":
        return ByteTokenizer()
    if spec.startswith("bpe:"):
        try:
            vocab = int(spec[4:])
        except ValueError:
            vocab = 0
        if vocab <= 256:
            raise ValueError(f"--tokenizer {spec!r}: VOCAB must be an integer > 256; choose {CHOICES}")
        if train_texts is None:
            raise ValueError(f"--tokenizer {spec!r} trains on a corpus; none was given")
        return BPETokenizer.train(train_texts(), vocab)
    if spec.endswith(".json") and Path(spec).is_file():
        return BPETokenizer.from_file(spec)
    raise ValueError(f"--tokenizer {spec!r} is not one of: {CHOICES}")


def save_run_tokenizer(run: str | Path, tokenizer: Tokenizer) -> None:
    """Keep a subword tokenizer in the run folder (bytes need nothing: no file means bytes)."""
    if isinstance(tokenizer, BPETokenizer):
        tokenizer.save(Path(run) / RUN_TOKENIZER)


def load_run_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a run: RUN/tokenizer.json (looked up from a checkpoint folder too), else bytes.

    A run records its tokenizer (name, size, sha256) in ``RUN/corpus.json``; the tokenizer found is compared with
    that record, so a run whose ``tokenizer.json`` was deleted or replaced is refused (ValueError) instead of
    being evaluated or sampled with other ids: a BPE run read as bytes reports a wrong bits-per-byte and prints
    garbage. A folder without a record (a saved or converted model) is read as it is.
    """
    path = Path(path)
    candidates = (path, path.parent, path.parent.parent)
    run = next((f for f in candidates if (f / RUN_TOKENIZER).is_file() or (f / CORPUS_RECORD).is_file()), None)
    if run is None:
        return ByteTokenizer()
    file = run / RUN_TOKENIZER
    tokenizer = BPETokenizer.from_file(file) if file.is_file() else ByteTokenizer()
    recorded = (read_corpus_record(run) or {}).get("tokenizer")
    if isinstance(recorded, dict):
        _check_recorded_tokenizer(run, recorded, tokenizer)
    return tokenizer


def _check_recorded_tokenizer(run: Path, recorded: dict, tokenizer: Tokenizer) -> None:
    """Refuse `tokenizer` unless it is the one `run` recorded having trained with."""
    name, digest = recorded.get("name"), recorded.get("sha256")
    if name == "bpe" and isinstance(tokenizer, ByteTokenizer):
        raise ValueError(
            f"run {str(run)!r} was trained with a BPE tokenizer of {recorded.get('vocab_size')} ids (sha256 "
            f"{str(digest)[:12]}), but its {RUN_TOKENIZER} is missing; put the run's {RUN_TOKENIZER} back (reading "
            "the run with bytes would report wrong bits per byte and sample garbage)"
        )
    if name == "bytes" and not isinstance(tokenizer, ByteTokenizer):
        raise ValueError(
            f"run {str(run)!r} was trained on bytes, but it holds a {RUN_TOKENIZER}; remove that file (it is not "
            "the run's tokenizer)"
        )
    if isinstance(tokenizer, BPETokenizer) and digest and digest != tokenizer.identity:
        raise ValueError(
            f"{str(run / RUN_TOKENIZER)!r} is not the tokenizer run {str(run)!r} was trained with (sha256 "
            f"{tokenizer.identity[:12]}, the run recorded {str(digest)[:12]}); put the run's own {RUN_TOKENIZER} back"
        )
