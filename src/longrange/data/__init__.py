"""Data: byte tokenizer, corpora as documents, document streams."""

from longrange.data.corpus import Corpus, load_corpus
from longrange.data.stream import Batch, DocumentStream
from longrange.data.tokenizer import ByteTokenizer

__all__ = ["Batch", "ByteTokenizer", "Corpus", "DocumentStream", "load_corpus"]
