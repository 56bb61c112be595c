"""The run folder: who may write it, what it must hold to be resumed, and its metrics log.

A run folder (``--out``) holds one training run::

    RUN/
      config.yaml          the model config (what `longrange eval/generate` build)
      train.yaml           the training config, the corpus spec and the world size (what `--resume` reads)
      corpus.json          the corpus manifest (its document hash is compared by `eval`)
      metrics.jsonl        one JSON record per log line
      invocations.jsonl    one line per start: command line, package and torch versions, time, world size
      checkpoint/          the newest checkpoint; checkpoint-step-N/ older kept ones; checkpoint-best/
      tokenizer.json       a subword tokenizer (none: bytes)
      .lock                held (fcntl.flock) by the process training the run
      .longrange-run       the mark of a run folder: `--overwrite` clears only folders that hold it

The run's own names (`is_run_file`) are opened without following symbolic links, and a link at one of them
is refused: a link planted in a shared folder (``.lock -> ~victim/file``) would otherwise make a run write
through it. ``--overwrite`` removes those names and nothing else, and only in a folder marked as a run.

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
import re
import shutil
import stat
import sys
import time
from pathlib import Path

import torch

from longrange import __version__

log = logging.getLogger(__name__)

LOCK = ".lock"
MARKER = ".longrange-run"
METRICS = "metrics.jsonl"
INVOCATIONS = "invocations.jsonl"
RUN_CONFIG = "train.yaml"
# what a run writes: --overwrite removes these and nothing else (a user's own files stay)
RUN_FILES = (
    "config.yaml",
    RUN_CONFIG,
    "corpus.json",
    METRICS,
    "metrics.tmp",
    INVOCATIONS,
    "tokenizer.json",
    "init-from.json",  # what --init-from loaded, and the two models' held-out bpb (`longrange.train.init_from`)
    "tensorboard",
    "knn-memory",
    LOCK,
    MARKER,
)
CHECKPOINT_PREFIX = "checkpoint"
# checkpoint/, checkpoint-best/, checkpoint-step-00000100/, and each one's .tmp (being written) and .old (being
# swapped out); `longrange eval`'s default outputs eval-SPLIT.json and eval-SPLIT-<settings hash>.json
_RUN_PATTERNS = re.compile(r"checkpoint(-best|-step-\d+)?(\.tmp|\.old)?|eval-[a-z]+(-[0-9a-f]{8})?\.json")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


def _link_error(path: Path) -> RunFolderError:
    return RunFolderError(
        f"{str(path)!r} is a symbolic link; a run's own files are never written through a link (it could "
        "overwrite a file elsewhere): remove the link, or pick another --out"
    )


def open_run_file(path: Path, flags: int) -> int:
    """`os.open` of one of a run folder's own files that never follows a link at `path` (O_NOFOLLOW) and
    accepts a regular file only; a link or anything else is a RunFolderError."""
    try:
        # O_NONBLOCK: a FIFO planted at the name fails to open instead of hanging; a regular file ignores it
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _link_error(path) from err
        if err.errno == errno.ENXIO:
            raise RunFolderError(f"{str(path)!r} is not a regular file; remove it, or pick another --out") from err
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunFolderError(f"{str(path)!r} is not a regular file; remove it, or pick another --out")
    return fd


def write_run_file(path: Path, text: str) -> None:
    """Replace the text of one of a run folder's own files, never through a link."""
    with os.fdopen(open_run_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", encoding="utf-8") as fh:
        fh.write(text)


def remove_run_path(path: Path) -> None:
    """Remove a run's file or folder; a link is removed itself, never what it points to."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        shutil.rmtree(path)
    else:
        path.unlink()


def refuse_links(out_dir: Path) -> None:
    """A RunFolderError when one of the run's own names in `out_dir` is a symbolic link."""
    for entry in os.scandir(out_dir):
        if is_run_file(entry.name) and entry.is_symlink():
            raise _link_error(Path(entry.path))


def is_run(out_dir: Path) -> bool:
    """Whether `out_dir` was made by a run: it holds the mark, or (runs from before the mark) the training
    config and the log of starts that every run writes first."""
    if (out_dir / MARKER).is_file():
        return True
    return (out_dir / RUN_CONFIG).is_file() and (out_dir / INVOCATIONS).is_file()


class RunLock:
    """An exclusive lock on a run folder for the life of this object (or of its process)."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / LOCK
        self._created = not os.path.lexists(self.path)
        try:
            # held open for the lock's lifetime; never through a link (a planted `.lock` link would be truncated)
            self._fh = os.fdopen(open_run_file(self.path, os.O_RDWR | os.O_CREAT), "r+")
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
            if self._created and not (self.path.parent / MARKER).is_file():  # a refused folder is left as it was
                self.path.unlink(missing_ok=True)
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()


def is_run_file(name: str) -> bool:
    """Whether `name` is one a run writes in its folder (what `--overwrite` removes)."""
    return name in RUN_FILES or _RUN_PATTERNS.fullmatch(name) is not None


def prepare_run_folder(out_dir: Path, *, resume: bool, overwrite: bool, init_from: str | Path | None = None) -> None:
    """Check `out_dir` can hold this run; with `overwrite`, remove an earlier run's files.

    A new run needs a folder that does not exist or is empty; a folder with files in it is refused
    (they may be another run, or the user's own) unless ``overwrite`` and the folder is a run (`is_run`):
    then the run's own names (`is_run_file`) are removed and everything else stays. ``overwrite`` refuses
    to clear a folder that holds ``init_from``: its weights would be gone before they are read. ``resume``
    needs a whole run: its `train.yaml` and at least one checkpoint; what is missing is named.
    """
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in --out and --overwrite deletes it: pass one of them")
    if out_dir.exists() and not out_dir.is_dir():
        raise RunFolderError(f"--out {str(out_dir)!r} is a file, not a folder")
    if out_dir.is_dir():
        refuse_links(out_dir)
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
        entries = sorted(p.name for p in out_dir.iterdir() if p.name not in (LOCK, MARKER))
        listed = f"{', '.join(entries[:4])}{', ...' if len(entries) > 4 else ''}"
        if entries and not is_run(out_dir):
            raise RunFolderError(
                f"--out {str(out_dir)!r} is not empty ({listed}) and is not a run folder (it lacks {MARKER}); "
                "--overwrite clears only a run's own files, so it leaves this folder alone: pick another folder"
            )
        if entries and not overwrite:
            hint = "--resume to continue it, " if (out_dir / RUN_CONFIG).is_file() else ""
            raise RunFolderError(
                f"--out {str(out_dir)!r} is not empty ({listed}); "
                f"pass {hint}--overwrite to replace a run's files, or pick another folder"
            )
        if entries and init_from is not None and _inside(Path(init_from), out_dir):
            raise RunFolderError(
                f"--init-from {str(init_from)!r} is inside --out {str(out_dir)!r}, which --overwrite would clear "
                "before its weights are read: start the new run in another folder"
            )
        for name in entries:
            if is_run_file(name):
                remove_run_path(out_dir / name)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunFolderError(f"cannot create the run folder {str(out_dir)!r}: {err.strerror}") from err
    if not os.access(out_dir, os.W_OK):
        raise RunFolderError(f"cannot write the run folder {str(out_dir)!r}: permission denied")
    if not (out_dir / MARKER).is_file():
        write_run_file(out_dir / MARKER, json.dumps({"run_folder": 1}) + "\n")


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it, links resolved."""
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def record_invocation(out_dir: Path, world_size: int) -> None:
    """Append this start's command line and versions to ``invocations.jsonl``."""
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
        with os.fdopen(open_run_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
    except RunFolderError:
        raise
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
    write_run_file(tmp, "".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)
