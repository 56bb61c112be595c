"""What stops a training run that has gone wrong, and what it then says.

`DivergenceGuard` judges each update: a non-finite loss or gradient norm, or a loss spike, is a bad step (the
trainer skips its update and keeps the memories from before it); more than ``--max-bad-steps`` bad steps in a row
stop the run with `TrainingDiverged`.

`SpikeGuard` flags a loss that explodes but stays finite (5.6 -> 9.5e7 -> 2,718 with a learning rate far too high):
the trainer treats such a step as it treats a non-finite one (no update, memories as before, counted
toward ``--max-bad-steps``), so a run whose loss blew up stops instead of finishing with a model worse than a
uniform guess. `diverged_note` says what such a run leaves on disk, as it is: no checkpoint, or which kept
checkpoint is from before the bad steps and how to go on from it.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from pathlib import Path

from longrange.train.checkpoint import find_checkpoint, older_checkpoints, read_meta

log = logging.getLogger(__name__)

SPIKE_WINDOW = 100  # accepted losses the median is taken over


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stayed non-finite, or the loss spiked (`SpikeGuard`), for more steps in a row
    than `max_bad_steps` allows."""


class SpikeGuard:
    """Flags a step whose loss is above ``factor`` times a reference: the median of the last `SPIKE_WINDOW`
    accepted losses (before there are any, ln(vocab): the loss of a uniform guess), and never less than 1 nat,
    so that a model near zero loss (a copy task) is not flagged for ordinary noise. ``factor`` 0 turns it off.

    A sound run's loss stays below its starting value, about ln(vocab); ten times the running median is far
    outside what noise, a hard batch or a learning-rate warmup give, and it is where the runs that exploded were.
    The accepted losses are part of a checkpoint, so a resumed run decides as the uninterrupted one would.
    """

    def __init__(self, factor: float, vocab_size: int):
        self.factor = factor
        self.uniform = math.log(max(vocab_size, 2))
        self.recent: deque[float] = deque(maxlen=SPIKE_WINDOW)

    def reference(self) -> float:
        return max(statistics.median(self.recent) if self.recent else self.uniform, 1.0)

    def is_spike(self, loss: float) -> bool:
        return self.factor > 0 and loss > self.factor * self.reference()

    def accept(self, loss: float) -> None:
        self.recent.append(loss)

    def state_dict(self) -> list[float]:
        return list(self.recent)

    def load_state_dict(self, losses: list[float] | None) -> None:
        self.recent.clear()
        self.recent.extend(float(x) for x in losses or [])


class DivergenceGuard:
    """Bad steps in a row, counted: `judge` says whether an update's loss and gradient norm may be applied, and
    `after_bad_step` stops the run past `max_bad_steps` (else it logs the skip). Its counts are part of a checkpoint
    (``bad_steps``, and the spike guard's accepted losses), so a resumed run decides as the uninterrupted one."""

    def __init__(self, max_bad_steps: int, spike_factor: float, vocab_size: int):
        self.max_bad_steps = max_bad_steps
        self.spikes = SpikeGuard(spike_factor, vocab_size)
        self.bad_steps = 0

    def judge(self, loss: float, grad_norm: float, *, scaled: bool) -> str | None:
        """None for a good step (counted as such), else what is wrong with it (counted as a bad step). ``scaled``:
        fp16 loss scaling, whose overflowed gradients the scaler skips itself (a non-finite norm is its business)."""
        finite = math.isfinite(loss) and (math.isfinite(grad_norm) or scaled)
        if finite and not self.spikes.is_spike(loss):
            self.bad_steps = 0
            self.spikes.accept(loss)
            return None
        self.bad_steps += 1
        if finite:
            return f"loss {loss:.4g}, above {self.spikes.factor:g} x {self.spikes.reference():.4g} (--spike-factor)"
        return f"non-finite loss {loss:.4g}, gradient norm {grad_norm:.4g}"

    def after_bad_step(self, step: int, problem: str, out_dir: Path) -> None:
        """Raise `TrainingDiverged` when bad step `step` (counted from 1) is one too many in a row; else log it."""
        if self.bad_steps > self.max_bad_steps:
            problem = problem.removeprefix("non-finite ")  # the message says "diverged" already
            raise TrainingDiverged(
                f"training diverged at step {step}: {problem} ({self.bad_steps} bad step(s) in a row, "
                f"--max-bad-steps {self.max_bad_steps}); {diverged_note(out_dir, step - self.bad_steps + 1)}"
            )
        log.warning("step %d: %s; update skipped", step, problem)


def diverged_note(out_dir: Path, first_bad_step: int) -> str:
    """What a run that diverged at `first_bad_step` (the first of its bad steps in a row) keeps, and what to do.

    A checkpoint of step S holds the weights after S updates; the first bad step computed its loss with the
    weights after ``first_bad_step - 1`` updates, and no update was made during the bad steps, so a checkpoint
    of that step or later holds the weights that diverged, and resuming from an earlier one repeats the same
    steps exactly (resume is exact), divergence included: going on means other settings, so a new run."""
    newest = find_checkpoint(out_dir)
    if newest is None:
        return (
            "no checkpoint was written before it diverged, so the run keeps none; start it again with a lower --lr "
            "or a longer --warmup-steps (--overwrite)"
        )
    kept = {p: read_meta(p).get("step") for p in (newest, *older_checkpoints(out_dir))}
    before = [(step, p) for p, step in kept.items() if isinstance(step, int) and step < first_bad_step - 1]
    if not before:
        steps = ", ".join(str(s) for s in sorted(s for s in kept.values() if isinstance(s, int)))
        return (
            f"the checkpoints kept (step {steps}) hold the weights that diverged; start the run again with a lower "
            "--lr or a longer --warmup-steps (--overwrite)"
        )
    step, path = max(before)
    later = " (newer ones hold the weights that diverged)" if len(before) < len(kept) else ""
    return (
        f"the newest checkpoint from before the bad steps is {path} (step {step}){later}; start a new run from its "
        f"weights with --init-from {path} and a lower --lr or a longer --warmup-steps (--resume would repeat the same "
        "steps exactly, and diverge again)"
    )
