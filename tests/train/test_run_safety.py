"""A run folder never writes through a link, `--overwrite` clears only a run's own files, and `--resume` continues
a run only as it was trained (checkpoint, step, tokenizer, recipe, corpus, model config)."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import longrange
from longrange.cli import main
from longrange.train import TrainConfig, train
from longrange.train import checkpoint as checkpoint_module
from longrange.train.run_folder import MARKER, RunFolderError, RunLock, append_line

TINY = ["--batch-size", "2", "--segment-len", "16", "--warmup-steps", "2", "--no-progress", "--log-every", "1"]
TINY += ["--checkpoint-every", "2", "--device", "cpu"]


@pytest.fixture
def data(corpus_dir) -> str:
    return str(corpus_dir)


def _train(data: str, run: Path, *extra: str) -> int:
    return main(["train", "--preset", "transformer-xl-tiny", "--data", data, "--out", str(run), *TINY, *extra])


def _resume(run: Path, *extra: str) -> int:
    return main(["train", "--out", str(run), "--resume", *extra])


@pytest.fixture
def run(tmp_path, data) -> Path:
    """A finished 2-step run."""
    out = tmp_path / "run"
    assert _train(data, out, "--steps", "2") == 0
    return out


def _victim(tmp_path: Path) -> Path:
    """Another user's file, outside the run folder."""
    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir(exist_ok=True)
    victim.write_text("precious\n")
    return victim


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line_error(capsys, *parts: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert all(part in err for part in parts), err
    return err


# -- links at the run's own names -------------------------------------------------------------------------------------


def test_a_lock_link_to_a_file_outside_is_refused_and_the_file_is_kept(tmp_path, data, capsys):
    victim = _victim(tmp_path)
    out = tmp_path / "sy1"
    out.mkdir()
    (out / ".lock").symlink_to(victim)
    assert _train(data, out, "--steps", "2") == 2
    _one_line_error(capsys, ".lock", "symbolic link")
    assert victim.read_text() == "precious\n"
    with pytest.raises(RunFolderError, match="symbolic link"):
        RunLock(out)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["checkpoint.tmp", "invocations.jsonl", "metrics.jsonl", "tensorboard", "corpus.json"])
def test_a_link_at_a_run_name_is_refused_on_resume_and_its_target_kept(tmp_path, run, capsys, name):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("theirs\n")
    (foreign / "model.safetensors").write_text("theirs\n")
    target = foreign if name in ("checkpoint.tmp", "tensorboard") else _victim(tmp_path)
    if (run / name).exists():
        (run / name).unlink()
    (run / name).symlink_to(target)
    before = _snapshot(tmp_path / "elsewhere") if target != foreign else _snapshot(foreign)
    assert _resume(run, "--steps", "4") == 2
    _one_line_error(capsys, name, "symbolic link")
    assert (_snapshot(tmp_path / "elsewhere") if target != foreign else _snapshot(foreign)) == before


def test_a_checkpoint_write_removes_a_planted_tmp_link_and_never_writes_through_it(tmp_path, run):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("theirs\n")
    (run / "checkpoint.tmp").symlink_to(foreign)  # planted after the run was claimed
    model = longrange.load(run)
    checkpoint_module.write_checkpoint(run, model, {}, {"step": 3}, meta={"step": 3})
    assert (foreign / "config.yaml").read_text() == "theirs\n" and sorted(os.listdir(foreign)) == ["config.yaml"]
    assert not (run / "checkpoint.tmp").exists() and (run / "checkpoint" / "model.safetensors").is_file()


def test_an_append_to_a_planted_log_link_is_refused(tmp_path, run):
    victim = _victim(tmp_path)
    (run / "invocations.jsonl").unlink()
    (run / "invocations.jsonl").symlink_to(victim)
    with pytest.raises(RunFolderError, match="symbolic link"):
        append_line(run / "invocations.jsonl", "{}")
    assert victim.read_text() == "precious\n"


# -- --overwrite clears a run's own files, in a run folder only --------------------------------------------------------


def test_overwrite_refuses_a_folder_that_is_not_a_run_and_touches_nothing(tmp_path, data, capsys):
    out = tmp_path / "notes"
    (out / "checkpoints_from_colleague").mkdir(parents=True)
    (out / "checkpoints_from_colleague" / "w.bin").write_text("theirs\n")
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events").write_text("mine\n")
    for name in ("checkpoint-plan.md", "config.yaml", "corpus.json", "metrics.jsonl"):
        (out / name).write_text(f"my {name}\n")
    before = _snapshot(out)
    assert _train(data, out, "--steps", "2", "--overwrite") == 2
    _one_line_error(capsys, "not a run folder")
    assert _snapshot(out) == before


def test_overwrite_of_a_run_removes_its_own_files_and_keeps_the_users(tmp_path, data, run):
    (run / "checkpoints_from_colleague").mkdir()
    (run / "checkpoints_from_colleague" / "w.bin").write_text("theirs\n")
    (run / "checkpoint-plan.md").write_text("plan\n")
    (run / "eval-test.json").write_text("{}")  # a result of the run being replaced
    (run / "tokenizer.json").write_text("{}")  # a subword tokenizer the new (bytes) run must not inherit
    assert _train(data, run, "--steps", "2", "--overwrite") == 0
    assert (run / "checkpoints_from_colleague" / "w.bin").read_text() == "theirs\n"
    assert (run / "checkpoint-plan.md").read_text() == "plan\n"
    assert not (run / "eval-test.json").exists() and not (run / "tokenizer.json").exists()
    assert (run / MARKER).is_file()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 2]


@pytest.mark.parametrize("source", [".", "checkpoint"])
def test_init_from_inside_the_folder_overwrite_clears_is_refused(tmp_path, data, run, capsys, source):
    weights = (run / "checkpoint" / "model.safetensors").read_bytes()
    assert _train(data, run, "--steps", "2", "--overwrite", "--init-from", str(run / source)) == 2
    _one_line_error(capsys, "--init-from", "inside --out")
    assert (run / "checkpoint" / "model.safetensors").read_bytes() == weights


# -- a checkpoint that cannot be resumed is named; its weights are kept ------------------------------------------------


def test_a_missing_trainer_state_names_it_and_advises_init_from_not_overwrite(run, capsys):
    (run / "checkpoint" / "trainer.pt").unlink()
    assert _resume(run, "--steps", "4") == 2
    err = _one_line_error(capsys, "trainer.pt", "--init-from")
    assert "--overwrite" not in err
    assert (run / "checkpoint" / "model.safetensors").is_file()


def test_a_missing_trainer_state_is_not_skipped_for_an_older_checkpoint(tmp_path, data, capsys):
    out = tmp_path / "run"
    assert _train(data, out, "--steps", "3", "--checkpoint-every", "1") == 0  # keeps checkpoint-step-00000002/
    (out / "checkpoint" / "trainer.pt").unlink()
    before = _snapshot(out)
    assert _resume(out, "--steps", "5") == 2
    err = _one_line_error(capsys, "checkpoint/ holds weights but no trainer.pt", "checkpoint-step-00000002/")
    assert "--overwrite" not in err
    assert _snapshot(out) == before


def test_an_empty_trainer_state_is_one_line(run, capsys):
    torch.save({}, run / "checkpoint" / "trainer.pt")
    assert _resume(run, "--steps", "4") == 2
    err = _one_line_error(capsys, "not a whole trainer state", "--init-from")
    assert "--overwrite" not in err


# -- what --resume checks ---------------------------------------------------------------------------------------------


def test_resume_refuses_a_changed_corpus(tmp_path, corpus_dir, capsys):
    out = tmp_path / "run"
    assert _train(str(corpus_dir), out, "--steps", "2") == 0
    (corpus_dir / "doc-new.txt").write_text("a new document that moves the split\n" * 20)
    assert _resume(out, "--steps", "4") == 2
    _one_line_error(capsys, "changed since the run was trained")
    assert max(json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()) == 2


def test_resume_refuses_an_edited_run_config(run, capsys):
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("mem_len: 64", "mem_len: 32"))
    assert "mem_len: 32" in config.read_text()
    assert _resume(run, "--steps", "4") == 2
    _one_line_error(capsys, "differs from", "xl.mem_len 32 (checkpoint: 64)")


def test_resume_through_the_library_refuses_a_model_config_other_than_the_checkpoints(run, data):
    model_cfg = longrange.ModelConfig.from_name("transformer-xl-tiny").replace(**{"xl.mem_len": 8})
    cfg = TrainConfig(steps=4, batch_size=2, segment_len=16, warmup_steps=2, progress=False, device="cpu")
    with pytest.raises(RunFolderError, match="differs from"):
        train(model_cfg, cfg, data, run, resume=True)


def test_resume_refuses_another_tokenizer_and_accepts_its_own(run, capsys):
    assert _resume(run, "--steps", "4", "--tokenizer", "bpe:300") == 2
    _one_line_error(capsys, "--tokenizer 'bpe:300' is not the tokenizer", "bytes")
    assert _resume(run, "--steps", "3", "--tokenizer", "bytes") == 0


def test_resume_refuses_another_recipe_and_accepts_its_own(run, capsys):
    assert _resume(run, "--steps", "4", "--recipe", "compressive-paper") == 2
    _one_line_error(capsys, "refusing changed", "lr=0.0003")
    assert _resume(run, "--steps", "3", "--recipe", "default") == 0


def test_resume_with_overwrite_is_refused(run, capsys):
    before = _snapshot(run)
    assert _resume(run, "--steps", "4", "--overwrite") == 2
    _one_line_error(capsys, "--resume", "--overwrite")
    assert _snapshot(run) == before


def test_resuming_a_finished_run_or_fewer_steps_appends_nothing(run, capsys):
    before = _snapshot(run)
    assert _resume(run) == 0
    out = capsys.readouterr().out
    assert "nothing to train" in out and "trained" not in out
    assert _resume(run, "--steps", "1") == 2
    _one_line_error(capsys, "already at step 2")
    assert _snapshot(run) == before
    weights = load_file(str(run / "checkpoint" / "model.safetensors"))
    cfg = TrainConfig(steps=2, batch_size=2, segment_len=16, warmup_steps=2, progress=False, device="cpu")
    train(longrange.ModelConfig.from_name("transformer-xl-tiny"), cfg, None, run, resume=True)  # the library: a no-op
    assert _snapshot(run) == before
    assert all(torch.equal(v, load_file(str(run / "checkpoint" / "model.safetensors"))[k]) for k, v in weights.items())
