"""Optional metric loggers beside metrics.jsonl: Weights & Biases (``--wandb PROJECT``).

`wandb_logger(project, run_dir, config)` returns a function ``log(record)`` that sends a training record's
numbers to a W&B run, or None when no project is asked for. It is used only when the optional `wandb`
package is installed (``pip install 'longrange[wandb]'``); asking for it without the package is one clear
error, never a silent no-op. Nothing here imports wandb unless a project is given.

The trainer's hook (one line in ``Trainer._log``, after the JSONL line): ``if self._wandb: self._wandb(record)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path


def wandb_logger(project: str | None, run_dir: str | Path, config: dict | None = None) -> Callable[[dict], None] | None:
    if not project:
        return None
    try:
        import wandb  # an optional extra (longrange[wandb]), needed only for --wandb
    except ImportError as err:
        raise ValueError(f"--wandb {project!r} needs the `wandb` package: pip install 'longrange[wandb]'") from err
    run = wandb.init(project=project, name=Path(run_dir).name, dir=str(run_dir), config=config or {}, resume="allow")

    def log(record: dict) -> None:
        numbers = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float) and math.isfinite(v)}
        run.log(numbers, step=int(record["step"]))

    return log
