"""One trainer for every system, readable top to bottom.

A step is one parameter update made of `accumulate` micro-batches (segments). Stateful models
(XL, Compressive, Memorizing) carry their memories from segment to segment, detached between
segments (truncated backpropagation through time); auxiliary losses (the Compressive
reconstruction loss) are added to the LM loss and logged per layer. Metrics go to
``metrics.jsonl`` (and TensorBoard when installed); checkpoints hold everything needed to resume
exactly: weights, optimiser, step, data position, RNG states and the carried memories.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from longrange.config import ConfigError, ModelConfig, _check_literals, _from_dict, _read_yaml, dump_yaml
from longrange.data.stream import IGNORE_INDEX, DocumentStream
from longrange.data.tokenized_corpus import run_corpus
from longrange.data.tokenizer import save_run_tokenizer
from longrange.eval.evaluate import evaluate
from longrange.memory.state import ModelState
from longrange.model.build import build_model
from longrange.model.lm import LongRangeLM
from longrange.runtime import autocast, configure_device, maybe_compile, resolve_device, resolve_precision
from longrange.train.checkpoint import BEST, LATEST, find_checkpoint, read_checkpoint, read_weights, write_checkpoint
from longrange.train.distributed import DistInfo, init_distributed, shutdown_distributed
from longrange.train.guards import SpikeGuard, diverged_note
from longrange.train.init_from import init_weights
from longrange.train.loggers import wandb_logger
from longrange.train.optim import build_optimizer, lr_at
from longrange.train.resume_checks import check_resumable, check_resumed_inputs, finished_message
from longrange.train.run_folder import (
    METRICS,
    RUN_CONFIG,
    RunLock,
    append_line,
    prepare_run_folder,
    record_invocation,
    truncate_metrics,
    write_run_file,
)
from longrange.train.sharding import (
    full_optimizer_state,
    full_weights,
    load_full_optimizer_state,
    load_full_weights,
    local_value,
    shard_model,
)

log = logging.getLogger(__name__)


def _option(default: Any, help: str, **kw: Any) -> Any:
    """A TrainConfig field whose help text is written once: here (the `train` command reads it)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    steps: int = _option(1000, "parameter updates (may be raised on --resume to extend a run)")
    batch_size: int = _option(8, "rows (documents read in parallel), global over all ranks")
    segment_len: int | None = _option(None, "tokens per row per micro-batch (default: the model's segment_len)")
    lr: float = _option(1e-3, "peak learning rate")
    init_lr: float = _option(0.0, "learning rate at step 0 (linear warmup starts here)")
    min_lr: float = _option(1e-4, "learning rate at the end of the cosine decay")
    warmup_steps: int = _option(100, "linear warmup steps")
    optimizer: Literal["adamw", "adam"] = _option("adamw", "adamw or adam")
    weight_decay: float = _option(0.1, "AdamW weight decay on matrices")
    betas: list[float] = _option([0.9, 0.95], "Adam betas, e.g. 0.9 0.95")
    grad_clip: float = _option(1.0, "max global gradient norm (0: off)")
    accumulate: int = _option(1, "micro-batches per update (update every k steps)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _option(
        "auto",
        "auto (bf16 autocast where the device has fast bf16 matrix products and the model trains faster in it, "
        "else fp32: see longrange.runtime.resolve_precision; the run records the choice), fp32, bf16 "
        "(autocast) or fp16 (autocast + gradient scaler)",
    )
    seed: int = _option(0, "random seed (weights, data order)")
    eval_every: int = _option(0, "validate every N steps and keep the best checkpoint (0: only at the end)")
    eval_segments: int = _option(32, "segments (of batch rows) per validation; `longrange eval` reads everything")
    checkpoint_every: int = _option(100, "write a checkpoint every N steps")
    keep_checkpoints: int = _option(2, "checkpoints kept, the newest included (plus the best with --eval-every)")
    max_bad_steps: int = _option(
        3,
        "bad steps (a non-finite loss or gradient norm, or a loss spike) in a row that are skipped (no update) "
        "before the run stops as diverged (0: stop at once)",
    )
    spike_factor: float = _option(
        10.0,
        "a loss above this many times the median of the last 100 accepted losses (at least 1 nat; at the start "
        "ln(vocab), a uniform guess) is a bad step, like a non-finite one (0: off)",
    )
    log_every: int = _option(10, "write metrics every N steps")
    device: str = _option("auto", "cpu, cuda, cuda:N or auto (cuda when available)")
    shard: Literal["ddp", "fsdp"] = _option(
        "ddp",
        "under torchrun: ddp (each rank holds the whole model) or fsdp (FSDP2: parameters, gradients and optimiser "
        "state split across ranks, for models larger than one device)",
    )
    compile: bool = _option(False, "torch.compile the model")
    threads: int | None = _option(None, "torch CPU threads (default: torch's: OMP_NUM_THREADS or the physical cores)")
    progress: bool = _option(True, "show a progress bar (off: a plain loss line every --log-every steps)")
    wandb: str | None = _option(None, "also log to this Weights & Biases project (needs the optional wandb package)")

    def __post_init__(self) -> None:
        _check_literals(self)
        for key in ("steps", "batch_size", "accumulate", "checkpoint_every", "log_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 1")
        for key in ("segment_len", "threads"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 1 (or left out for the default)")
        for key in ("eval_every", "max_bad_steps", "warmup_steps", "eval_segments"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 0")
        for key in ("lr", "min_lr", "init_lr", "weight_decay", "grad_clip", "spike_factor"):
            if not math.isfinite(getattr(self, key)):  # inf passes every comparison below, and NaN fails none
                raise ConfigError(f"train.{key}={getattr(self, key)} must be a finite number")
        if self.lr <= 0 or self.min_lr < 0 or self.init_lr < 0:
            raise ConfigError("train.lr must be > 0 and train.min_lr, train.init_lr >= 0")
        if self.spike_factor < 0 or 0 < self.spike_factor <= 1:
            raise ConfigError(f"train.spike_factor={self.spike_factor} must be above 1 (or 0: off)")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"train.betas={self.betas} must be two numbers in [0, 1)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        if "bf16" in data:  # train.yaml of runs before `precision`
            data["precision"] = "bf16" if data.pop("bf16") else data.get("precision", "fp32")
        recipe = data.pop("recipe", None)
        base = RECIPES.get(recipe, {}) if recipe is None or recipe in RECIPES else _unknown_recipe(recipe)
        return _from_dict(cls, {**base, **data}, prefix="train.")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(_read_yaml(path).get("train", {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# settings that may differ when a run is resumed (everything else must match the saved run)
RESUMABLE_KEYS = (
    "steps",
    "log_every",
    "progress",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_every",
    "eval_segments",
    "max_bad_steps",
    "spike_factor",
    "device",
    "compile",
    "threads",
    "wandb",
)


# named optimisation recipes (`recipe:` in a train config)
RECIPES: dict[str, dict[str, Any]] = {
    "default": {},
    # Rae et al. 2020: Adam, warmup 1e-6 -> 3e-4, cosine back to 1e-6, clip 0.1, update every k steps
    "compressive-paper": {
        "optimizer": "adam",
        "lr": 3e-4,
        "init_lr": 1e-6,
        "min_lr": 1e-6,
        "grad_clip": 0.1,
        "accumulate": 4,
        "weight_decay": 0.0,
        "betas": [0.9, 0.999],
    },
}


def _unknown_recipe(name: str) -> dict:
    raise ConfigError(f"unknown train recipe {name!r}; choose one of {sorted(RECIPES)}")


def _with_recipe(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with its recipe's settings in place of the name (its own settings win): what it asks for."""
    recipe = data.get("recipe")
    base = {} if recipe is None else RECIPES[recipe] if recipe in RECIPES else _unknown_recipe(recipe)
    return {**base, **{key: value for key, value in data.items() if key != "recipe"}}


# ----------------------------------------------------------------------------- state (de)serialisation


def state_to_dict(state: ModelState | None) -> dict | None:
    if state is None:
        return None
    layers = []
    for s in state.layers:
        if s is None:
            layers.append(None)
            continue
        entry: dict[str, Any] = {"tensors": dict(s.tensors), "live": dict(s.live)}
        if s.store is not None and hasattr(s.store, "state_dict"):
            entry["store"] = s.store.state_dict()
        layers.append(entry)
    return {"layers": layers, "pos": state.pos}


def state_from_dict(model: LongRangeLM, data: dict | None, batch_size: int, device) -> ModelState | None:
    if data is None:
        return None
    state = model.init_state(batch_size, device)
    for s, saved in zip(state.layers, data["layers"], strict=True):
        if s is None or saved is None:
            continue
        s.tensors.update({k: v.to(device) for k, v in saved["tensors"].items()})
        s.live = dict(saved.get("live", {}))  # not the fresh state's zeros: the loaded slots hold states
        if "store" in saved and s.store is not None:
            s.store.load_state_dict(saved["store"])
    state.pos = data["pos"].to(device)
    return state


# ----------------------------------------------------------------------------- the trainer


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm stayed non-finite, or the loss spiked (`SpikeGuard`), for more steps in a row
    than `max_bad_steps` allows."""


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM: the current step was finished and a checkpoint written."""

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        where = f"checkpoint written to {checkpoint}" if checkpoint else "no checkpoint written"
        super().__init__(f"interrupted by {signal.Signals(signum).name} after step {step}; {where}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class _StopSignals:
    """The first SIGINT/SIGTERM asks the loop to stop after the current step; a second one aborts."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
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


class Trainer:
    def __init__(
        self,
        model: LongRangeLM,
        cfg: TrainConfig,
        train_docs: list[bytes],
        valid_docs: list[bytes] | None,
        out_dir: str | Path,
        dist_info: DistInfo | None = None,
    ):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.dist = dist_info or DistInfo()
        self.device = resolve_device(cfg.device, local_rank=self.dist.local_rank)
        if cfg.precision == "auto":  # decided here when the caller did not (`train` decides before recording it)
            self.cfg = cfg = dataclasses.replace(cfg, precision=resolve_precision("auto", self.device, model.config))
        configure_device(self.device)
        self.model = model.to(self.device)
        self.fsdp = self.dist.enabled and cfg.shard == "fsdp"
        if self.fsdp:
            shard_model(self.model)  # before the optimiser: it must hold the sharded parameters
        self.segment_len = cfg.segment_len or model.config.segment_len
        self.stream = DocumentStream(
            train_docs,
            cfg.batch_size,
            self.segment_len,
            seed=cfg.seed,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )
        self.valid_docs = valid_docs or []
        self.optimizer = build_optimizer(
            model, kind=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=tuple(cfg.betas)
        )
        # fp16 needs loss scaling (its range underflows small gradients); bf16 has fp32's range and does not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        # a stateful model leaves parameters unused in some steps (the kNN gate while its memory is empty, the
        # compression weights before anything is evicted): DDP must look for them or it waits for their gradients
        self.ddp = (
            DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=model.stateful,
            )
            if self.dist.enabled and not self.fsdp
            else None
        )
        self.forward = maybe_compile(self.ddp or self.model, cfg.compile)
        self.step = 0
        self.bad_steps = 0  # bad steps (non-finite, or a loss spike) in a row
        self.spikes = SpikeGuard(cfg.spike_factor, model.config.vocab_size)
        self.best_valid: float | None = None
        self.state: ModelState | None = None
        self.history: list[dict] = []
        self._tensorboard: Any = False  # created on the first log line (False: not tried yet)
        self._wandb = wandb_logger(cfg.wandb, self.out_dir, cfg.to_dict()) if self.dist.is_main else None

    # -- checkpointing ---------------------------------------------------------------
    def save(self, name: str = LATEST, valid_bpb: float | None = None) -> Path | None:
        """Write a checkpoint (every rank its shard); refused when the weights are not finite."""
        weights = full_weights(self.model) if self.fsdp else None  # gathered to rank 0 (a collective)
        tensors = weights.values() if weights is not None else self.model.parameters()
        finite = not self.dist.any(not all(bool(torch.isfinite(t).all()) for t in tensors))
        if not finite:
            log.error("step %d: the weights are not finite; keeping the last checkpoint", self.step)
            return None
        trainer_state = {
            "step": self.step,
            "stream": self.stream.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "model_state": state_to_dict(self.state),
            "bad_steps": self.bad_steps,
            "best_valid": self.best_valid,
            "recent_losses": self.spikes.state_dict(),
        }
        optimizer = full_optimizer_state(self.model, self.optimizer) if self.fsdp else self.optimizer.state_dict()
        if self.dist.is_main:  # the optimiser state is the same on every rank (DDP) or gathered (FSDP): one copy
            trainer_state["optimizer"] = optimizer
            trainer_state["scaler"] = self.scaler.state_dict()
        meta = {"step": self.step, "valid_bpb": valid_bpb}
        return write_checkpoint(
            self.out_dir,
            self.model,
            self.cfg.to_dict(),
            trainer_state,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
            meta=meta,
            keep=self.cfg.keep_checkpoints,
            name=name,
            barrier=self.dist.barrier,
            weights=weights,
        )

    def resume(self) -> bool:
        """Continue from the run's last checkpoint; False when there is none."""
        path = find_checkpoint(self.out_dir)
        if path is None:
            return False
        target = None if self.fsdp else self.model  # FSDP: the full weights are scattered from rank 0 below
        saved = read_checkpoint(path, target, self.dist.rank, self.dist.world_size)
        shared = saved if self.dist.is_main else read_checkpoint(path, None, 0, self.dist.world_size)
        self.step = int(saved["step"])
        if self.fsdp:
            load_full_weights(self.model, read_weights(path) if self.dist.is_main else {})
            load_full_optimizer_state(self.model, self.optimizer, shared["optimizer"] if self.dist.is_main else {})
        else:
            self.optimizer.load_state_dict(shared["optimizer"])
        if shared.get("scaler"):
            self.scaler.load_state_dict(shared["scaler"])
        self.stream.load_state_dict(saved["stream"])
        torch.set_rng_state(saved["rng_cpu"])
        if saved["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        self.state = state_from_dict(self.model, saved["model_state"], self.stream.batch_size, self.device)
        self.bad_steps = int(saved.get("bad_steps", 0))
        self.best_valid = saved.get("best_valid")
        self.spikes.load_state_dict(saved.get("recent_losses"))
        if self.dist.is_main:
            truncate_metrics(self.out_dir / METRICS, self.step)
        log.info("resumed %s at step %d", path, self.step)
        return True

    # -- one update --------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One update; a non-finite loss or gradient norm skips it (no update, memories as before)."""
        cfg = self.cfg
        lr = lr_at(
            self.step,
            lr=cfg.lr,
            min_lr=cfg.min_lr,
            init_lr=cfg.init_lr,
            warmup_steps=cfg.warmup_steps,
            total_steps=cfg.steps,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        state_before = self.state
        aux_names: list[str] = []
        sums: Tensor | None = None  # [token-weighted loss, tokens, aux losses ...], summed over ranks below
        for micro in range(cfg.accumulate):
            batch = self.stream.next_batch()
            local_tokens = int((batch.targets != IGNORE_INDEX).sum())  # a CPU tensor: no device sync
            counts = self.dist.sum_(torch.tensor([float(local_tokens)], device="cpu"))  # host-side: gloo
            # DDP averages gradients over ranks; weighting each rank's mean loss by its share of the tokens makes
            # the update the mean over every token of the global batch, as one process computes it
            weight = local_tokens * self.dist.world_size / max(float(counts[0]), 1.0)
            last = micro == cfg.accumulate - 1
            sync = contextlib.nullcontext() if (self.ddp is None or last) else self.ddp.no_sync()
            with sync:
                with autocast(self.device, cfg.precision):
                    out = self.forward(
                        batch.tokens.to(self.device),
                        state=self.state,
                        doc_start=batch.doc_start.to(self.device),
                        targets=batch.targets.to(self.device),
                    )
                    loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
                self.scaler.scale(loss * (weight / cfg.accumulate)).backward()
            if self.model.stateful:
                self.state = out.state.detach()  # truncated BPTT: memories carry values, not gradients
            aux_names = list(out.aux_losses)
            values = [out.loss.detach().float() * local_tokens, torch.tensor(float(local_tokens), device=self.device)]
            values += [out.aux_losses[name].detach().float() * local_tokens for name in aux_names]
            micro_sums = torch.stack([v.to(self.device) for v in values])
            sums = micro_sums if sums is None else sums + micro_sums
        assert sums is not None
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = local_value(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        totals = self.dist.sum_(torch.cat([sums, grad_norm.detach().float().reshape(1).to(self.device)]))
        totals[-1] /= self.dist.world_size  # the norm is the same on every rank after DDP's all-reduce
        values = totals.tolist()  # the one host sync of a step
        tokens = max(values[1], 1.0)
        metrics = {"loss": values[0] / tokens}
        metrics.update({name: values[2 + i] / tokens for i, name in enumerate(aux_names)})
        finite = math.isfinite(metrics["loss"]) and (math.isfinite(values[-1]) or self.scaler.is_enabled())
        spike = finite and self.spikes.is_spike(metrics["loss"])
        if finite and not spike:
            self.scaler.step(self.optimizer)  # skips the update itself when fp16 gradients overflowed
            self.bad_steps = 0
            self.spikes.accept(metrics["loss"])
        else:
            self.bad_steps += 1
            self.state = state_before  # the memories of a bad step are not kept either
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if spike:
            reference = self.spikes.reference()
            what = f"loss {metrics['loss']:.4g}, above {cfg.spike_factor:g} x {reference:.4g} (--spike-factor)"
        else:
            what = f"loss {metrics['loss']:.4g}, gradient norm {values[-1]:.4g}"
        if self.bad_steps > cfg.max_bad_steps:
            raise TrainingDiverged(
                f"training diverged at step {self.step}: {what} ({self.bad_steps} bad step(s) in a row, "
                f"--max-bad-steps {cfg.max_bad_steps}); {diverged_note(self.out_dir, self.step - self.bad_steps + 1)}"
            )
        if self.bad_steps:
            log.warning("step %d: %s; update skipped", self.step, what if spike else "non-finite " + what)
        if cfg.grad_clip > 0:
            metrics["grad_norm"] = values[-1]
        return {**metrics, "lr": lr, "tokens": int(values[1]), "skipped": int(bool(self.bad_steps))}

    # -- the loop ----------------------------------------------------------------------
    def fit(self) -> list[dict]:
        cfg = self.cfg
        self.model.train()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            disable=not (cfg.progress and self.dist.is_main),
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        window_tokens, window_start = 0, time.perf_counter()
        with _StopSignals() as stop:
            while self.step < cfg.steps:
                metrics = self.train_step()
                window_tokens += metrics["tokens"]
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.1e}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    elapsed = time.perf_counter() - window_start
                    record = {"step": self.step, **metrics, "tokens_per_s": window_tokens / max(elapsed, 1e-9)}
                    self._log(record)
                    if not cfg.progress and self.dist.is_main:
                        log.info("step %d  loss %.4f  lr %.2e", self.step, metrics["loss"], metrics["lr"])
                    window_tokens, window_start = 0, time.perf_counter()
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self._validate_and_keep_best()
                if self.step % cfg.checkpoint_every == 0 and self.bad_steps and self.step < cfg.steps:
                    # its weights are those that just went wrong: writing it would rotate a good checkpoint away
                    log.warning("step %d: no checkpoint during bad steps; the kept ones stay", self.step)
                elif self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                if self.dist.any(stop.signum is not None):
                    bar.close()
                    path = self.save() if self.step % cfg.checkpoint_every else find_checkpoint(self.out_dir)
                    raise TrainingInterrupted(stop.signum or signal.SIGTERM, self.step, path)
        bar.close()
        return self.history

    def _validate_and_keep_best(self) -> None:
        result = self.validate(self.cfg.eval_segments)
        if result:
            self._log({"step": self.step, **result})
        bpb = result.get("valid_bpb")
        better = bpb is not None and math.isfinite(bpb) and (self.best_valid is None or bpb < self.best_valid)
        if self.dist.any(better):  # rank 0 validates; every rank writes its shard of the best checkpoint
            self.best_valid = bpb if self.dist.is_main else self.best_valid
            self.save(BEST, valid_bpb=bpb)

    def validate(self, max_segments: int | None = None) -> dict[str, float]:
        if not self.valid_docs or not (self.dist.is_main or self.fsdp):  # FSDP: every rank runs the shards
            return {}
        # in the run's precision: an autocast around evaluate() was undone by its own (fp32 unless told otherwise)
        result = evaluate(
            self.model,
            self.valid_docs,
            batch_size=min(4, len(self.valid_docs)),
            segment_len=self.segment_len,
            device=self.device,
            max_segments=max_segments,
            precision=self.cfg.precision,
        )
        self.model.train()
        return {"valid_bpb": result["bpb"]} if self.dist.is_main else {}

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if not self.dist.is_main:
            return
        strict = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}
        append_line(self.out_dir / METRICS, json.dumps(strict, allow_nan=False))  # NaN is not JSON: null
        if self._wandb is not None:
            self._wandb(record)
        if self._tensorboard is False:
            self._tensorboard = _tensorboard_writer(self.out_dir)
        if self._tensorboard is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, int | float):
                    self._tensorboard.add_scalar(key, value, record["step"])
        log.debug("%s", record)


def _tensorboard_writer(out_dir: Path):
    """A TensorBoard writer when the optional `tensorboard` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


# ----------------------------------------------------------------------------- a run, start to end


def read_run(out_dir: str | Path) -> tuple[ModelConfig, TrainConfig, str | None]:
    """The model config, training config and corpus spec a run was started with (what `--resume` continues)."""
    out_dir = Path(out_dir)
    saved = _read_yaml(out_dir / RUN_CONFIG)
    model_cfg = ModelConfig.from_file(out_dir / "config.yaml")
    return model_cfg, TrainConfig.from_dict(saved.get("train", {})), saved.get("data")


def check_resume_settings(out_dir: str | Path, model_cfg: ModelConfig | None, train_data: dict, data: str | None):
    """Refuse settings that differ from the saved run's, except `RESUMABLE_KEYS`; returns the run's configs."""
    saved_model, saved_train, saved_data = read_run(out_dir)
    changed = [
        f"{key}={value!r} (the run has {getattr(saved_train, key)!r})"
        for key, value in _with_recipe(train_data).items()
        if key not in RESUMABLE_KEYS
        and value != getattr(saved_train, key)
        and not (key == "precision" and value == "auto")  # auto resumes with the precision the run recorded
    ]
    if model_cfg is not None and model_cfg.to_dict() != saved_model.to_dict():
        old, new = saved_model.to_dict(), model_cfg.to_dict()
        changed += [f"model {k}={new[k]!r} (the run has {old.get(k)!r})" for k in new if new[k] != old.get(k)]
    if data is not None and data != saved_data:
        changed.append(f"--data {data!r} (the run has {saved_data!r})")
    if changed:
        raise ConfigError(
            f"--resume continues the run as it was configured; refusing changed {'; '.join(changed)}. "
            f"Only {', '.join(RESUMABLE_KEYS)} may change on resume"
        )
    merged = {**saved_train.to_dict(), **{k: v for k, v in train_data.items() if k in RESUMABLE_KEYS}}
    return saved_model, TrainConfig.from_dict(merged), saved_data


def write_run_config(
    out_dir: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: str | None,
    manifest: dict,
    init_from: str | Path | None = None,
) -> None:
    """What `--resume` and `eval` read: the model config, the training config + corpus spec, the corpus manifest."""
    write_run_file(out_dir / "config.yaml", model_cfg.to_text())
    run_config = {"train": train_cfg.to_dict(), "data": data}
    if init_from is not None:
        run_config["init_from"] = str(init_from)
    write_run_file(out_dir / RUN_CONFIG, dump_yaml(run_config, "the run config"))
    write_run_file(out_dir / "corpus.json", json.dumps({"spec": data or "stdlib", **manifest}, indent=1))


def _decided_precision(
    train_cfg: TrainConfig, device: torch.device, model_cfg: ModelConfig, out_dir: Path, resume: bool
) -> TrainConfig:
    """`precision: auto` decided once for a run: a resumed run keeps the precision it recorded (when it moved to
    another machine too), a new one takes `resolve_precision`'s choice, which the run config then records."""
    if train_cfg.precision != "auto":
        return train_cfg
    if resume and (out_dir / RUN_CONFIG).is_file():
        recorded = TrainConfig.from_dict(_read_yaml(out_dir / RUN_CONFIG).get("train", {})).precision
        if recorded != "auto":
            return dataclasses.replace(train_cfg, precision=recorded)
    return dataclasses.replace(train_cfg, precision=resolve_precision("auto", device, model_cfg))


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: str | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    init_from: str | Path | None = None,
    tokenizer: str | None = None,
) -> Path:
    """Train `model_cfg` on corpus `data` into `out_dir`; returns the run directory.

    With ``resume=True`` the run's last checkpoint is continued exactly; without it the folder must
    be new or empty (``overwrite=True`` replaces an earlier run's files). The folder is locked for
    the run. ``init_from`` (a run or checkpoint folder) starts a new run from its weights only (fine-tuning,
    e.g. a transformer-xl run into a memorizing model): tensors it lacks start fresh and are listed,
    tensors this model has no place for are skipped and listed, mis-shaped ones are an error.
    ``tokenizer``: bytes (None), ``bpe:VOCAB`` or a FILE.json (`longrange.data.tokenizer`), kept in the run.
    Raises `TrainingDiverged` and `TrainingInterrupted` (after writing a checkpoint).
    """
    out_dir = Path(out_dir)
    model_cfg.to_text()  # a config that could not be read back once written is refused before the folder is touched
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    device = resolve_device(train_cfg.device)
    dist_info = init_distributed(device)
    lock: RunLock | None = None
    clean = False
    try:

        def claim_folder() -> RunLock:
            # an existing folder is locked before it is judged, so a run in progress is named as such
            held = RunLock(out_dir) if out_dir.is_dir() else None
            try:
                prepare_run_folder(out_dir, resume=resume, overwrite=overwrite, init_from=init_from)
                held = held or RunLock(out_dir)
                if resume:
                    check_resumable(out_dir, train_cfg.steps, tokenizer)
            except BaseException:
                if held is not None:
                    held.release()
                raise
            return held

        lock = dist_info.agree(claim_folder)
        if resume and (done := finished_message(out_dir, train_cfg.steps)):  # nothing to train, nothing appended
            log.info("%s", done)
            clean = True
            return out_dir
        corpus = dist_info.agree(lambda: run_corpus(data, tokenizer, out_dir, resume), main_only=False)
        model_cfg = corpus.model_config(model_cfg)  # a subword tokenizer's vocabulary size
        if resume:  # the corpus and the model config the run was trained with
            dist_info.agree(lambda: check_resumed_inputs(out_dir, model_cfg, corpus), main_only=False)
        train_cfg = _decided_precision(train_cfg, device, model_cfg, out_dir, resume)
        torch.manual_seed(train_cfg.seed)
        with torch.device("cpu"):  # the seed gives the same initial weights whatever the run's or default device
            model = build_model(model_cfg.with_run_files(out_dir))  # e.g. a disk-backed kNN memory
        init_report = None
        if init_from is not None and not resume:  # byte documents only: a subword run's are token documents
            held_out = corpus.split("valid")
            init_report = init_weights(model, Path(init_from), held_out if isinstance(held_out, list) else None)
        trainer = Trainer(model, train_cfg, corpus.split("train"), corpus.split("valid"), out_dir, dist_info)
        if dist_info.is_main:
            record_invocation(out_dir, dist_info.world_size)
            if not resume:
                write_run_config(out_dir, model_cfg, train_cfg, data, corpus.manifest, init_from)
                if init_report is not None:
                    write_run_file(out_dir / "init-from.json", json.dumps({"source": str(init_from), **init_report}))
                save_run_tokenizer(out_dir, corpus.tokenizer)
        dist_info.barrier()
        if resume:
            trainer.resume()
        trainer.fit()
        final = trainer.validate(train_cfg.eval_segments)  # a bounded check; `longrange eval` reads everything
        if final:
            trainer._log({"step": trainer.step, **final})
        clean = True
    finally:
        if lock is not None:
            lock.release()
        shutdown_distributed(dist_info, clean=clean)
    return out_dir
