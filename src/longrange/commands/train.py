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
import os
import sys
import typing
from pathlib import Path

from longrange.config import ConfigError, ModelConfig, check_run_config_sections, load_yaml_text, read_yaml
from longrange.train.config import RESUMABLE_KEYS, TrainConfig
from longrange.train.guards import TrainingDiverged
from longrange.train.resume_checks import check_resume_settings, finished_message
from longrange.train.run_folder import RUN_CONFIG
from longrange.train.signals import TrainingInterrupted
from longrange.train.trainer import train

CONFIG_SECTIONS = ("model", "train", "data")  # what a --config file may hold


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, default None (= take the file's or the dataclass's value); the help
    text is the field's own (written once, in TrainConfig)."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint, text = hints[f.name], f.metadata["help"]
        if f.name in RESUMABLE_KEYS:
            text += " [may change on --resume]"
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif f.name == "betas":
            parser.add_argument(flag, type=float, nargs=2, default=None, help=text)
        else:
            choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else None
            kind = float if hint is float else (int if "int" in str(hint) else str)
            parser.add_argument(flag, type=kind, choices=choices, default=None, help=text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="model preset (see `longrange presets`)")
    parser.add_argument("--config", type=Path, help="YAML file with `model:` and/or `train:` sections")
    parser.add_argument("--recipe", help="named training recipe, e.g. compressive-paper")
    parser.add_argument("--data", default=None, help="corpus: 'stdlib' (default), a directory, a text or .jsonl file")
    parser.add_argument(
        "--tokenizer", default=None, help="bytes (default), bpe:VOCAB (trained on the training split) or FILE.json"
    )
    parser.add_argument("--out", type=Path, required=True, help="run directory")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, as it was configured (its saved config, "
        "corpus and schedule); options marked [may change on --resume] may differ, others are refused",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        metavar="RUN",
        help="start from the weights of another run or checkpoint (fine-tuning; e.g. a transformer-xl run into a "
        "memorizing model): tensors it lacks start fresh, both lists are printed; optimiser and data start anew",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="start afresh in a non-empty --out, replacing an earlier run's files"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model config overrides")
    add_train_options(parser)


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value")
        overrides[key] = load_yaml_text(value, f"--set {key}")
    return overrides


def _file_sections(path: Path | None) -> dict:
    if path is None:
        return {}
    data = read_yaml(path)
    check_run_config_sections(data, CONFIG_SECTIONS, source=f"config file {str(path)!r}")
    return data


def _model_config(args: argparse.Namespace, file_data: dict) -> ModelConfig | None:
    """The model config the options ask for; None when they name none (`--resume` then takes the run's)."""
    model_data = file_data.get("model", {})
    if not isinstance(model_data, dict):
        raise ConfigError(f"the `model:` section of {str(args.config)!r} must be a mapping")
    model_data = dict(model_data)
    preset = args.preset or model_data.pop("preset", None)
    if preset is None and not model_data and not args.set:
        return None
    if preset is None and not model_data:
        preset = "transformer-xl-tiny"
    model_cfg = ModelConfig.from_name(preset).replace(**model_data) if preset else ModelConfig.from_dict(model_data)
    if args.set:
        model_cfg = model_cfg.replace(**parse_overrides(args.set))
    return model_cfg


def _train_options(args: argparse.Namespace, file_data: dict) -> dict:
    train_data = file_data.get("train", {})
    if not isinstance(train_data, dict):
        raise ConfigError(f"the `train:` section of {str(args.config)!r} must be a mapping")
    train_data = dict(train_data)
    if args.recipe:
        train_data["recipe"] = args.recipe
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            train_data[f.name] = list(value) if f.name == "betas" else value
    return train_data


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig, str | None]:
    """The run's configs: from the options (a new run), or the saved run's with the options checked (`--resume`)."""
    file_data = _file_sections(args.config)
    model_cfg = _model_config(args, file_data)
    train_data = _train_options(args, file_data)
    data = args.data or file_data.get("data")
    if getattr(args, "resume", False) and (args.out / RUN_CONFIG).is_file():
        return check_resume_settings(args.out, model_cfg, train_data, data)
    return model_cfg or ModelConfig.from_name("transformer-xl-tiny"), TrainConfig.from_dict(train_data), data


def run(args: argparse.Namespace) -> int:
    if args.resume and args.init_from is not None:
        raise ConfigError("--init-from starts a new run from other weights; --resume continues this run's: pick one")
    model_cfg, train_cfg, data = configs_from_args(args)
    if args.resume and not args.overwrite and (done := finished_message(args.out, train_cfg.steps)):
        print(f"longrange train: {done}")  # nothing trained, nothing appended to the run
        return 0
    try:
        out = train(
            model_cfg,
            train_cfg,
            data,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            init_from=args.init_from,
            tokenizer=args.tokenizer,
        )
    except TrainingInterrupted as stop:
        print(f"longrange train: {stop}; continue with: longrange train --out {args.out} --resume", file=sys.stderr)
        return stop.exit_code
    except TrainingDiverged as err:
        print(f"longrange train: error: {err}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 prints
        print(f"trained {model_cfg.name} for {train_cfg.steps} steps -> {out}")
    return 0
