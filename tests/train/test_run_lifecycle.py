"""A run folder never loses work and never lies: divergence, signals, keep-N/best, locks, strict folders,
torn metrics, resume from the run alone, one-line errors for bad options."""

import json
import os
import re
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import longrange
from longrange.cli import main
from longrange.data import load_corpus
from longrange.model.io import CheckpointError
from longrange.train import TrainConfig, train
from longrange.train import checkpoint as checkpoint_module
from longrange.train.guards import TrainingDiverged
from longrange.train.run_folder import RunFolderError, RunLock
from longrange.train.trainer import Trainer

TINY = ["--batch-size", "2", "--segment-len", "16", "--warmup-steps", "2", "--no-progress", "--log-every", "1"]


@pytest.fixture
def data(corpus_dir) -> str:
    return str(corpus_dir)


def _cfg(**kw) -> TrainConfig:
    base = dict(batch_size=2, segment_len=16, lr=3e-3, warmup_steps=2, log_every=1, checkpoint_every=2, progress=False)
    return TrainConfig(**{**base, **kw})


def _xl():
    return longrange.ModelConfig.from_name("transformer-xl-tiny")


def _weights(path: Path) -> dict:
    return load_file(str(path / "model.safetensors"))


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> dict[int, float]:
    return {
        r["step"]: r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    }


# -- 1. divergence -------------------------------------------------------------------------------------------------


def test_divergence_stops_the_run_and_keeps_the_last_finite_checkpoint(tmp_path, data):
    run = tmp_path / "nan"
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+"):
        train(_xl(), _cfg(steps=30, lr=1e30, warmup_steps=1, checkpoint_every=1, max_bad_steps=1), data, run)
    weights = _weights(run / "checkpoint")
    assert all(bool(torch.isfinite(t).all()) for t in weights.values())
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


def test_divergence_exits_non_zero_with_one_line(tmp_path, data, capsys):
    code = main(["train", "--data", data, "--out", str(tmp_path / "r"), "--steps", "30", "--lr", "1e30", *TINY])
    assert code == 3
    assert "diverged at step" in capsys.readouterr().err


def test_one_non_finite_step_is_skipped_within_the_limit(tmp_path, data, monkeypatch):
    trainer = Trainer(longrange.build_model(_xl()), _cfg(steps=4), load_corpus(data).split("train"), None, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real = trainer.forward

    def poisoned(*args, **kw):
        out = real(*args, **kw)
        return out._replace(loss=out.loss * float("nan"))

    trainer.forward = poisoned
    metrics = trainer.train_step()
    assert metrics["skipped"] == 1 and trainer.divergence.bad_steps == 1
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[key]), key  # no update from a non-finite step


# -- 2. signals ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_step_writes_a_checkpoint_and_resume_matches(tmp_path, data, monkeypatch, capsys, signum):
    args = [
        "train",
        "--preset",
        "transformer-xl-tiny",
        "--data",
        data,
        "--steps",
        "8",
        *TINY,
        "--checkpoint-every",
        "100",
    ]
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    real_step = Trainer.train_step

    def step_then_signal(self):
        metrics = real_step(self)
        if self.step == 3:
            os.kill(os.getpid(), signum)
        return metrics

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    code = main([*args, "--out", str(tmp_path / "cut")])
    assert code == 128 + signum
    assert "after step 3; checkpoint written" in capsys.readouterr().err
    saved = torch.load(tmp_path / "cut" / "checkpoint" / "trainer.pt", weights_only=True)
    assert saved["step"] == 3
    monkeypatch.setattr(Trainer, "train_step", real_step)
    # --resume alone: the saved preset, corpus, schedule and step count (8, not the default 1,000)
    assert main(["train", "--out", str(tmp_path / "cut"), "--resume"]) == 0
    clean, cut = _weights(tmp_path / "clean" / "checkpoint"), _weights(tmp_path / "cut" / "checkpoint")
    assert all(torch.equal(clean[k], cut[k]) for k in clean)
    assert _losses(tmp_path / "clean") == _losses(tmp_path / "cut")


# -- 3. keep N, best -----------------------------------------------------------------------------------------------


def test_the_last_n_checkpoints_and_the_best_are_kept(tmp_path, data):
    run = tmp_path / "run"
    train(_xl(), _cfg(steps=6, checkpoint_every=1, keep_checkpoints=3, eval_every=2, eval_segments=2), data, run)
    older = sorted(p.name for p in run.glob("checkpoint-step-*"))
    assert older == ["checkpoint-step-00000004", "checkpoint-step-00000005"]
    assert json.loads((run / "checkpoint" / "meta.json").read_text())["step"] == 6
    valid = [
        r["valid_bpb"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "valid_bpb" in r
    ]
    best = json.loads((run / "checkpoint-best" / "meta.json").read_text())
    assert best["valid_bpb"] == min(valid[:-1])  # the periodic validations (the last line is the final check)


# -- 4. locks ------------------------------------------------------------------------------------------------------


def test_a_run_folder_in_use_is_refused_and_a_dead_holder_is_taken_over(tmp_path, data, capsys):
    run = tmp_path / "twin"
    run.mkdir()
    held = RunLock(run)
    try:
        assert main(["train", "--data", data, "--out", str(run), "--steps", "2", *TINY]) == 2
        assert f"in use by process {os.getpid()}" in capsys.readouterr().err
    finally:
        held.release()
    assert main(["train", "--data", data, "--out", str(run), "--steps", "2", *TINY]) == 0
    held = RunLock(run)  # a run in progress in a folder that already holds files: still named as in use
    try:
        assert main(["train", "--data", data, "--out", str(run), "--steps", "2", "--overwrite", *TINY]) == 2
        assert f"in use by process {os.getpid()}" in capsys.readouterr().err
    finally:
        held.release()
    (run / ".lock").write_text("999999")  # a lock file left by a killed process: no flock is held on it
    assert main(["train", "--data", data, "--out", str(run), "--steps", "2", "--overwrite", *TINY]) == 0


# -- 5. folders that are not this run's ----------------------------------------------------------------------------


def test_a_non_empty_folder_is_refused_unless_overwrite(tmp_path, data, capsys):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "config.yaml").write_text("my own notes\n")
    (run / "notes.txt").write_text("keep me\n")
    assert main(["train", "--data", data, "--out", str(run), "--steps", "2", *TINY]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == "my own notes\n"
    # not a run folder: --overwrite clears a run's own files only, so it refuses (tests/train/test_run_safety.py)
    assert main(["train", "--data", data, "--out", str(run), "--steps", "2", "--overwrite", *TINY]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == "my own notes\n" and (run / "notes.txt").read_text() == "keep me\n"


def test_a_rerun_after_an_early_kill_does_not_append_to_the_old_metrics(tmp_path, data):
    run = tmp_path / "run"
    train(_xl(), _cfg(steps=2), data, run)
    (run / "checkpoint").rename(run / "lost")  # as if killed before its first checkpoint
    with pytest.raises(RunFolderError, match="no checkpoint yet"):
        train(_xl(), _cfg(steps=2), data, run, resume=True)
    with pytest.raises(RunFolderError, match="not empty"):
        train(_xl(), _cfg(steps=2), data, run)
    train(_xl(), _cfg(steps=2), data, run, overwrite=True)
    steps = [r["step"] for r in _records(run)]
    assert steps == [1, 2, 2]  # two loss lines and the final validation, once


def test_resume_of_a_damaged_run_says_what_is_missing(tmp_path, data):
    run = tmp_path / "run"
    train(_xl(), _cfg(steps=2), data, run)
    (run / "train.yaml").unlink()
    with pytest.raises(RunFolderError, match="lacks train.yaml"):
        train(_xl(), _cfg(steps=2), data, run, resume=True)
    with pytest.raises(RunFolderError, match="does not exist"):
        train(_xl(), _cfg(steps=2), data, tmp_path / "never", resume=True)


def test_a_trainer_shard_missing_is_named(tmp_path, data):
    run = tmp_path / "run"
    train(_xl(), _cfg(steps=2), data, run)
    (run / "checkpoint" / "trainer.pt").rename(run / "checkpoint" / "x.pt")
    (run / "checkpoint-step-00000002").mkdir()  # nothing whole to fall back to
    with pytest.raises(RunFolderError, match="no checkpoint"):
        train(_xl(), _cfg(steps=4), data, run, resume=True)


# -- 6. torn metrics -----------------------------------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, data, caplog):
    run = tmp_path / "run"
    train(_xl(), _cfg(steps=2), data, run)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 3, "loss": 1.2')  # a kill mid-append
    train(_xl(), _cfg(steps=4), data, run, resume=True)
    assert "torn last line" in caplog.text
    assert [r["step"] for r in _records(run)] == [1, 2, 2, 3, 4, 4]  # loss lines and a final check per start


# -- 7. disk-backed kNN memory lives in the run folder -------------------------------------------------------------


def test_disk_knn_memory_lives_under_the_run_folder(tmp_path, data):
    cfg = longrange.ModelConfig.from_name("memorizing-tiny").replace(**{"knn.storage": "disk"})
    run = tmp_path / "run"
    train(cfg, _cfg(steps=2, device="cpu"), data, run)  # disk storage maps its files into CPU memory
    assert (run / "knn-memory").is_dir()
    assert "knn-memory" not in (run / "config.yaml").read_text()  # the saved config stays the user's


# -- 8. resume reads the run ---------------------------------------------------------------------------------------


def test_resume_refuses_a_changed_setting_and_accepts_more_steps(tmp_path, data, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--preset", "transformer-xl-tiny", "--data", data, "--out", run, "--steps", "2", *TINY]) == 0
    assert main(["train", "--out", run, "--resume", "--set", "xl.mem_len=8"]) == 2
    assert "refusing changed model xl" in capsys.readouterr().err
    assert main(["train", "--out", run, "--resume", "--lr", "0.5"]) == 2
    assert "refusing changed lr=0.5" in capsys.readouterr().err
    assert main(["train", "--out", run, "--resume", "--preset", "transformer-tiny"]) == 2
    assert main(["train", "--out", run, "--resume", "--steps", "3", "--no-progress"]) == 0
    assert max(_losses(Path(run))) == 3


# -- 13-16. one line for bad options -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--threads", "-1"], "threads=-1 must be >= 1"),
        (["--segment-len", "0"], "segment_len=0 must be >= 1"),
        (["--device", "tpu9"], "is not one of"),
        (["--keep-checkpoints", "0"], "keep_checkpoints=0 must be >= 1"),
    ],
)
def test_bad_train_options_are_one_line(tmp_path, data, capsys, extra, message):
    assert main(["train", "--data", data, "--out", str(tmp_path / "r"), "--steps", "2", *TINY, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "r" / "config.yaml").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_one_line(tmp_path, data, capsys):
    assert main(["train", "--data", data, "--out", str(tmp_path / "r"), "--device", "cuda", *TINY]) == 2
    assert "--device 'cuda'" in capsys.readouterr().err


def test_out_that_is_a_file_is_one_line(tmp_path, data, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--data", data, "--out", str(tmp_path / "file"), "--steps", "2", *TINY]) == 2
    assert "is a file" in capsys.readouterr().err


def test_an_out_that_cannot_be_created_is_one_line(tmp_path, data, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--data", data, "--out", str(tmp_path / "file" / "run"), "--steps", "2", *TINY]) == 2
    assert "cannot create the run folder" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only folders")
def test_read_only_out_is_one_line(tmp_path, data, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert main(["train", "--data", data, "--out", str(ro / "run"), "--steps", "2", *TINY]) == 2
    assert "cannot create the run folder" in capsys.readouterr().err


def test_config_file_sections_are_checked(tmp_path, data, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {preset: transformer-tiny}\ntrian: {steps: 3}\n")
    assert main(["train", "--config", str(cfg), "--data", data, "--out", str(tmp_path / "r"), *TINY]) == 2
    assert "unknown section 'trian'" in capsys.readouterr().err
    cfg.write_text("model: {preset: transformer-tiny, name: mine}\ntrain: {steps: 2}\n")
    assert main(["train", "--config", str(cfg), "--data", data, "--out", str(tmp_path / "r"), *TINY]) == 0
    assert "name: mine" in (tmp_path / "r" / "config.yaml").read_text()


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, data, monkeypatch):
    run = tmp_path / "run"
    train(_xl(), _cfg(steps=2), data, run)
    before = _weights(run / "checkpoint")

    def full_disk(*args, **kw):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 1024 vs 512")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    no_space = type(checkpoint_module.shutil.disk_usage("."))(total=1 << 30, used=1 << 30, free=0)
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: no_space)
    with pytest.raises(CheckpointError, match="the disk is full.*previous checkpoint is kept"):
        train(_xl(), _cfg(steps=4), data, run, resume=True)
    after = _weights(run / "checkpoint")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_run_records_its_command_line_and_versions(tmp_path, data):
    run = tmp_path / "run"
    train(_xl(), _cfg(steps=2), data, run)
    record = json.loads((run / "invocations.jsonl").read_text().splitlines()[0])
    assert record["longrange"] == longrange.__version__ and record["torch"] == torch.__version__ and "argv" in record


# -- fine-tuning from another run's weights (--init-from) ----------------------------------------------------------


def test_init_from_loads_what_fits_lists_what_is_fresh_and_refuses_mis_shaped(tmp_path, data, caplog):
    xl = tmp_path / "xl"
    train(_xl(), _cfg(steps=2), data, xl)
    memorizing = longrange.ModelConfig.from_name("memorizing-tiny").replace(**{"knn.memory_size": 64})
    caplog.set_level("INFO")
    assert (
        main(
            ["train", "--data", data, "--out", str(tmp_path / "mem"), "--init-from", str(xl), "--steps", "1", *TINY]
            + ["--preset", "memorizing-tiny", "--set", "knn.memory_size=64"]
        )
        == 0
    )
    assert "initialised from" in caplog.text and "gate" in caplog.text  # the kNN gate starts fresh, and says so
    loaded = int(re.search(r"(\d+) tensors loaded", caplog.text).group(1))
    assert loaded >= len(longrange.build_model(memorizing).state_dict()) // 2  # embeddings, norms, the XL layers...
    small = longrange.ModelConfig.from_name("transformer-xl-tiny").replace(d_model=32)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        train(small, _cfg(steps=1), data, tmp_path / "bad", init_from=xl)
    assert main(["train", "--out", str(xl), "--resume", "--init-from", str(xl)]) == 2
