"""A corpus read through a tokenizer: its splits as token documents (`TokenizedCorpus`), and what a training run
reads (`run_corpus`).

Bytes leave a corpus as it is. Under a BPE, a prepared corpus's splits are written once into a memory-mapped
store beside its manifest (``tokens/bpe-<hash>/``) and reused; other corpora are tokenized in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

from longrange.data.corpus import Corpus, PreparedCorpus, load_corpus
from longrange.data.token_store import TokenDocuments, TokenStoreWriter, open_split, store_meta
from longrange.data.tokenizer import RUN_TOKENIZER, BPETokenizer, ByteTokenizer, Tokenizer, get_tokenizer

log = logging.getLogger(__name__)


class TokenizedCorpus:
    """A corpus's splits as token documents under `tokenizer`; bytes leave the corpus as it is."""

    def __init__(self, corpus: Corpus | PreparedCorpus, tokenizer: Tokenizer):
        self.corpus, self.tokenizer = corpus, tokenizer
        self.name = corpus.name
        self.manifest = {**corpus.manifest, "tokenizer": tokenizer.describe()}
        self._store: Path | None = None

    @classmethod
    def load(cls, corpus: Corpus | PreparedCorpus, spec: str | None) -> TokenizedCorpus:
        """`corpus` under the tokenizer `spec` names (a BPE is trained on its training split)."""
        return cls(corpus, get_tokenizer(spec, lambda: corpus.text_documents("train")))

    def split(self, name: str) -> list[bytes] | TokenDocuments:
        return self._tokenize(self.corpus.split(name), name)

    def held_out(self, name: str) -> list[bytes] | TokenDocuments:
        return self._tokenize(self.corpus.held_out(name), name)

    def _tokenize(self, documents, name: str):
        tok = self.tokenizer
        if isinstance(tok, ByteTokenizer):
            return documents
        if isinstance(self.corpus, PreparedCorpus):  # once, into a memory-mapped store beside the manifest
            return open_split(self._prepared_store(), name, tok.token_bytes)
        return TokenDocuments.from_arrays([tok.encode_document(d) for d in documents], tok.dtype, tok.token_bytes)

    def _prepared_store(self) -> Path:
        if self._store is None:
            tok = self.tokenizer
            store = self.corpus.root / "tokens" / f"bpe-{tok.identity[:16]}"
            if store_meta(store) is None:
                log.info("tokenizing %s with %s into %s", self.name, tok.source, store)
                writer = TokenStoreWriter(store, tok.dtype, {"tokenizer": tok.describe()})
                for split in ("train", "valid", "test"):
                    writer.write_split(split, (tok.encode_document(d) for d in self.corpus.text_documents(split)))
                tok.save(writer.tmp / RUN_TOKENIZER)
                writer.close()
            self._store = store
        return self._store

    def model_config(self, model_cfg):
        """`model_cfg` with the tokenizer's vocabulary size (bytes leave the config alone: 256, or a converted
        model's own head)."""
        if isinstance(self.tokenizer, BPETokenizer) and model_cfg.vocab_size != self.tokenizer.vocab_size:
            return model_cfg.replace(vocab_size=self.tokenizer.vocab_size)
        return model_cfg


def run_corpus(data: str | None, spec: str | None, run: str | Path, resume: bool = False) -> TokenizedCorpus:
    """What a training run reads: corpus `data` under tokenizer `spec`; a resumed run keeps its own tokenizer."""
    corpus = load_corpus(data)
    if resume and (Path(run) / RUN_TOKENIZER).is_file():
        return TokenizedCorpus(corpus, BPETokenizer.from_file(Path(run) / RUN_TOKENIZER))
    return TokenizedCorpus.load(corpus, spec)
