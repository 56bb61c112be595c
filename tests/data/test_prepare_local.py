"""`data prepare enwik8|pg19|wikitext103 --from ...` from small fixtures of the real layouts; `--data hf:`."""

from __future__ import annotations

import json
import zipfile

import pytest

from longrange.cli import main
from longrange.data.corpus import PreparedCorpus, load_corpus
from longrange.data.prepare import prepare_local


def _enwik8_zip(path, n=1000):
    data = bytes((i * 7) % 251 + 1 for i in range(n))  # any n bytes stand in for the 10^8 of enwik8
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("enwik8", data)
    return data


def test_enwik8_is_split_90_5_5_by_bytes_and_read_back_memory_mapped(tmp_path):
    data = _enwik8_zip(tmp_path / "enwik8.zip")
    out = prepare_local("enwik8", tmp_path / "enwik8.zip", tmp_path / "data", enwik8_bytes=1000)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v["bytes"] for k, v in manifest["splits"].items()} == {"train": 900, "valid": 50, "test": 50}
    assert len(manifest["sources"][0]["enwik8_sha256"]) == 64
    corpus = load_corpus(out)
    assert isinstance(corpus, PreparedCorpus)
    assert corpus.split("train")[0].tobytes() == data[:900] and corpus.split("test")[0].tobytes() == data[950:]
    assert corpus.manifest["bytes"] == 1000


def test_enwik8_of_the_wrong_size_is_refused(tmp_path):
    _enwik8_zip(tmp_path / "enwik8.zip", 999)
    with pytest.raises(ValueError, match="999 bytes, not the 1,000 of enwik8"):
        prepare_local("enwik8", tmp_path / "enwik8.zip", tmp_path / "data", enwik8_bytes=1000)
    with pytest.raises(ValueError, match="not the 100,000,000"):
        prepare_local("enwik8", tmp_path / "enwik8.zip", tmp_path / "data")


def test_pg19_keeps_the_dataset_splits_one_document_per_book(tmp_path):
    src = tmp_path / "pg19"
    books = {"train": ["10.txt", "11.txt", "12.txt"], "validation": ["20.txt"], "test": ["30.txt", "31.txt"]}
    for folder, names in books.items():
        (src / folder).mkdir(parents=True)
        for name in names:
            (src / folder / name).write_text(f"book {folder}/{name}\n" * 20)
    (src / "metadata.csv").write_text("id,title\n")  # the real layout has it; not a book
    out = prepare_local("pg19", src, tmp_path / "data")
    corpus = load_corpus(out)
    assert [len(corpus.split(s)) for s in ("train", "valid", "test")] == [3, 1, 2]
    assert corpus.split("valid")[0].tobytes() == b"book validation/20.txt\n" * 20
    manifest = json.loads((out / "manifest.json").read_text())
    assert [d["source"] for d in manifest["splits"]["test"]["documents"]] == ["test/30.txt", "test/31.txt"]
    (src / "test").rename(src / "elsewhere")
    with pytest.raises(ValueError, match=r"lacks the folder\(s\) \['test'\]"):
        prepare_local("pg19", src, tmp_path / "data2")


def test_wikitext103_is_split_into_articles_at_top_level_headings(tmp_path):
    src = tmp_path / "wikitext-103"
    src.mkdir()
    article = " = {t} = \n \n Some text about {t} . \n \n = = Section = = \n \n More @-@ text . \n \n"
    for split, titles in {"train": ["Alpha", "Beta", "Gamma"], "valid": ["Delta"], "test": ["Eps", "Zeta"]}.items():
        (src / f"wiki.{split}.tokens").write_text(" \n" + "".join(article.format(t=t) for t in titles))
    corpus = load_corpus(prepare_local("wikitext103", src, tmp_path / "data"))
    train = [d.tobytes().decode() for d in corpus.split("train")]
    assert len(train) == 3 and train[1].startswith(" = Beta = \n") and "= = Section = =" in train[1]
    assert len(corpus.split("test")) == 2


def test_data_prepare_command_needs_from_for_local_corpora(tmp_path, capsys):
    _enwik8_zip(tmp_path / "enwik8.zip")
    assert main(["data", "prepare", "enwik8", "--root", str(tmp_path)]) != 0
    assert "needs --from" in capsys.readouterr().err


def test_hf_dataset_saved_to_disk_is_a_corpus(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {"text": [f"document {i} " * 10 for i in range(6)] + [""], "id": list(range(7))}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "ds"))
    corpus = load_corpus(f"hf:{tmp_path / 'ds'}")
    assert len(corpus.documents) == 6 and corpus.manifest["source"] == "huggingface"
    with pytest.raises(ValueError, match="no text field 'body'"):
        load_corpus(f"hf:{tmp_path / 'ds'}", text_field="body")
