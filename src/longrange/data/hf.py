"""``--data hf:NAME[:CONFIG]``: a Hugging Face dataset with a text field, through the optional `datasets` package.

NAME is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (read offline), or a
dataset name on the Hugging Face Hub, which `datasets` downloads (and caches) because the user asked for it
by name. Every row's text field becomes one document; the rows of all the dataset's splits are pooled and
split by document like every other corpus (deliberately: one split rule for every source, so a run's held-out
documents never depend on how a dataset author cut it).
"""

from __future__ import annotations

from pathlib import Path


def hf_documents(spec: str, text_field: str = "text") -> tuple[str, list[bytes], dict]:
    """The corpus's name, its documents (every row's text, encoded) and its manifest entry."""
    try:
        import datasets  # an optional extra, needed only for --data hf:
    except ImportError as err:
        raise ValueError(
            f"--data {spec!r} needs the Hugging Face `datasets` package: pip install 'longrange[hf-datasets]'"
        ) from err
    name, _, config = spec.removeprefix("hf:").partition(":")
    if not name:
        raise ValueError(f"--data {spec!r}: give a dataset, hf:NAME or hf:NAME:CONFIG")
    if Path(name).is_dir():
        loaded = datasets.load_from_disk(name)
    else:
        loaded = datasets.load_dataset(name, config or None)
    parts = list(loaded.values()) if isinstance(loaded, datasets.DatasetDict) else [loaded]
    documents = []
    for part in parts:
        if text_field not in part.column_names:
            raise ValueError(f"--data {spec!r} has no text field {text_field!r}; its fields: {part.column_names}")
        documents += [t.encode() for t in part[text_field] if isinstance(t, str) and t.strip()]
    manifest = {"source": "huggingface", "dataset": name, "config": config or None}
    return Path(name).name or name, documents, manifest
