"""`compare` reuses a finished run only under the settings it was trained with, and a SIGTERM stops its training
child instead of leaving it running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longrange import compare as compare_module
from longrange.compare import CompareConfig, check_earlier_settings, compare


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(12):
        (root / f"d{i:02d}.txt").write_bytes(f"doc {i}\n".encode() + b"filler line\n" * 10)
    return str(root)


def _cc(corpus: str, **kw) -> CompareConfig:
    kw = {"size": "tiny", "steps": 2, "rows": 2, "data": corpus, "eval_docs": 1, "eval_bytes": 128, "command": "t"} | kw
    return CompareConfig(systems=["transformer"], ablations=False, **kw)


def test_runs_of_other_settings_are_not_reported_as_these(tmp_path, corpus, monkeypatch):
    out = tmp_path / "cmp"
    compare(_cc(corpus), out, isolate=False)
    result = json.loads((out / "runs/transformer/seed-0/result.json").read_text())

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run of the same settings is reused, not trained again")

    monkeypatch.setattr(compare_module, "run_system", no_training)
    compare(_cc(corpus, command="another command line", param_tolerance=0.5), out, isolate=False)  # report-only
    assert json.loads((out / "runs/transformer/seed-0/result.json").read_text()) == result

    with pytest.raises(ValueError, match=r"holds runs of a comparison with other settings \(steps 2 -> 5\)"):
        compare(_cc(corpus, steps=5), out, isolate=False)
    with pytest.raises(ValueError, match=r"lr 0.002 -> 0.01; .*tokens_per_step 128 -> 256"):
        compare(_cc(corpus, lr=1e-2, row_tokens=128), out, isolate=False)
    assert json.loads((out / "compare.json").read_text())["steps"] == 2  # the record still describes the runs


def test_a_fresh_or_empty_out_takes_any_settings(tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.json").write_text(json.dumps({"steps": 2}))
    check_earlier_settings(out, {"steps": 5})  # no runs yet: nothing would be reused
    (out / "runs").mkdir()
    check_earlier_settings(out, {"steps": 5, "added_later": 1})
    (out / "runs" / "transformer").mkdir()
    check_earlier_settings(out, {"steps": 2, "added_later": 1})  # a key the older record lacks is not compared
    with pytest.raises(ValueError, match="steps 2 -> 5"):
        check_earlier_settings(out, {"steps": 5})
    (out / "compare.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="compare.json' is not valid JSON"):
        check_earlier_settings(out, {"steps": 2})


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _spawned(pid: int) -> list[int]:
    """The children of `pid` that run a spawned target (not multiprocessing's resource tracker)."""
    found = []
    for child in _children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(child)
        except FileNotFoundError:
            pass
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "State:\tZ" in status.read_text())


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc")
def test_sigterm_stops_the_training_child_too(tmp_path):
    script = (
        "import sys, time\n"
        "from longrange.compare import _run_in_child\n"
        "try:\n"
        "    _run_in_child(time.sleep, (120,))\n"
        "except KeyboardInterrupt as stop:\n"
        "    print(stop, file=sys.stderr)\n"
        "    sys.exit(stop.exit_code)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _spawned(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        (child,) = _spawned(parent.pid)
        time.sleep(0.5)  # the child is past its start-up
        helpers = _children(parent.pid)
        os.kill(parent.pid, signal.SIGTERM)
        _, err = parent.communicate(timeout=60)
    finally:
        parent.kill()
    assert parent.returncode == 128 + signal.SIGTERM
    assert "interrupted by SIGTERM; rerun the same command to continue" in err
    assert not _alive(child)
    deadline = time.monotonic() + 10  # multiprocessing's resource tracker leaves when it sees its pipe close
    while any(_alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in helpers)
