"""`export_hf(run, out)`: a run or checkpoint as a folder that `AutoModelForCausalLM.from_pretrained` loads.

The folder holds ``config.json`` (a `LongRangeConfig`: the ModelConfig under ``longrange``), ``model.safetensors``
(longrange's own tensor names, no pickles), ``generation_config.json`` and, for a run trained with a subword
tokenizer, its ``tokenizer.json``. `longrange.load`, ``longrange eval/generate`` and ``train --init-from`` read it
back. Loading it from transformers needs no remote code, only ``import longrange.hf`` first (which registers the
``longrange`` model type with the Auto classes).
"""

from __future__ import annotations

from pathlib import Path

from longrange.data.tokenizer import load_run_tokenizer, save_run_tokenizer
from longrange.hf.modeling import LongRangeForCausalLM
from longrange.model.io import load


def export_hf(run: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write `run`'s model (a run, checkpoint or export folder) into folder `out`; returns `out`.

    `out` must be new or empty unless ``overwrite`` (ValueError, one line): an export never mixes its files with a
    run's or another export's.
    """
    run, out = Path(run), Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{str(out)!r} is a file; give a folder to export into")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{str(out)!r} is not empty; give a new folder, or --overwrite to replace an earlier export")
    tokenizer = load_run_tokenizer(run)  # before writing anything: a run whose tokenizer is broken is refused
    model = LongRangeForCausalLM.from_longrange(load(run).eval())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    save_run_tokenizer(out, tokenizer)  # a subword tokenizer's tokenizer.json; bytes need no file
    return out
