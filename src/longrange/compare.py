"""One fair comparison of the six systems: same corpus, same token budget, same held-out documents.

`compare(cfg)` trains each system (`longrange.train.trainer.train`) into ``<out>/runs/<system>``,
evaluates it on the same held-out documents (`longrange.eval.evaluate.evaluate`), runs memory
ablations for systems with memory (the same checkpoint evaluated with the memory off / halved /
doubled through config overrides), and writes a report (`longrange.report.markdown`/`html`).

Fairness:
- Every system sees the same number of training tokens per update: ``tokens_per_step`` is split
  into ``tokens_per_step // segment_len`` rows of the system's own segment length. Reformer reads
  16x longer segments in one pass (its point), so it gets 16x fewer rows per step; the default
  ``tokens_per_step`` is large enough that every system gets at least one full row.
- Same size class (preset ``<system>-<size>``: same width, depth and heads); parameter counts differ
  slightly (Luna's extra sequence, Compressive's compressor, kNN gate) and are reported.
- A corpus prepared by `longrange data prepare` (a directory with ``manifest.json``) is used with its
  own split: training reads ``<dir>/train``, evaluation ``<dir>/test`` (whole held-out books).
- Every system is evaluated on the same documents (the first ``eval_bytes`` of each of the first
  ``eval_docs`` test documents), each with its own segment length and its state carried.

Resumable: a system is finished when ``runs/<system>/done`` exists (written after its evaluation
JSON); an unfinished run is continued from its last checkpoint (``train(..., resume=True)``), one
killed before its first checkpoint is started again.
Systems whose attention kinds are not in `longrange.attention.REGISTRY` are skipped with a note.
"""

from __future__ import annotations

import json
import logging
import resource
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from longrange.config import ModelConfig, preset_names, sections

log = logging.getLogger(__name__)

SYSTEMS = ("transformer", "transformer-xl", "reformer", "luna", "compressive", "memorizing")


@dataclass
class CompareConfig:
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    size: str = "tiny"  # preset size: tiny | small | base
    steps: int = 200  # parameter updates per system
    tokens_per_step: int | None = None  # None: max(8 x shortest segment, longest segment)
    data: str | None = None  # corpus spec (None: the built-in stdlib code corpus)
    eval_docs: int = 8
    eval_bytes: int = 16 * 1024  # per held-out document (None/0: whole documents)
    lr: float = 2e-3
    warmup_steps: int = 20
    seed: int = 0
    device: str = "cpu"
    ablations: bool = True
    command: str = ""  # the command line that produced the report (recorded verbatim)


def memory_key(cfg: ModelConfig) -> str | None:
    """The config key whose value is the model's long-range memory size (None: no memory).

    Read from the registry (each mechanism's ``memory_size_key``); when the layers hold several memories,
    the mechanism registered last is the model's own (a kNN layer among XL layers).
    """
    keys = [
        f"{kind}.{section.memory_size_key}"
        for kind, section in sections().items()
        if section.memory_size_key and kind in cfg.layers
    ]
    return keys[-1] if keys else None


def systems(size: str) -> list[str]:
    """Systems that have a preset of `size` (``<system>-<size>``): the six, then any registered later."""
    names = [name.removesuffix(f"-{size}") for name in preset_names() if name.endswith(f"-{size}")]
    return [*[s for s in SYSTEMS if s in names], *sorted(set(names) - set(SYSTEMS))]


def _get_dotted(cfg: ModelConfig, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def unregistered(cfg: ModelConfig) -> list[str]:
    from longrange.attention import REGISTRY

    return sorted({k for k in cfg.layers if k not in REGISTRY})


def plan(cc: CompareConfig) -> tuple[dict[str, ModelConfig], dict[str, str], int]:
    """(configs of runnable systems, {skipped system: reason}, tokens per step)."""
    cfgs, skipped = {}, {}
    for system in cc.systems:
        if system not in systems(cc.size):
            raise ValueError(f"unknown system {system!r}; choose from {systems(cc.size)}")
        cfg = ModelConfig.from_name(f"{system}-{cc.size}")
        missing = unregistered(cfg)
        if missing:
            skipped[system] = f"attention kind(s) {missing} not registered in longrange.attention.REGISTRY"
        else:
            cfgs[system] = cfg
    segs = [c.segment_len for c in cfgs.values()] or [1]
    tokens = cc.tokens_per_step or max(8 * min(segs), max(segs))
    return cfgs, skipped, tokens


def _prepared(spec: str | None) -> Path | None:
    """The directory of a corpus written by `longrange data prepare` (it has its own split), or None."""
    return Path(spec) if spec and (Path(spec) / "manifest.json").is_file() else None


def _train_spec(spec: str | None) -> str | None:
    prepared = _prepared(spec)
    return str(prepared / "train") if prepared else spec


def _eval_documents(cc: CompareConfig) -> list[bytes]:
    from longrange.data.corpus import load_corpus

    prepared = _prepared(cc.data)
    if prepared:  # the prepared split's held-out documents, in manifest order
        docs = [(prepared / d["file"]).read_bytes() for d in _manifest(prepared)["splits"]["test"]["documents"]]
        docs = docs[: cc.eval_docs]
    else:
        docs = load_corpus(cc.data).split("test")[: cc.eval_docs]
    if not docs:
        raise ValueError(f"corpus {cc.data or 'stdlib'!r} has no test documents")
    return [d[: cc.eval_bytes] for d in docs] if cc.eval_bytes else docs


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _peak_memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    # CPU: the process's peak resident set (KiB on Linux, bytes on macOS); with several systems in one
    # process this is monotone, which is why `compare` runs each system in its own process by default
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


def run_system(cc: CompareConfig, system: str, cfg: ModelConfig, tokens_per_step: int, run_dir: Path) -> dict:
    """Train (or resume) one system, evaluate it and its memory ablations; write result.json + done."""
    from longrange.eval.evaluate import evaluate
    from longrange.model.io import load
    from longrange.train.checkpoint import find_checkpoint
    from longrange.train.trainer import TrainConfig, train

    if cc.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    batch = max(1, tokens_per_step // cfg.segment_len)
    tc = TrainConfig(
        steps=cc.steps,
        batch_size=batch,
        lr=cc.lr,
        warmup_steps=min(cc.warmup_steps, max(cc.steps // 5, 1)),
        checkpoint_every=max(cc.steps // 4, 1),
        log_every=max(min(10, cc.steps // 10), 1),
        seed=cc.seed,
        device=cc.device,
        progress=False,
    )
    start = time.perf_counter()
    resume = find_checkpoint(run_dir) is not None
    if not resume and run_dir.exists():  # killed before its first checkpoint: nothing to keep, start it again
        shutil.rmtree(run_dir)
    train(cfg, tc, _train_spec(cc.data), run_dir, resume=resume)
    train_wall = time.perf_counter() - start
    model = load(run_dir).to(cc.device)
    docs = _eval_documents(cc)
    result = evaluate(model, docs, batch_size=min(4, len(docs)), device=cc.device)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    result.update(
        system=system,
        preset=cfg.name,
        parameters=sum(p.numel() for p in model.parameters()),
        batch_size=batch,
        segment_len=cfg.segment_len,
        train_tokens=batch * cfg.segment_len * cc.steps,
        tokens_per_s=sum(speeds) / len(speeds) if speeds else float("nan"),
        train_wall_s=train_wall,
        peak_memory_mb=_peak_memory_mb(cc.device),
        ablations=_ablations(cc, run_dir, cfg, docs) if cc.ablations else [],
    )
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    (run_dir / "done").write_text("ok\n")
    return result


def _ablations(cc: CompareConfig, run_dir: Path, cfg: ModelConfig, docs: list[bytes]) -> list[dict]:
    """The same checkpoint evaluated with its memory off, halved and doubled."""
    from longrange.eval.evaluate import evaluate
    from longrange.model.io import load

    key = memory_key(cfg)
    if key is None:
        return []
    size = _get_dotted(cfg, key)
    rows = []
    for label, value in (("off", 0), ("half", size // 2), ("trained", size), ("double", size * 2)):
        try:
            model = load(run_dir, **{key: value}).to(cc.device)
            bpb = evaluate(model, docs, batch_size=min(4, len(docs)), device=cc.device)["bpb"]
            rows.append({"variant": label, "key": key, "value": value, "bpb": bpb})
        except (ValueError, RuntimeError) as err:  # e.g. a mechanism that refuses a zero-size memory
            rows.append({"variant": label, "key": key, "value": value, "bpb": None, "note": str(err)[:120]})
    return rows


def _child(cc_dict: dict, system: str, tokens: int, run_dir: str) -> None:
    cc = CompareConfig(**cc_dict)
    cfg = ModelConfig.from_name(f"{system}-{cc.size}")
    run_system(cc, system, cfg, tokens, Path(run_dir))


def compare(cc: CompareConfig, out: str | Path, *, isolate: bool = True) -> Path:
    """Run the comparison into `out` (resumable) and write report.md / report.html; return `out`.

    With `isolate` each system trains in its own (spawned) process, so peak memory is per system.
    """
    import multiprocessing

    from longrange.report.html import write_html
    from longrange.report.markdown import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs, skipped, tokens = plan(cc)
    (out / "compare.json").write_text(json.dumps({**asdict(cc), "tokens_per_step": tokens}, indent=1))
    results = {}
    for system, cfg in cfgs.items():
        run_dir = out / "runs" / system
        if (run_dir / "done").exists():
            log.info("%s: finished earlier, reusing %s", system, run_dir)
        else:
            log.info("%s: training %s (%d tokens per step)", system, cfg.name, tokens)
            run_dir.mkdir(parents=True, exist_ok=True)
            if isolate:
                proc = multiprocessing.get_context("spawn").Process(
                    target=_child, args=(asdict(cc), system, tokens, str(run_dir))
                )
                proc.start()
                proc.join()
                if proc.exitcode != 0:
                    skipped[system] = f"failed with exit code {proc.exitcode} (see the log above)"
                    continue
            else:
                run_system(cc, system, cfg, tokens, run_dir)
        results[system] = json.loads((run_dir / "result.json").read_text())
    write_report(out, cc, results, skipped, tokens, cfgs)
    write_html(out)
    return out
