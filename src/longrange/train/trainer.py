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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from longrange.config import ConfigError, ModelConfig, _check_literals, _from_dict, _read_yaml
from longrange.data.corpus import load_corpus
from longrange.data.stream import DocumentStream
from longrange.memory.state import ModelState
from longrange.model.build import build_model
from longrange.model.lm import LongRangeLM
from longrange.train.checkpoint import find_checkpoint, read_checkpoint, write_checkpoint
from longrange.train.distributed import DistInfo, init_distributed
from longrange.train.optim import build_optimizer, lr_at

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 1000  # parameter updates
    batch_size: int = 8  # rows (documents read in parallel), global over all ranks
    segment_len: int | None = None  # tokens per row per micro-batch; None: the model's segment_len
    lr: float = 1e-3  # peak learning rate
    init_lr: float = 0.0  # learning rate at step 0 (linear warmup from here)
    min_lr: float = 1e-4  # end of the cosine decay
    warmup_steps: int = 100
    optimizer: Literal["adamw", "adam"] = "adamw"
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0  # max global gradient norm (0: off)
    accumulate: int = 1  # micro-batches per update ("update every k steps")
    bf16: bool = False  # bf16 autocast
    seed: int = 0
    eval_every: int = 0  # validate every N steps (0: only at the end)
    eval_segments: int = 32  # segments (of batch rows) per validation; whole-document eval is `longrange eval`
    checkpoint_every: int = 100
    log_every: int = 10
    device: str = "cpu"
    threads: int | None = None  # torch threads; None: torch's default
    progress: bool = True  # progress bar

    def __post_init__(self) -> None:
        _check_literals(self)
        for key in ("steps", "batch_size", "accumulate", "checkpoint_every", "log_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key}={getattr(self, key)} must be >= 1")
        if self.lr <= 0 or self.min_lr < 0 or self.init_lr < 0:
            raise ConfigError("train.lr must be > 0 and train.min_lr, train.init_lr >= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        recipe = data.pop("recipe", None)
        base = RECIPES.get(recipe, {}) if recipe is None or recipe in RECIPES else _unknown_recipe(recipe)
        return _from_dict(cls, {**base, **data}, prefix="train.")

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(_read_yaml(path).get("train", {}))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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


# ----------------------------------------------------------------------------- state (de)serialisation


def state_to_dict(state: ModelState | None) -> dict | None:
    if state is None:
        return None
    layers = []
    for s in state.layers:
        if s is None:
            layers.append(None)
            continue
        entry: dict[str, Any] = {"tensors": dict(s.tensors)}
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
        if "store" in saved and s.store is not None:
            s.store.load_state_dict(saved["store"])
    state.pos = data["pos"].to(device)
    return state


# ----------------------------------------------------------------------------- the trainer


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
        self.device = torch.device(cfg.device)
        self.model = model.to(self.device)
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
        self.ddp = DistributedDataParallel(model) if self.dist.enabled else None
        self.step = 0
        self.state: ModelState | None = None
        self.history: list[dict] = []
        self._tensorboard: Any = False  # created on the first log line (False: not tried yet)

    # -- checkpointing ---------------------------------------------------------------
    def save(self) -> None:
        if not self.dist.is_main:
            return
        trainer_state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "stream": self.stream.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "model_state": state_to_dict(self.state),
        }
        write_checkpoint(self.out_dir, self.model, self.cfg.to_dict(), trainer_state)

    def resume(self) -> bool:
        """Continue from the run's last checkpoint; False when there is none."""
        path = find_checkpoint(self.out_dir)
        if path is None:
            return False
        saved = read_checkpoint(path, self.model)
        self.step = int(saved["step"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.stream.load_state_dict(saved["stream"])
        torch.set_rng_state(saved["rng_cpu"])
        if saved["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        self.state = state_from_dict(self.model, saved["model_state"], self.stream.batch_size, self.device)
        _truncate_metrics(self.out_dir / "metrics.jsonl", self.step)
        log.info("resumed %s at step %d", path, self.step)
        return True

    # -- one update --------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        cfg, model = self.cfg, self.ddp or self.model
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
        totals: dict[str, float] = {"loss": 0.0}
        tokens = 0
        for micro in range(cfg.accumulate):
            batch = self.stream.next_batch()
            last = micro == cfg.accumulate - 1
            sync = contextlib.nullcontext() if (self.ddp is None or last) else self.ddp.no_sync()
            autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16)
            with sync, autocast:
                out = model(
                    batch.tokens.to(self.device),
                    state=self.state,
                    doc_start=batch.doc_start.to(self.device),
                    targets=batch.targets.to(self.device),
                )
                loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
                (loss / cfg.accumulate).backward()
            if self.model.stateful:
                self.state = out.state.detach()  # truncated BPTT: memories carry values, not gradients
            totals["loss"] += out.loss.item() / cfg.accumulate
            for name, value in out.aux_losses.items():
                totals[name] = totals.get(name, 0.0) + value.item() / cfg.accumulate
            tokens += int((batch.targets != -100).sum())
        if cfg.grad_clip > 0:
            totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {**totals, "lr": lr, "tokens": tokens * self.dist.world_size}

    # -- the loop ----------------------------------------------------------------------
    def fit(self) -> list[dict]:
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
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
        while self.step < cfg.steps:
            metrics = self.train_step()
            window_tokens += metrics["tokens"]
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.1e}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                elapsed = time.perf_counter() - window_start
                record = {"step": self.step, **metrics, "tokens_per_s": window_tokens / max(elapsed, 1e-9)}
                self._log(record)
                window_tokens, window_start = 0, time.perf_counter()
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self._log({"step": self.step, **self.validate(cfg.eval_segments)})
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save()
        bar.close()
        return self.history

    def validate(self, max_segments: int | None = None) -> dict[str, float]:
        from longrange.eval.evaluate import evaluate

        if not self.valid_docs or not self.dist.is_main:
            return {}
        result = evaluate(
            self.model,
            self.valid_docs,
            batch_size=min(4, len(self.valid_docs)),
            segment_len=self.segment_len,
            device=self.device,
            max_segments=max_segments,
        )
        return {"valid_bpb": result["bpb"]}

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if not self.dist.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
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
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint we resume from (they will be written again)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))


def train(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    data: str | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
) -> Path:
    """Train `model_cfg` on corpus `data` into `out_dir`; returns the run directory.

    With ``resume=True`` an existing checkpoint in `out_dir` is continued exactly; without it an
    existing checkpoint is an error (so a run is never overwritten by accident).
    """
    out_dir = Path(out_dir)
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    dist_info = init_distributed(train_cfg.device)
    if not resume and find_checkpoint(out_dir) is not None:
        raise ValueError(f"{str(out_dir)!r} already holds a checkpoint; pass --resume to continue it or pick --out")
    corpus = load_corpus(data)
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg)
    trainer = Trainer(model, train_cfg, corpus.split("train"), corpus.split("valid"), out_dir, dist_info)
    if resume:
        trainer.resume()
    if dist_info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        model_cfg.to_file(out_dir / "config.yaml")
        (out_dir / "corpus.json").write_text(json.dumps({"spec": data or "stdlib", **corpus.manifest}, indent=1))
    trainer.fit()
    if dist_info.is_main:
        final = trainer.validate(train_cfg.eval_segments)  # a bounded check; `longrange eval` reads everything
        if final:
            trainer._log({"step": trainer.step, **final})
    return out_dir
