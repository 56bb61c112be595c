"""Corpora as documents, with a deterministic train/valid/test split by document.

`load_corpus(spec)` accepts:
- ``None`` or ``"stdlib"``: the built-in default, the Python standard library source of the
  running interpreter. Each package directory (``asyncio/``, ``email/``, ...) becomes ONE long
  document (its ``.py`` files sorted by path, each preceded by a ``# file: path`` line), a
  code-repository corpus; top-level modules are one document each. Test suites are left out.
  The manifest records the Python version and a sha256 of the document list so runs compare.
- a directory prepared by ``longrange data prepare`` (it holds ``manifest.json``): a `PreparedCorpus`, whose
  splits are the prepared ones and whose documents are read from the memory-mapped byte store beside the
  manifest (``tokens/bytes/``, built on first use for corpora prepared before it existed), never loaded whole;
- a directory: every text file under it (recursively, sorted) is one document;
- a ``.jsonl`` file: one document per line, from the field ``text``;
- any other file: one text file, documents separated by form feeds (``\\f``) if any, else one document.

Text must be UTF-8; a file that does not decode is an error naming the file (we never guess).
A file (a ``.jsonl`` line) larger than ``max_document_bytes`` (1 GiB by default) is an error naming the file
and the cap: reading stops at the cap, so a device such as ``/dev/zero`` or an endless pipe cannot exhaust
memory.

`Corpus.held_out(split)` is the split an evaluation reads: a corpus of fewer than 3 documents has no
valid/test documents, and it says so and how to fix it. `corpus_change(recorded, corpus)` compares a run's
recorded manifest (``corpus.json``) with the corpus loaded now, so an evaluation notices when adding or
editing files moved documents between splits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from longrange.data.hf import hf_documents
from longrange.data.token_store import TokenDocuments, TokenStoreWriter, open_split, store_meta

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
MAX_DOCUMENT_BYTES = 1 << 30  # 1 GiB: larger files are almost always a mistake (a device, a binary dump)
MIN_DOCUMENTS_FOR_HELD_OUT = 3
_STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3"}


@dataclass
class Corpus:
    name: str
    documents: list[bytes]
    manifest: dict = field(default_factory=dict)
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    seed: int = 0

    def split(self, name: str) -> list[bytes]:
        """Documents of split `name` ("train", "valid" or "test"); deterministic, disjoint."""
        if name not in SPLITS:
            raise ValueError(f"split {name!r} is not one of {list(SPLITS)}")
        return [self.documents[i] for i in self.split_indices()[name]]

    def split_indices(self) -> dict[str, list[int]]:
        """Rank documents by a hash of (seed, content) so the split ignores file order."""
        n = len(self.documents)
        order = sorted(range(n), key=lambda i: hashlib.sha256(b"%d:" % self.seed + self.documents[i]).digest())
        held_out = n >= MIN_DOCUMENTS_FOR_HELD_OUT
        n_valid = max(1, round(n * self.valid_fraction)) if held_out else 0
        n_test = max(1, round(n * self.test_fraction)) if held_out else 0
        return {
            "valid": sorted(order[:n_valid]),
            "test": sorted(order[n_valid : n_valid + n_test]),
            "train": sorted(order[n_valid + n_test :]),
        }

    def held_out(self, name: str) -> list[bytes]:
        """Documents of split `name` for an evaluation; a ValueError saying how to fix it when there are none."""
        documents = self.split(name)
        if not documents and name != "train" and len(self.documents) < MIN_DOCUMENTS_FOR_HELD_OUT:
            raise ValueError(
                f"corpus {self.name!r} has {len(self.documents)} document(s), so it has no {name!r} split "
                f"(held-out splits need at least {MIN_DOCUMENTS_FOR_HELD_OUT} documents); add documents (files of a "
                "directory, lines of a .jsonl, or form-feed-separated parts of one file) or evaluate --split train"
            )
        return documents

    @property
    def num_bytes(self) -> int:
        return sum(len(d) for d in self.documents)

    def text_documents(self, name: str):
        """The documents of split `name` as bytes, one at a time (what a tokenizer reads)."""
        return iter(self.split(name))


BYTE_STORE = "tokens/bytes"  # the byte-token store of a prepared corpus, relative to its manifest


@dataclass
class PreparedCorpus:
    """A corpus written by ``longrange data prepare``: its own train/valid/test splits (from the manifest)
    and its text in a memory-mapped byte store, so a corpus larger than RAM trains in bounded memory."""

    name: str
    root: Path
    manifest: dict = field(default_factory=dict)

    def byte_store(self) -> Path:
        store = self.root / BYTE_STORE
        if store_meta(store) is None:  # prepared before stores existed: the manifest lists text files
            writer = TokenStoreWriter(store, np.uint8, {"tokenizer": "bytes", "vocab_size": 256})
            for split, info in self._recorded["splits"].items():
                writer.write_split(split, ((self.root / d["file"]).read_bytes() for d in info["documents"]))
            writer.close()
        return store

    @property
    def _recorded(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text())

    def split(self, name: str) -> TokenDocuments:
        if name not in SPLITS:
            raise ValueError(f"split {name!r} is not one of {list(SPLITS)}")
        return open_split(self.byte_store(), name)

    def held_out(self, name: str) -> TokenDocuments:
        documents = self.split(name)
        if not len(documents):
            raise ValueError(f"prepared corpus {self.name!r} has no {name!r} documents; prepare it again")
        return documents

    def text_documents(self, name: str):
        """The documents of split `name` as bytes, one at a time (what a tokenizer reads)."""
        return (doc.tobytes() for doc in self.split(name))

    @property
    def num_bytes(self) -> int:
        return int(self.manifest.get("bytes", 0))


def load_prepared(path: Path) -> PreparedCorpus:
    """The prepared corpus at `path` (a folder with manifest.json); its content hash is the manifest's."""
    text = (path / "manifest.json").read_bytes()
    recorded = json.loads(text)
    splits = recorded.get("splits", {})
    manifest = {
        "source": "prepared",
        "name": recorded.get("name", path.name),
        "documents": sum(len(s["documents"]) for s in splits.values()),
        "bytes": sum(s["bytes"] for s in splits.values()),
        "sha256": hashlib.sha256(text).hexdigest(),
    }
    return PreparedCorpus(recorded.get("name", path.name), path, manifest)


def load_corpus(
    spec: str | Path | None = None, text_field: str = "text", max_document_bytes: int = MAX_DOCUMENT_BYTES
) -> Corpus | PreparedCorpus:
    """Load the corpus named by `spec` (see module docstring); raises ValueError when it is empty or a
    file is larger than `max_document_bytes`."""
    if spec is None or str(spec) == "stdlib":
        corpus = stdlib_corpus()
    elif str(spec).startswith("hf:"):
        corpus = Corpus(*hf_documents(str(spec), text_field))
    elif Path(spec).is_dir() and (Path(spec) / "manifest.json").is_file():
        return load_prepared(Path(spec))
    else:
        path = Path(spec)
        if not path.exists():
            raise ValueError(f"corpus {str(spec)!r} does not exist (give a directory, a text/.jsonl file or 'stdlib')")
        if stat.S_ISFIFO(path.stat().st_mode) or stat.S_ISSOCK(path.stat().st_mode):
            raise ValueError(
                f"corpus {str(spec)!r} is a named pipe or socket: reading it waits for a writer and the split needs "
                "every document at once; write the text to a file first"
            )
        if path.is_dir():
            corpus = Corpus(path.name, _directory_documents(path, max_document_bytes))
        elif path.suffix == ".jsonl":
            corpus = Corpus(path.stem, _jsonl_documents(path, text_field, max_document_bytes))
        else:
            text = _read_text(path, max_document_bytes)
            corpus = Corpus(path.stem, [d.encode() for d in text.split("\f") if d.strip()])
    corpus.documents = [d for d in corpus.documents if len(d) >= 2]
    if not corpus.documents:
        raise ValueError(f"corpus {str(spec)!r} holds no text documents (need at least one of 2+ bytes)")
    corpus.manifest.setdefault("documents", len(corpus.documents))
    corpus.manifest.setdefault("bytes", corpus.num_bytes)
    corpus.manifest.setdefault("sha256", _digest(corpus.documents))
    return corpus


CORPUS_RECORD = "corpus.json"  # a run's record of its corpus: the spec, the manifest, the tokenizer


def read_corpus_record(run: str | Path) -> dict | None:
    """The corpus record a run keeps (``RUN/corpus.json``: its spec, manifest and tokenizer), None when it has
    none (a model saved by `longrange.save`, a converted one); a ValueError naming the file when it is torn or
    not a JSON object."""
    path = Path(run) / CORPUS_RECORD
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0]
        raise ValueError(f"{str(path)!r} is not a valid corpus record ({reason}); was it cut short or edited?") from err
    if not isinstance(recorded, dict):
        raise ValueError(
            f"{str(path)!r} is not a valid corpus record: it holds a JSON {type(recorded).__name__}, not an object"
        )
    return recorded


def corpus_change(recorded: dict, corpus: Corpus) -> str | None:
    """What changed between a run's recorded manifest (``corpus.json``) and `corpus` as loaded now, in one
    line; None when the content hash is the same (or the record has none to compare)."""
    old, new = recorded.get("sha256"), corpus.manifest.get("sha256")
    if not old or old == new:
        return None
    changes = [
        f"{key} {recorded[key]} -> {corpus.manifest[key]}"
        for key in ("documents", "bytes", "python")
        if key in recorded and key in corpus.manifest and recorded[key] != corpus.manifest[key]
    ]
    changes.append(f"sha256 {old[:12]} -> {str(new)[:12]}")
    return (
        f"corpus {recorded.get('spec', corpus.name)!r} changed since the run was trained ({', '.join(changes)}); "
        "its train/valid/test split may now hold documents the model was trained on"
    )


def stdlib_corpus() -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    documents, names = [], []
    for entry in sorted(root.iterdir()):
        if entry.name in _STDLIB_SKIP or entry.name.startswith((".", "_pydev")):
            continue
        if entry.is_dir() and (entry / "__init__.py").exists():
            files = sorted(p for p in entry.rglob("*.py") if not _STDLIB_SKIP & set(p.relative_to(root).parts))
            parts = [f"# file: {p.relative_to(root)}\n".encode() + p.read_bytes() for p in files]
            if parts:
                documents.append(b"\n".join(parts))
                names.append(entry.name + "/")
        elif entry.suffix == ".py" and entry.is_file():
            documents.append(f"# file: {entry.name}\n".encode() + entry.read_bytes())
            names.append(entry.name)
    version = ".".join(map(str, sys.version_info[:3]))
    manifest = {"source": "python-stdlib", "python": version, "names_sha256": _digest([n.encode() for n in names])}
    return Corpus("stdlib", documents, manifest)


def _directory_documents(path: Path, cap: int) -> list[bytes]:
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [_read_text(p, cap).encode() for p in files]


def _jsonl_documents(path: Path, text_field: str, cap: int) -> list[bytes]:
    documents = []
    with open(path, "rb") as f:  # line by line, each read capped: the file as a whole may be larger than one document
        for line_no, raw in enumerate(iter(lambda: f.readline(cap + 1), b""), 1):
            if len(raw) > cap:
                raise ValueError(_too_large(f"{path}:{line_no}", cap))
            line = _decode(raw, f"{path}:{line_no}")
            if not line.strip():
                continue
            documents.append(_jsonl_record(line, path, line_no, text_field))
    return documents


def _jsonl_record(line: str, path: Path, line_no: int, text_field: str) -> bytes:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{line_no} is not valid JSON: {err}") from err
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
        raise ValueError(f"{path}:{line_no} has no string field {text_field!r}")
    return record[text_field].encode()


def _too_large(where: str, cap: int) -> str:
    return (
        f"{where} is larger than the document size cap of {cap:,} bytes ({cap / 2**30:g} GiB); "
        "split it into smaller documents or raise load_corpus(max_document_bytes=...)"
    )


def _read_text(path: Path, cap: int = MAX_DOCUMENT_BYTES) -> str:
    with open(path, "rb") as f:  # read at most cap + 1 bytes: a device or an endless pipe stops at the cap
        data = f.read(cap + 1)
    if len(data) > cap:
        raise ValueError(_too_large(str(path), cap))
    return _decode(data, str(path))


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{where} is not UTF-8 text ({err.reason} at byte {err.start}); convert or remove it") from err


def _digest(items: list[bytes]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(hashlib.sha256(item).digest())
    return h.hexdigest()
