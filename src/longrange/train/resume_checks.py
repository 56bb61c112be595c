"""What `--resume` checks before it continues a run, so that it continues the run as it was trained.

- The settings: the training settings, the model config and the corpus spec asked for must be the saved run's,
  except `RESUMABLE_KEYS` (`check_resume_settings`).
- A checkpoint to continue from: a checkpoint folder whose weights lack their trainer state (optimiser, data
  position, memories) cannot continue exactly; it is named and its weights are kept (`--init-from` starts a new
  run from them), never deleted on advice.
- The step: `--steps` below the run's step is refused (a run is not shortened); at the run's step there is
  nothing to train, and nothing is appended to the run.
- The tokenizer: `--tokenizer` must name the run's own (recorded in ``corpus.json``).
- The corpus: its content hash must be the one recorded in ``corpus.json``. A changed corpus moves documents
  between the splits (held-out ones into training) and the saved data position indexes another document list.
- The model config: the run's ``config.yaml`` must be the checkpoint's ``config.yaml``, the one the weights were
  trained with and the one `longrange eval` reads; an edited ``config.yaml`` is refused, as the same change
  given with ``--set`` is.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from longrange.config import ConfigError, ModelConfig
from longrange.data.corpus import corpus_change
from longrange.data.tokenized_corpus import TokenizedCorpus
from longrange.data.tokenizer import RUN_TOKENIZER, get_tokenizer
from longrange.model.io import CONFIG, WEIGHTS
from longrange.train.checkpoint import TRAINER_STATE, find_checkpoint, read_meta
from longrange.train.config import RESUMABLE_KEYS, TrainConfig, read_run, with_recipe
from longrange.train.run_folder import RunFolderError

log = logging.getLogger(__name__)

CORPUS_RECORD = "corpus.json"


def check_resume_settings(
    out_dir: str | Path, model_cfg: ModelConfig | None, train_data: dict, data: str | None
) -> tuple[ModelConfig, TrainConfig, str | None]:
    """Refuse settings that differ from the saved run's, except `RESUMABLE_KEYS`; returns the run's configs."""
    saved_model, saved_train, saved_data = read_run(out_dir)
    changed = [
        f"{key}={value!r} (the run has {getattr(saved_train, key)!r})"
        for key, value in with_recipe(train_data).items()
        if key not in RESUMABLE_KEYS
        and value != getattr(saved_train, key)
        and not (key == "precision" and value == "auto")  # auto resumes with the precision the run recorded
    ]
    if model_cfg is not None and model_cfg.to_dict() != saved_model.to_dict():
        old, new = saved_model.to_dict(), model_cfg.to_dict()
        changed += [f"model {k}={new[k]!r} (the run has {old.get(k)!r})" for k in new if new[k] != old.get(k)]
    if data is not None and data != saved_data:
        changed.append(f"--data {data!r} (the run has {saved_data!r})")
    if changed:
        raise ConfigError(
            f"--resume continues the run as it was configured; refusing changed {'; '.join(changed)}. "
            f"Only {', '.join(RESUMABLE_KEYS)} may change on resume"
        )
    merged = {**saved_train.to_dict(), **{k: v for k, v in train_data.items() if k in RESUMABLE_KEYS}}
    return saved_model, TrainConfig.from_dict(merged), saved_data


def check_resumable(out_dir: Path, steps: int, tokenizer: str | None) -> Path:
    """The checkpoint `--resume` continues from, once the step and `tokenizer` are checked (RunFolderError)."""
    path = _resume_point(out_dir)
    step = read_meta(path).get("step")
    if isinstance(step, int) and step > steps:
        raise RunFolderError(
            f"cannot resume {str(out_dir)!r} to --steps {steps}: it is already at step {step} (a run is not "
            f"shortened); pass --steps above {step} to extend it, or evaluate it as it is"
        )
    _check_tokenizer(out_dir, tokenizer)
    return path


def finished_message(out_dir: Path, steps: int) -> str | None:
    """One line when the run's newest checkpoint is already at `steps` (nothing to train), else None."""
    path = find_checkpoint(out_dir)
    if path is None or read_meta(path).get("step") != steps:
        return None
    return f"{str(out_dir)!r} is already at step {steps} of --steps {steps}: nothing to train (raise --steps)"


def check_resumed_inputs(out_dir: Path, model_cfg: ModelConfig, corpus: TokenizedCorpus) -> None:
    """Refuse (RunFolderError) a corpus or a model config that differs from the one the run was trained with."""
    recorded = _corpus_record(out_dir)
    if not recorded:
        log.warning("warning: %s has no %s: the corpus cannot be compared with the run's", out_dir, CORPUS_RECORD)
    change = corpus_change(recorded, corpus.corpus) if recorded else None
    if change:
        raise RunFolderError(
            f"cannot resume {str(out_dir)!r}: {change}, and the saved data position indexes the old document list; "
            f"restore the corpus, or start a new run from these weights with --init-from {out_dir} --out NEW"
        )
    checkpoint = _resume_point(out_dir)
    saved = ModelConfig.from_file(checkpoint / CONFIG)
    asked = model_cfg.with_run_files(out_dir)
    run_keys = _differences(_flat(model_cfg.to_dict()), _flat(asked.to_dict()))  # e.g. a disk memory's folder
    asked_flat, saved_flat = _flat(asked.to_dict()), _flat(saved.to_dict())
    differ = [key for key in _differences(asked_flat, saved_flat) if key not in run_keys]
    if differ:
        listed = "; ".join(f"{key} {asked_flat.get(key)!r} (checkpoint: {saved_flat.get(key)!r})" for key in differ[:4])
        raise RunFolderError(
            f"cannot resume {str(out_dir)!r}: its {CONFIG} differs from {str(checkpoint / CONFIG)!r}, the config the "
            f"weights were trained with and `longrange eval` reads ({listed}); --resume continues the run as it was "
            f"trained: restore {CONFIG} from the checkpoint's, or start a new run: --init-from {checkpoint} --out NEW"
        )


def _resume_point(out_dir: Path) -> Path:
    """The checkpoint to resume: the newest one, or after a kill mid-swap (no ``checkpoint/``) the newest older one.
    A ``checkpoint/`` with weights but no trainer state is damage, not a kill: it is named, never skipped over
    (training on from an older one would then collide with it), and its weights are never advised away."""
    latest = out_dir / "checkpoint"
    damaged = (latest / WEIGHTS).is_file() and not (latest / TRAINER_STATE).is_file()
    path = find_checkpoint(out_dir)
    if path is not None and not damaged:
        return path
    candidates = [latest, out_dir / "checkpoint.old", out_dir / "checkpoint-best"]
    candidates += sorted(out_dir.glob("checkpoint-step-*"), reverse=True)
    with_weights = [p for p in candidates if (p / WEIGHTS).is_file()]
    if with_weights:
        older = f", or move {latest.name}/ aside to resume from {path.name}/" if path is not None else ""
        raise RunFolderError(
            f"cannot resume {str(out_dir)!r}: no checkpoint to resume from: {with_weights[0].name}/ holds weights but "
            f"no {TRAINER_STATE} (the optimiser, data position and memories), so the run cannot continue exactly; "
            f"the weights are kept: start a new run from them with --init-from {with_weights[0]} --out NEW{older}"
        )
    raise RunFolderError(
        f"cannot resume {str(out_dir)!r}: it has no checkpoint yet (killed before its first one?); "
        "start it again with --overwrite"
    )


def _corpus_record(out_dir: Path) -> dict:
    """The run's corpus record ({} when it has none); a record that is not a JSON object is an error."""
    path = out_dir / CORPUS_RECORD
    if not path.is_file():
        return {}
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunFolderError(f"cannot read {str(path)!r} (the run's corpus record): {err}") from err
    if not isinstance(recorded, dict):
        raise RunFolderError(f"{str(path)!r} is not a corpus record (a JSON object); the run folder is damaged")
    return recorded


def _check_tokenizer(out_dir: Path, spec: str | None) -> None:
    """`--tokenizer` on resume must name the run's own tokenizer (the run reads its own in any case)."""
    if spec is None:
        return
    recorded = _corpus_record(out_dir).get("tokenizer")
    if not isinstance(recorded, dict):  # a run from before the record: a subword run keeps tokenizer.json
        recorded = {"name": "bpe"} if (out_dir / RUN_TOKENIZER).is_file() else {"name": "bytes"}
    if spec == "bytes":
        same = recorded.get("name") == "bytes"
    elif spec.startswith("bpe:"):
        same = recorded.get("source") == spec
    else:
        same = recorded.get("name") == "bpe" and recorded.get("sha256") == get_tokenizer(spec).identity
    if not same:
        run_has = (
            "bytes"
            if recorded.get("name") == "bytes"
            else f"a BPE of {recorded.get('vocab_size', '?')} ids from {recorded.get('source', '?')}"
        )
        raise RunFolderError(
            f"--tokenizer {spec!r} is not the tokenizer of {str(out_dir)!r} ({run_has}); --resume continues with the "
            "run's own tokenizer: leave --tokenizer out, or start a new run"
        )


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _differences(a: dict, b: dict) -> list[str]:
    return [key for key in dict.fromkeys([*a, *b]) if a.get(key) != b.get(key)]
