"""A training run from start to end, around a trainer: what `train` does besides the updates.

1. The run folder is claimed (locked, then judged: new, ``--overwrite`` or ``--resume``; `longrange.train.run_folder`)
   and, on resume, checked (`longrange.train.resume_checks`): a checkpoint to continue, the step, the tokenizer.
2. The corpus is read (tokenized once and kept in the run for a subword tokenizer) and, on resume, compared with the
   one the run was trained with, as is the model config.
3. ``precision: auto`` is decided once, and recorded.
4. The model is built from the seed; ``--init-from`` loads another run's weights into it (a new run only).
5. The run config is written (a new run: what `--resume` and `eval` read), the trainer resumes (or starts), trains
   and validates once more at the end.

Every rank takes part under torchrun; the checks run on rank 0 and stop every rank with the same error
(`DistInfo.agree`). The lock is released and the process group torn down however the run ends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from longrange.config import ModelConfig, read_yaml
from longrange.data.tokenized_corpus import run_corpus
from longrange.data.tokenizer import save_run_tokenizer
from longrange.model.build import build_model
from longrange.runtime import resolve_device, resolve_precision
from longrange.train.config import TrainConfig, write_run_config
from longrange.train.distributed import init_distributed, shutdown_distributed
from longrange.train.init_from import init_weights
from longrange.train.resume_checks import check_resumable, check_resumed_inputs, finished_message
from longrange.train.run_folder import RUN_CONFIG, RunLock, prepare_run_folder, record_invocation, write_run_file

if TYPE_CHECKING:  # the trainer module hands its class in (it imports this one)
    from longrange.train.trainer import Trainer

log = logging.getLogger(__name__)


def run_training(
    make_trainer: Callable[..., Trainer],
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: str | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    tokenizer: str | None = None,
) -> Path:
    """The body of `longrange.train.train` (see there), with the trainer made by ``make_trainer(model, train_cfg,
    train_docs, valid_docs, out_dir, dist_info)``."""
    out_dir = Path(out_dir)
    model_cfg.to_text()  # a config that could not be read back once written is refused before the folder is touched
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    device = resolve_device(train_cfg.device)
    dist_info = init_distributed(device)
    lock: RunLock | None = None
    trainer: Trainer | None = None
    clean = False
    try:

        def claim_folder() -> RunLock:
            # an existing folder is locked before it is judged, so a run in progress is named as such
            held = RunLock(out_dir) if out_dir.is_dir() else None
            try:
                prepare_run_folder(out_dir, resume=resume, overwrite=overwrite, init_from=init_from)
                held = held or RunLock(out_dir)
                if resume:
                    check_resumable(out_dir, train_cfg.steps, tokenizer)
            except BaseException:
                if held is not None:
                    held.release()
                raise
            return held

        lock = dist_info.agree(claim_folder)
        if resume and (done := finished_message(out_dir, train_cfg.steps)):  # nothing to train, nothing appended
            log.info("%s", done)
            clean = True
            return out_dir
        corpus = dist_info.agree(lambda: run_corpus(data, tokenizer, out_dir, resume), main_only=False)
        model_cfg = corpus.model_config(model_cfg)  # a subword tokenizer's vocabulary size
        if resume:  # the corpus and the model config the run was trained with
            dist_info.agree(lambda: check_resumed_inputs(out_dir, model_cfg, corpus), main_only=False)
        train_cfg = _decided_precision(train_cfg, device, model_cfg, out_dir, resume)
        torch.manual_seed(train_cfg.seed)
        with torch.device("cpu"):  # the seed gives the same initial weights whatever the run's or default device
            model = build_model(model_cfg.with_run_files(out_dir))  # e.g. a disk-backed kNN memory
        init_report = None
        if init_from is not None and not resume:  # byte documents only: a subword run's are token documents
            held_out = corpus.split("valid")
            init_report = init_weights(model, Path(init_from), held_out if isinstance(held_out, list) else None)
        trainer = make_trainer(model, train_cfg, corpus.split("train"), corpus.split("valid"), out_dir, dist_info)
        if dist_info.is_main:
            record_invocation(out_dir, dist_info.world_size)
            if not resume:
                write_run_config(out_dir, model_cfg, train_cfg, data, corpus.manifest, init_from)
                if init_report is not None:
                    write_run_file(out_dir / "init-from.json", json.dumps({"source": str(init_from), **init_report}))
                save_run_tokenizer(out_dir, corpus.tokenizer)
        dist_info.barrier()
        if resume:
            trainer.resume()
        trainer.fit()
        final = trainer.validate(train_cfg.eval_segments)  # a bounded check; `longrange eval` reads everything
        if final:
            trainer.log_metrics({"step": trainer.step, **final})
        clean = True
    finally:
        if trainer is not None:
            trainer.close()
        if lock is not None:
            lock.release()
        shutdown_distributed(dist_info, clean=clean)
    return out_dir


def _decided_precision(
    train_cfg: TrainConfig, device: torch.device, model_cfg: ModelConfig, out_dir: Path, resume: bool
) -> TrainConfig:
    """`precision: auto` decided once for a run: a resumed run keeps the precision it recorded (when it moved to
    another machine too), a new one takes `resolve_precision`'s choice, which the run config then records."""
    if train_cfg.precision != "auto":
        return train_cfg
    if resume and (out_dir / RUN_CONFIG).is_file():
        recorded = TrainConfig.from_dict(read_yaml(out_dir / RUN_CONFIG).get("train", {})).precision
        if recorded != "auto":
            return dataclasses.replace(train_cfg, precision=recorded)
    return dataclasses.replace(train_cfg, precision=resolve_precision("auto", device, model_cfg))
