"""SIGINT / SIGTERM during training: the step in progress is finished, a checkpoint written, and the run stops.

`StopSignals` records the first signal for the loop to see between steps (a second one aborts at once: the last
checkpoint on disk is whole). The loop then raises `TrainingInterrupted`, which the `train` command turns into the
shell's exit code for that signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM: the current step was finished and a checkpoint written."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = f"checkpoint written to {checkpoint}" if checkpoint else "no checkpoint written"
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}; {where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class StopSignals:
    """The first SIGINT/SIGTERM asks the loop to stop after the current step (``signum`` is set); a second one
    aborts. Handlers are installed only in the main thread (Python allows no other), and restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # second signal: abort now (the last checkpoint on disk is whole)
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("%s: finishing this step and writing a checkpoint (again to abort)", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
