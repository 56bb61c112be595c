"""The run folder: who may write it, what it must hold to be resumed, and its metrics log.

A run folder (``--out``) holds one training run::

    RUN/
      config.yaml          the model config (what `longrange eval/generate` build)
      train.yaml           the training config, the corpus spec and the world size (what `--resume` reads)
      corpus.json          the corpus manifest (its document hash is compared by `eval`)
      metrics.jsonl        one JSON record per log line
      invocations.jsonl    one line per start: command line, package and torch versions, time, world size
      checkpoint/          the newest checkpoint; checkpoint-step-N/ older kept ones; checkpoint-best/
      .lock                held (fcntl.flock) by the process training the run

The lock is an advisory ``flock`` on ``RUN/.lock``: the kernel releases it when its process dies, so
the lock of a killed run is taken over without any clean-up, and a second `train` on a folder in
use is refused with the pid of the process that holds it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK = ".lock"
METRICS = "metrics.jsonl"
INVOCATIONS = "invocations.jsonl"
RUN_CONFIG = "train.yaml"
# what a run writes: --overwrite removes these and nothing else (a user's own files stay)
RUN_FILES = ("config.yaml", RUN_CONFIG, "corpus.json", METRICS, INVOCATIONS, "tensorboard", "knn-memory")
CHECKPOINT_PREFIX = "checkpoint"


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


class RunLock:
    """An exclusive lock on a run folder for the life of this object (or of its process)."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK
        try:
            self._fh = open(self.path, "a+")  # noqa: SIM115 -- held open for the lock's lifetime
        except PermissionError as err:
            raise RunFolderError(f"cannot write the run folder {str(out_dir)!r}: {err.strerror}") from err
        try:
            fcntl.flock(self._fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self._fh.seek(0)
            holder = self._fh.read().strip() or "unknown"
            self._fh.close()
            raise RunFolderError(f"run folder {str(out_dir)!r} is in use by process {holder}") from err
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()

    def release(self) -> None:
        if not self._fh.closed:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()


def is_run_file(name: str) -> bool:
    return name in RUN_FILES or name == LOCK or name.startswith(CHECKPOINT_PREFIX)


def prepare_run_folder(out_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Check `out_dir` can hold this run; with `overwrite`, remove an earlier run's files.

    A new run needs a folder that does not exist or is empty; a folder with files in it is refused
    (they may be another run, or the user's own) unless ``overwrite``. ``resume`` needs a whole run:
    its `train.yaml` and at least one checkpoint; what is missing is named.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"--out {str(out_dir)!r} is a file, not a folder")
    if resume:
        missing = [name for name in (RUN_CONFIG, "config.yaml") if not (out_dir / name).is_file()]
        if not out_dir.is_dir():
            raise RunFolderError(f"cannot resume: {str(out_dir)!r} does not exist")
        if missing:
            raise RunFolderError(
                f"cannot resume {str(out_dir)!r}: it lacks {', '.join(missing)} (not a run folder, or a run "
                "killed before it started); start a new run with --overwrite"
            )
        return
    if out_dir.is_dir():
        entries = sorted(p.name for p in out_dir.iterdir() if p.name != LOCK)
        if entries and not overwrite:
            hint = "--resume to continue it, " if (out_dir / RUN_CONFIG).is_file() else ""
            raise RunFolderError(
                f"--out {str(out_dir)!r} is not empty ({', '.join(entries[:4])}{', ...' if len(entries) > 4 else ''}); "
                f"pass {hint}--overwrite to replace a run's files, or pick another folder"
            )
        for name in entries:
            if overwrite and is_run_file(name):
                path = out_dir / name
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create the run folder {str(out_dir)!r}: {err.strerror}") from err
    if not os.access(out_dir, os.W_OK):
        raise RunFolderError(f"cannot write the run folder {str(out_dir)!r}: permission denied")


def record_invocation(out_dir: Path, world_size: int) -> None:
    """Append this start's command line and versions to ``invocations.jsonl``."""
    import torch

    from longrange import __version__

    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "argv": sys.argv,
        "longrange": __version__,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "world_size": world_size,
    }
    append_line(out_dir / INVOCATIONS, json.dumps(record))


def append_line(path: Path, line: str) -> None:
    """Append one line; a full disk is one clear error, not a partial traceback."""
    try:
        with open(path, "a") as fh:
            fh.write(line + "\n")
    except OSError as err:
        raise RunFolderError(f"cannot write {str(path)!r}: {_disk_reason(err, path)}") from err


def _disk_reason(err: OSError, path: Path) -> str:
    if err.errno == errno.ENOSPC:
        return "the disk is full"
    return err.strerror or str(err)


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics log; a torn last line (a kill or a full disk mid-append) is dropped with a warning."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                log.warning("%s: dropping a torn last line (%s)", path, err)
                continue
            raise RunFolderError(f"{str(path)!r} line {i + 1} is not JSON ({err}); fix or remove the line") from err
    return records


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the records up to `step` (those after the checkpoint we resume from are written again)."""
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
