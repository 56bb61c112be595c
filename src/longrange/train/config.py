"""The training configuration: `TrainConfig` (each field's help text written once, read by `train --help`), the
named optimisation recipes, the settings a resumed run may change, and the run config a run folder records.

A run folder holds its model config (``config.yaml``) and ``train.yaml``: the training config and the corpus spec
it was started with. `write_run_config` writes both when a run starts; `read_run` reads them back, for `--resume`
(which continues the run as it was configured) and for whoever asks how a run was trained.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from longrange.config import ConfigError, ModelConfig, check_field_types, dataclass_from_dict, dump_yaml, read_yaml
from longrange.train.run_folder import RUN_CONFIG, write_run_file


def _option(default: Any, help: str, **kw: Any) -> Any:
    """A TrainConfig field whose help text is written once: here (the `train` command reads it)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    steps: int = _option(1000, "parameter updates (may be raised on --resume to extend a run)")
    batch_size: int = _option(8, "rows (documents read in parallel), global over all ranks")
    segment_len: int | None = _option(None, "tokens per row per micro-batch (default: the model's segment_len)")
    lr: float = _option(1e-3, "peak learning rate")
    init_lr: float = _option(0.0, "learning rate at step 0 (linear warmup starts here)")
    min_lr: float = _option(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _option(100, "linear warmup steps")
    optimizer: Literal["adamw", "adam"] = _option("adamw", "adamw or adam")
    weight_decay: float = _option(0.1, "AdamW weight decay on matrices")
    betas: list[float] = _option([0.9, 0.95], "Adam betas, e.g. 0.9 0.95")
    grad_clip: float = _option(1.0, "max global gradient norm (0: off)")
    accumulate: int = _option(1, "micro-batches per update (update every k steps)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _option(
        "auto",
        "auto (bf16 autocast where the device has fast bf16 matrix products and the model trains faster in it, "
        "else fp32: see longrange.runtime.resolve_precision; the run records the choice), fp32, bf16 "
        "(autocast) or fp16 (autocast + gradient scaler)",
    )
    seed: int = _option(0, "random seed (weights, data order)")
    eval_every: int = _option(0, "validate every N steps and keep the best checkpoint (0: only at the end)")
    eval_segments: int = _option(32, "segments (of batch rows) per validation; `longrange eval` reads everything")
    checkpoint_every: int = _option(100, "write a checkpoint every N steps")
    keep_checkpoints: int = _option(2, "checkpoints kept, the newest included (plus the best with --eval-every)")
    max_bad_steps: int = _option(
        3,
        "bad steps (a non-finite loss or gradient norm, or a loss spike) in a row that are skipped (no update) "
        "before the run stops as diverged (0: stop at once)",
    )
    spike_factor: float = _option(
        10.0,
        "a loss above this many times the median of the last 100 accepted losses (at least 1 nat; at the start "
        "ln(vocab), a uniform guess) is a bad step, like a non-finite one (0: off)",
    )
    log_every: int = _option(10, "write metrics every N steps")
    device: str = _option("auto", "cpu, cuda, cuda:N or auto (cuda when available)")
    shard: Literal["ddp", "fsdp"] = _option(
        "ddp",
        "under torchrun: ddp (each rank holds the whole model) or fsdp (FSDP2: parameters, gradients and optimiser "
        "state split across ranks, for models larger than one device)",
    )
    compile: bool = _option(False, "torch.compile the model")
    threads: int | None = _option(None, "torch CPU threads (default: torch's: OMP_NUM_THREADS or the physical cores)")
    progress: bool = _option(True, "show a progress bar (off: a plain loss line every --log-every steps)")
    wandb: str | None = _option(None, "also log to this Weights & Biases project (needs the optional wandb package)")

    def __post_init__(self) -> None:
        check_field_types(self)
        for key in ("steps", "batch_size", "accumulate", "checkpoint_every", "log_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 1")
        for key in ("segment_len", "threads"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 1 (or left out for the default)")
        for key in ("eval_every", "max_bad_steps", "warmup_steps", "eval_segments"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 0")
        for key in ("lr", "min_lr", "init_lr", "weight_decay", "grad_clip", "spike_factor"):
            if not math.isfinite(getattr(self, key)):  # inf passes every comparison below, and NaN fails none
                raise ConfigError(f"train.{key}={getattr(self, key)} must be a finite number")
        if self.lr <= 0 or self.min_lr < 0 or self.init_lr < 0:
            raise ConfigError("train.lr must be > 0 and train.min_lr, train.init_lr >= 0")
        if self.spike_factor < 0 or 0 < self.spike_factor <= 1:
            raise ConfigError(f"train.spike_factor={self.spike_factor} must be above 1 (or 0: off)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas={self.betas} must be two numbers in [0, 1)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        if "bf16" in data:  # train.yaml of runs before `precision`
            data["precision"] = "bf16" if data.pop("bf16") else data.get("precision", "fp32")
        recipe = data.pop("recipe", None)
        base = RECIPES.get(recipe, {}) if recipe is None or recipe in RECIPES else _unknown_recipe(recipe)
        return dataclass_from_dict(cls, {**base, **data}, prefix="train.")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_yaml(path).get("train", {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# settings that may differ when a run is resumed (everything else must match the saved run)
RESUMABLE_KEYS = (
    "steps",
    "log_every",
    "progress",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_every",
    "eval_segments",
    "max_bad_steps",
    "spike_factor",
    "device",
    "compile",
    "threads",
    "wandb",
)


# named optimisation recipes (`recipe:` in a train config)
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # Rae et al. 2020: Adam, warmup 1e-6 -> 3e-4, cosine back to 1e-6, clip 0.1, update every k steps
    "compressive-paper": {
        "optimizer": "adam",
        "lr": 3e-4,
        "init_lr": 1e-6,
        "min_lr": 1e-6,
        "grad_clip": 0.1,
        "accumulate": 4,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
    },
}


def _unknown_recipe(name: str) -> dict:
    raise ConfigError(f"unknown train recipe {name!r}; choose one of {sorted(RECIPES)}")


def with_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its recipe's settings in place of the name (its own settings win): what it asks for."""
    recipe = data.get("recipe")
    base = {} if recipe is None else RECIPES[recipe] if recipe in RECIPES else _unknown_recipe(recipe)
    return {**base, **{key: value for key, value in data.items() if key != "recipe"}}


# ----------------------------------------------------------------------------- the run config on disk


def write_run_config(
    out_dir: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: str | None,
    manifest: dict,
    init_from: str | Path | None = None,
) -> None:
    """What `--resume` and `eval` read: the model config, the training config + corpus spec, the corpus manifest."""
    write_run_file(out_dir / "config.yaml", model_cfg.to_text())
    run_config = {"train": train_cfg.to_dict(), "data": data}
    if init_from is not None:
        run_config["init_from"] = str(init_from)
    write_run_file(out_dir / RUN_CONFIG, dump_yaml(run_config, "the run config"))
    write_run_file(out_dir / "corpus.json", json.dumps({"spec": data or "stdlib", **manifest}, indent=1))


def read_run(out_dir: str | Path) -> tuple[ModelConfig, TrainConfig, str | None]:
    """The model config, training config and corpus spec a run was started with (what `--resume` continues)."""
    out_dir = Path(out_dir)
    saved = read_yaml(out_dir / RUN_CONFIG)
    model_cfg = ModelConfig.from_file(out_dir / "config.yaml")
    return model_cfg, TrainConfig.from_dict(saved.get("train", {})), saved.get("data")
