"""Where a training run's metric records go: one list of sinks behind one small interface, built once.

A record is one line of what happened: ``{"step": 10, "loss": 2.5, "lr": 1e-3, ...}`` (a training window) or
``{"step": 10, "valid_bpb": 1.9}`` (a validation). Each `MetricSink` takes every record:

- `JsonlSink`: ``metrics.jsonl`` in the run folder, always; strict JSON (a non-finite number is written as null),
  appended through the run folder's guarded writer. `--resume` truncates it to the checkpoint's step.
- `TensorBoardSink`: ``RUN/tensorboard``, when the optional `tensorboard` package is installed (else nothing);
  its writer is made on the first record.
- `WandbSink`: a Weights & Biases run (``--wandb PROJECT``), which needs the optional `wandb` package: asking for it
  without the package is one clear error, never a silent no-op.

Only the main process writes metrics: `metric_sinks` is called there, and the other ranks log to no sink.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

from longrange.train.config import TrainConfig
from longrange.train.run_folder import METRICS, append_line


class MetricSink(Protocol):
    def log(self, record: dict[str, Any]) -> None:
        """Take one record; ``record["step"]`` is the step it belongs to."""

    def close(self) -> None:
        """Flush and release what the sink holds (the run has ended)."""


def _numbers(record: dict[str, Any]) -> dict[str, int | float]:
    """The record's finite numbers, without its step: what a plotting sink can draw."""
    return {
        key: value
        for key, value in record.items()
        if key != "step" and isinstance(value, int | float) and math.isfinite(value)
    }


class JsonlSink:
    """One JSON line per record, appended to ``metrics.jsonl``."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, record: dict[str, Any]) -> None:
        strict = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}
        append_line(self.path, json.dumps(strict, allow_nan=False))  # NaN is not JSON: null

    def close(self) -> None:
        pass  # every line is written and closed as it is logged


class TensorBoardSink:
    """Each number of a record as a TensorBoard scalar at the record's step, when tensorboard is installed."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self._writer: Any = False  # made on the first record (False: not tried yet; None: not installed)

    def log(self, record: dict[str, Any]) -> None:
        if self._writer is False:
            self._writer = _tensorboard_writer(self.log_dir)
        if self._writer is None:
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float):
                self._writer.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._writer:
            self._writer.close()


def _tensorboard_writer(log_dir: Path) -> Any:
    """A TensorBoard writer when the optional `tensorboard` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
    except ImportError:
        return None
    return SummaryWriter(str(log_dir))


class WandbSink:
    """A record's finite numbers sent to a W&B run named after the run folder (resumed when it exists)."""

    def __init__(self, project: str, run_dir: str | Path, config: dict | None = None):
        try:
            import wandb  # the optional wandb package, imported only when a project is asked for
        except ImportError as err:
            raise ValueError(f"--wandb {project!r} needs the `wandb` package: pip install 'longrange[wandb]'") from err
        self.run = wandb.init(
            project=project, name=Path(run_dir).name, dir=str(run_dir), config=config or {}, resume="allow"
        )

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(_numbers(record), step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


def metric_sinks(cfg: TrainConfig, out_dir: Path) -> list[MetricSink]:
    """The sinks a run's records go to: metrics.jsonl, TensorBoard (when installed), W&B (with ``cfg.wandb``)."""
    sinks: list[MetricSink] = [JsonlSink(out_dir / METRICS)]
    if cfg.wandb:
        sinks.append(WandbSink(cfg.wandb, out_dir, cfg.to_dict()))
    sinks.append(TensorBoardSink(out_dir / "tensorboard"))
    return sinks
