"""What a run that goes wrong does and says: a loss that explodes but stays finite stops the run (the spike guard),
the divergence message says what is on disk, an infinite learning rate is refused, and a full disk at the first
checkpoint says there is none and leaves no half-written folder."""

import errno
import math

import pytest
import torch

import longrange
from longrange.cli import main
from longrange.config import ConfigError
from longrange.data.corpus import load_corpus
from longrange.model.io import CheckpointError
from longrange.train import checkpoint as checkpoint_module
from longrange.train.config import TrainConfig
from longrange.train.guards import SpikeGuard, TrainingDiverged
from longrange.train.trainer import Trainer, train

TINY = ["--batch-size", "2", "--segment-len", "16", "--warmup-steps", "2", "--no-progress"]


def _cfg(**kw) -> TrainConfig:
    base = dict(batch_size=2, segment_len=16, lr=3e-3, warmup_steps=2, log_every=1, checkpoint_every=2, progress=False)
    return TrainConfig(**{**base, **kw})


def _trainer(tmp_path, corpus_dir, explode_from: int | None = None, **kw) -> Trainer:
    """A tiny trainer whose loss is multiplied by 1e7 from step `explode_from` on (gradients are clipped, so
    everything stays finite), as a learning rate far too high makes it."""
    model = longrange.build_model(longrange.ModelConfig.from_name("transformer-xl-tiny"))
    trainer = Trainer(model, _cfg(**kw), load_corpus(str(corpus_dir)).split("train"), None, tmp_path / "run")
    real = trainer.forward

    def forward(*args, **kwargs):
        out = real(*args, **kwargs)
        if explode_from is not None and trainer.step + 1 >= explode_from:
            return out._replace(loss=out.loss * 1e7)
        return out

    trainer.forward = forward
    (tmp_path / "run").mkdir(parents=True)
    return trainer


def test_the_spike_guard_compares_with_the_running_median():
    guard = SpikeGuard(10.0, 256)
    assert guard.reference() == pytest.approx(math.log(256))  # before any step: a uniform guess
    assert guard.is_spike(9.5e7) and not guard.is_spike(50.0)
    for loss in (0.002, 0.001, 0.003):  # a copy task near zero loss: the reference stays at 1 nat
        guard.accept(loss)
    assert guard.reference() == 1.0 and not guard.is_spike(5.0) and guard.is_spike(10.5)
    again = SpikeGuard(10.0, 256)
    again.load_state_dict(guard.state_dict())
    assert again.reference() == guard.reference()
    assert not SpikeGuard(0.0, 256).is_spike(1e30)  # off


def test_a_finite_explosion_stops_the_run_and_names_the_checkpoint_from_before(tmp_path, corpus_dir):
    trainer = _trainer(tmp_path, corpus_dir, explode_from=5, steps=20, checkpoint_every=2, max_bad_steps=3)
    with pytest.raises(TrainingDiverged) as stop:
        trainer.fit()
    message = str(stop.value)
    run = tmp_path / "run"
    assert "diverged at step 8" in message and "above 10 x" in message and "(--spike-factor)" in message
    assert f"checkpoint from before the bad steps is {run / 'checkpoint-step-00000002'} (step 2)" in message
    assert f"--init-from {run / 'checkpoint-step-00000002'}" in message and "--resume would repeat" in message
    # no checkpoint was written during the bad steps (6, 8): the one from before was not rotated away
    assert checkpoint_module.read_meta(run / "checkpoint")["step"] == 4
    assert (run / "checkpoint-step-00000002").is_dir()


def test_an_explosion_before_the_first_checkpoint_says_there_is_none(tmp_path, corpus_dir):
    trainer = _trainer(tmp_path, corpus_dir, explode_from=1, steps=20, checkpoint_every=100, max_bad_steps=1)
    with pytest.raises(TrainingDiverged, match="no checkpoint was written before it diverged, so the run keeps none"):
        trainer.fit()


def test_non_finite_divergence_with_only_checkpoints_of_the_bad_weights(tmp_path, corpus_dir):
    trainer = _trainer(tmp_path, corpus_dir, steps=20, checkpoint_every=2, max_bad_steps=0)
    for _ in range(2):
        trainer.train_step()
    trainer.save()
    real = trainer.forward
    trainer.forward = lambda *a, **k: (lambda out: out._replace(loss=out.loss * float("nan")))(real(*a, **k))
    with pytest.raises(TrainingDiverged, match=r"the checkpoints kept \(step 2\) hold the weights that diverged"):
        trainer.train_step()


def test_the_spike_guard_can_be_turned_off(tmp_path, corpus_dir):
    trainer = _trainer(tmp_path, corpus_dir, explode_from=3, steps=6, checkpoint_every=100, spike_factor=0.0)
    assert trainer.fit()[-1]["loss"] > 1e5  # finished, as before the guard


def test_the_accepted_losses_are_part_of_a_checkpoint(tmp_path, corpus_dir):
    trainer = _trainer(tmp_path, corpus_dir, steps=4, checkpoint_every=4)
    trainer.fit()
    again = _trainer(tmp_path / "b", corpus_dir, steps=4)
    again.out_dir = trainer.out_dir
    assert again.resume() and again.divergence.spikes.state_dict() == trainer.divergence.spikes.state_dict()
    assert len(trainer.divergence.spikes.state_dict()) == 4


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_a_learning_rate_that_is_not_finite_is_refused(tmp_path, corpus_dir, capsys, value):
    with pytest.raises(ConfigError, match="train.lr=.* must be a finite number"):
        TrainConfig(lr=float(value))
    args = ["train", "--data", str(corpus_dir), "--out", str(tmp_path / "r"), "--steps", "2", f"--lr={value}", *TINY]
    assert main(args) == 2
    assert "must be a finite number" in capsys.readouterr().err


def test_a_full_disk_at_the_first_checkpoint_leaves_nothing_and_says_so(tmp_path, corpus_dir, monkeypatch):
    def disk_full(obj, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"partial")  # what a write cut short leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    run = tmp_path / "run"
    with pytest.raises(CheckpointError) as failed:
        train(longrange.ModelConfig.from_name("transformer-xl-tiny"), _cfg(steps=2), str(corpus_dir), run)
    message = str(failed.value)
    assert "the disk is full" in message and "no checkpoint of this run is on disk yet" in message
    assert "previous checkpoint" not in message
    assert not (run / "checkpoint.tmp").exists() and not (run / "checkpoint").exists()


def test_a_full_disk_at_a_later_checkpoint_names_the_one_kept(tmp_path, corpus_dir, monkeypatch):
    trainer = _trainer(tmp_path, corpus_dir, steps=4)
    for _ in range(2):
        trainer.train_step()
    trainer.save()
    trainer.train_step()
    real_save = torch.save

    def disk_full(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"the previous checkpoint is kept: .*checkpoint' \(step 2\)"):
        trainer.save()
    run = tmp_path / "run"
    assert not (run / "checkpoint.tmp").exists() and checkpoint_module.read_meta(run / "checkpoint")["step"] == 2
