"""Train a model on a corpus (single process, or many with torchrun).

Examples:
  longrange train --preset transformer-xl-tiny --out runs/xl
  longrange train --config configs/transformer-xl-small.yaml --data path/to/texts --out runs/xl-small
  longrange train --preset transformer-xl-tiny --out runs/xl --resume          # continue exactly
  torchrun --nproc_per_node 2 -m longrange.cli train --preset transformer-xl-tiny --out runs/ddp
A YAML --config may hold `model:` (a `preset:` plus overrides, or every key) and `train:` sections;
command-line options override the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path

import yaml

from longrange.config import ConfigError, ModelConfig
from longrange.train.trainer import TrainConfig, train

_HELP = {
    "steps": "parameter updates",
    "batch_size": "rows (documents read in parallel), global over all ranks",
    "segment_len": "tokens per row per micro-batch (default: the model's)",
    "lr": "peak learning rate",
    "init_lr": "learning rate at step 0 (warmup starts here)",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_steps": "linear warmup steps",
    "optimizer": "adamw or adam",
    "weight_decay": "AdamW weight decay on matrices",
    "betas": "Adam betas, e.g. 0.9 0.95",
    "grad_clip": "max global gradient norm (0: off)",
    "accumulate": "micro-batches per update (update every k steps)",
    "bf16": "bf16 autocast",
    "seed": "random seed (weights, data order)",
    "eval_every": "validate every N steps (0: only at the end)",
    "eval_segments": "segments per periodic validation",
    "checkpoint_every": "write a checkpoint every N steps",
    "log_every": "write metrics every N steps",
    "device": "cpu, cuda or cuda:N",
    "threads": "torch CPU threads (default: torch's, i.e. OMP_NUM_THREADS or the physical cores)",
    "progress": "show a progress bar",
}


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, default None (= take the file's or the dataclass's value)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_HELP[f.name])
        elif f.name == "betas":
            parser.add_argument(flag, type=float, nargs=2, default=None, help=_HELP[f.name])
        else:
            kind = {int: int, float: float}.get(hint, int if "int" in str(hint) else str)
            kind = float if hint is float else kind
            parser.add_argument(flag, type=kind, default=None, help=_HELP[f.name])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="model preset (see `longrange presets`)")
    parser.add_argument("--config", type=Path, help="YAML file with `model:` and/or `train:` sections")
    parser.add_argument("--recipe", help="named training recipe, e.g. compressive-paper")
    parser.add_argument("--data", default=None, help="corpus: 'stdlib' (default), a directory, a text or .jsonl file")
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model config overrides")
    add_train_options(parser)


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value")
        overrides[key] = yaml.safe_load(value)
    return overrides


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig, str | None]:
    file_data = {}
    if args.config is not None:
        file_data = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(file_data, dict):
            raise ConfigError(f"{args.config} must hold a mapping with `model:` / `train:` sections")
    model_data = dict(file_data.get("model", {}))
    preset = args.preset or model_data.pop("preset", None)
    if preset is None and not model_data:
        preset = "transformer-xl-tiny"
    model_cfg = ModelConfig.from_name(preset, **model_data) if preset else ModelConfig.from_dict(model_data)
    if args.set:
        model_cfg = model_cfg.replace(**parse_overrides(args.set))
    train_data = dict(file_data.get("train", {}))
    if args.recipe:
        train_data["recipe"] = args.recipe
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            train_data[f.name] = list(value) if f.name == "betas" else value
    data = args.data or file_data.get("data")
    return model_cfg, TrainConfig.from_dict(train_data), data


def run(args: argparse.Namespace) -> int:
    model_cfg, train_cfg, data = configs_from_args(args)
    out = train(model_cfg, train_cfg, data, args.out, resume=args.resume)
    print(f"trained {model_cfg.name} for {train_cfg.steps} steps -> {out}")
    return 0
