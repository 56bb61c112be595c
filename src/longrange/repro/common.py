"""Helpers shared by the reproductions: train a config on documents, score it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from longrange.config import ModelConfig
from longrange.eval.evaluate import evaluate
from longrange.model.build import build_model
from longrange.model.lm import LongRangeLM
from longrange.train.config import TrainConfig
from longrange.train.trainer import Trainer


def train_model(
    cfg: ModelConfig,
    documents: list[bytes],
    out: Path,
    *,
    steps: int,
    batch_size: int,
    lr: float = 2e-3,
    seed: int = 0,
    model: LongRangeLM | None = None,
) -> tuple[LongRangeLM, list[dict]]:
    """Train with the project's trainer (no progress bar); returns the model and its metric records.

    ``model``: continue training this model (a curriculum stage) instead of building a fresh one from `cfg`.
    """
    torch.manual_seed(seed)
    model = build_model(cfg) if model is None else model
    train_cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=min(50, steps // 10),
        checkpoint_every=steps,
        log_every=max(1, steps // 20),
        progress=False,
        seed=seed,
    )
    out.mkdir(parents=True, exist_ok=True)  # the Trainer writes into the folder; `train()` is what creates one
    trainer = Trainer(model, train_cfg, documents, None, out)
    history = trainer.fit()
    return model, history


def held_out_bpb(model: LongRangeLM, documents: list[bytes]) -> dict:
    result = evaluate(model, documents, batch_size=min(4, len(documents)))
    return {"bpb": result["bpb"], "by_position": result["by_position"]}


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=1))


def train_recall(
    cfg: ModelConfig,
    stages: list[tuple[list[bytes], int]],
    out: Path,
    *,
    batch_size: int,
    lr: float,
) -> LongRangeLM:
    """Train one model through a recall curriculum: ``stages`` is [(documents, steps), ...], run in order.

    The recall reproductions (compression, memory-size) share it: short gaps first teach the retrieval
    where every attention still sees the fact, the long gaps then make it go through the memory.
    """
    model = None
    for stage, (documents, steps) in enumerate(stages):
        model, _ = train_model(
            cfg,
            documents,
            out.with_name(f"{out.name}-recall{stage + 1}"),
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            model=model,
        )
    return model
