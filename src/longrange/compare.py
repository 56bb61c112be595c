"""One fair comparison of the systems: the same documents in the same order, the same budget, several seeds.

`compare(cfg)` trains each system (`longrange.train.train`) once per seed into
``<out>/runs/<system>/seed-<k>``, evaluates every run on the same held-out documents
(`longrange.eval.evaluate.evaluate`), runs memory ablations of seed 0 for systems with memory (the same
checkpoint evaluated with the memory off / halved / doubled through config overrides), and writes a report
(`longrange.report.markdown`/`html`).

Fairness (a batch layout that differs per system would confound the layout with the mechanism):
- Equal data: every system reads ``rows`` rows of ``row_tokens`` tokens per update. Row g reads the same
  documents in the same order for every system (the stream's order depends on the seed and the row only),
  so per seed every system sees the same bytes at the same update. Each system cuts a row's
  ``row_tokens`` into its own segments: ``row_tokens // segment_len`` micro-batches of one update
  (`TrainConfig.accumulate`), in order, a stateful model carrying its memories from one segment of the row
  to the next. Systems built to read a long sequence in one pass (``whole_row``: those whose mechanisms
  register ``whole_row``, Reformer and Luna) read the whole row as one segment, in training and evaluation.
  What differs is only padding at document ends (a document's last segment is padded), which a longer
  segment wastes more of; the report says so.
- Reach: the tokens of context a prediction can see at most (`reach`), in the report beside each layout.
- Seeds: seeds ``0 .. seeds-1`` change the initial weights and the document order (the same for every
  system); the report gives mean, standard deviation and min-max of held-out bits per byte and which
  differences between systems exceed the spread (the min-max ranges do not overlap).
- Size: same size class (preset ``<system>-<size>``: same width, depth and heads); the report says
  whether parameter counts are within ``param_tolerance`` of each other.
- A corpus prepared by `longrange data prepare` (a directory with ``manifest.json``) is used with its
  own split: training reads ``<dir>/train``, evaluation ``<dir>/test`` (whole held-out books).
- Every system is evaluated on the same documents (the first ``eval_bytes`` of each of the first
  ``eval_docs`` test documents), each with its own segment length and its state carried.

Resumable: a run is finished when ``runs/<system>/seed-<k>/done`` exists (written after its evaluation
JSON), a system when ``runs/<system>/done`` exists (all its seeds); an unfinished run is continued from its
last checkpoint (``train(..., resume=True)``), one killed before its first checkpoint is started again. Runs are
reused only under the settings they were trained with (``compare.json``; `check_earlier_settings`). A SIGTERM
stops the run training in its own process first (`_run_in_child`), so it leaves no process behind.
Systems whose attention kinds are not in `longrange.attention.REGISTRY` are skipped with a note.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from longrange.attention import REGISTRY
from longrange.config import PRESETS, ModelConfig, preset_names, sections
from longrange.data.corpus import load_corpus
from longrange.eval.evaluate import evaluate
from longrange.model.io import load
from longrange.report.html import write_html
from longrange.report.markdown import write_report
from longrange.train.checkpoint import find_checkpoint
from longrange.train.config import TrainConfig, read_run
from longrange.train.signals import TrainingInterrupted
from longrange.train.trainer import train

log = logging.getLogger(__name__)

SYSTEMS = ("transformer", "transformer-xl", "reformer", "luna", "compressive", "memorizing")


@dataclass
class CompareConfig:
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    size: str = "tiny"  # preset size: tiny | small | base
    steps: int = 200  # parameter updates per system and seed
    rows: int = 8  # rows (documents read in parallel) per update, the same for every system
    row_tokens: int | None = None  # tokens per row per update (None: the longest segment; a multiple of each)
    seeds: int = 1  # each system trains with seeds 0 .. seeds-1
    # systems that read a row in one pass; None: those whose every layer is built for it (`whole_row_systems`)
    whole_row: list[str] | None = None
    param_tolerance: float = 0.10  # parameter counts "equal" when max / min - 1 <= this
    data: str | None = None  # corpus spec (None: the built-in stdlib code corpus)
    eval_docs: int = 8
    eval_bytes: int = 16 * 1024  # per held-out document (None/0: whole documents)
    lr: float = 2e-3
    min_lr: float | None = None  # learning rate at the end of the cosine decay (None: the trainer's default)
    warmup_steps: int = 20
    # per-system config changes, {system: {dotted key: value}}, e.g. a parameter-free compression so that the
    # compressive model has the parameters of the others (`longrange repro long-context`)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    device: str = "cpu"  # cpu, cuda, cuda:N (resolved by the command from --device)
    # auto | fp32 | bf16 | fp16, training and evaluation alike; auto is decided per system (its width and kind:
    # `resolve_precision`) when its run starts, recorded by the run, and kept when the run is resumed
    precision: str = "auto"
    compile: bool = False
    ablations: bool = True
    command: str = ""  # the command line that produced the report (recorded verbatim)

    def __post_init__(self) -> None:
        for key in ("steps", "rows", "seeds"):
            if getattr(self, key) < 1:
                raise ValueError(f"compare {key}={getattr(self, key)} must be >= 1")
        if self.row_tokens is not None and self.row_tokens < 1:
            raise ValueError(f"compare row_tokens={self.row_tokens} must be >= 1 (or left out for the default)")
        if self.param_tolerance < 0:
            raise ValueError(f"compare param_tolerance={self.param_tolerance} must be >= 0")
        if self.whole_row is None:
            self.whole_row = whole_row_systems(self.size)


def memory_key(cfg: ModelConfig) -> str | None:
    """The config key whose value is the model's long-range memory size (None: no memory).

    Read from the registry: each mechanism's ``memory_size_key``; when the layers hold several memories, the
    one of the highest ``memory_rank`` (a kNN layer among XL layers), and among equals the upper layer's.
    """
    registered = sections()
    ranked = [
        (registered[kind].memory_rank, depth, f"{kind}.{registered[kind].memory_size_key}")
        for depth, kind in enumerate(cfg.layers)
        if kind in registered and registered[kind].memory_size_key
    ]
    return max(ranked)[2] if ranked else None


def systems(size: str) -> list[str]:
    """Systems that have a preset of `size` (``<system>-<size>``): the six, then any registered later."""
    names = [name.removesuffix(f"-{size}") for name in preset_names() if name.endswith(f"-{size}")]
    return [*[s for s in SYSTEMS if s in names], *sorted(set(names) - set(SYSTEMS))]


def whole_row_systems(size: str) -> list[str]:
    """Systems of `size` built to read a long sequence in one pass: every layer's mechanism registered
    ``whole_row`` (Reformer: LSH and local layers; Luna). They read a comparison's whole row as one segment."""
    registered = sections()
    return [
        system
        for system in systems(size)
        if all(kind in registered and registered[kind].whole_row for kind in PRESETS[f"{system}-{size}"]["layers"])
    ]


def _get_dotted(cfg: ModelConfig, key: str) -> Any:
    kind, name = key.split(".")
    return getattr(cfg.section(kind), name)


def unregistered(cfg: ModelConfig) -> list[str]:
    return sorted({k for k in cfg.layers if k not in REGISTRY})


def reach(cfg: ModelConfig) -> tuple[int, str]:
    """(tokens of context a prediction can see at most, the formula), within its document.

    A segment of T tokens sees itself; each layer with memory adds the span its registration declares
    (``reach``: XL ``mem_len``, Compressive ``mem_len + cmem_len x rate``, kNN the larger of its memory and its
    cache), and the spans of the layers add up through the stack (Dai et al. 2019: O(N x L)). A stateful
    mechanism that declares no reach adds its registered memory size (stated as an estimate).
    """
    registered = sections()
    spans = [span for kind in cfg.layers if (span := registered[kind].span(cfg.section(kind))) is not None]
    if not spans:
        return cfg.segment_len, "segment (no memory)"
    terms: dict[str, int] = {}
    for _, name in spans:
        terms[name] = terms.get(name, 0) + 1
    formula = " + ".join(f"{n} x {name}" if n > 1 else name for name, n in terms.items())
    return cfg.segment_len + sum(v for v, _ in spans), f"segment + {formula}"


def plan(cc: CompareConfig) -> tuple[dict[str, ModelConfig], dict[str, str], int]:
    """(configs of runnable systems, {skipped system: reason}, tokens per row per update).

    The configs of ``whole_row`` systems have ``segment_len`` set to the row's tokens (one pass per row).
    """
    cfgs, skipped = {}, {}
    for system in cc.systems:
        if system not in systems(cc.size):
            raise ValueError(f"unknown system {system!r}; choose from {systems(cc.size)}")
        cfg = ModelConfig.from_name(f"{system}-{cc.size}", **cc.overrides.get(system, {}))
        missing = unregistered(cfg)
        if missing:
            skipped[system] = f"attention kind(s) {missing} not registered in longrange.attention.REGISTRY"
        else:
            cfgs[system] = cfg
    row_tokens = cc.row_tokens or max([c.segment_len for c in cfgs.values()] or [1])
    for system, cfg in cfgs.items():
        if system in cc.whole_row:
            cfgs[system] = cfg = cfg.replace(segment_len=row_tokens)
        if row_tokens % cfg.segment_len:
            raise ValueError(
                f"compare row_tokens={row_tokens} is not a multiple of {system}'s segment_len={cfg.segment_len}; "
                f"choose a multiple of every system's segment ({sorted({c.segment_len for c in cfgs.values()})})"
            )
    return cfgs, skipped, row_tokens


def _prepared(spec: str | None) -> Path | None:
    """The directory of a corpus written by `longrange data prepare` (it has its own split), or None."""
    return Path(spec) if spec and (Path(spec) / "manifest.json").is_file() else None


def _train_spec(spec: str | None) -> str | None:
    prepared = _prepared(spec)
    return str(prepared / "train") if prepared else spec


def _eval_documents(cc: CompareConfig) -> list[bytes]:
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


def run_system(cc: CompareConfig, system: str, cfg: ModelConfig, row_tokens: int, run_dir: Path, seed: int = 0) -> dict:
    """Train (or resume) one system with one seed, evaluate it (and, for seed 0, its memory ablations);
    write result.json + done."""
    if cc.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    accumulate = row_tokens // cfg.segment_len  # the row's segments, in order, in one update
    tc = TrainConfig(
        steps=cc.steps,
        batch_size=cc.rows,
        segment_len=cfg.segment_len,
        accumulate=accumulate,
        lr=cc.lr,
        **({"min_lr": cc.min_lr} if cc.min_lr is not None else {}),
        warmup_steps=min(cc.warmup_steps, max(cc.steps // 5, 1)),
        checkpoint_every=max(cc.steps // 4, 1),
        log_every=max(min(10, cc.steps // 10), 1),
        seed=seed,
        device=cc.device,
        precision=cc.precision,
        compile=cc.compile,
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
    precision = read_run(run_dir)[1].precision  # what the run trained in (auto decided, or kept on resume)
    result = evaluate(model, docs, batch_size=min(4, len(docs)), device=cc.device, precision=precision)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    speeds = [r["tokens_per_s"] for r in records if "tokens_per_s" in r]
    result.update(
        system=system,
        preset=cfg.name,
        seed=seed,
        parameters=sum(p.numel() for p in model.parameters()),
        rows=cc.rows,
        row_tokens=row_tokens,
        segment_len=cfg.segment_len,
        accumulate=accumulate,
        stateful=cfg.stateful,
        reach=reach(cfg)[0],
        reach_formula=reach(cfg)[1],
        train_tokens=cc.rows * row_tokens * cc.steps,
        tokens_per_s=sum(speeds) / len(speeds) if speeds else float("nan"),
        train_wall_s=train_wall,
        peak_memory_mb=_peak_memory_mb(cc.device),
        ablations=_ablations(cc, run_dir, cfg, docs, precision) if cc.ablations and seed == 0 else [],
    )
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    (run_dir / "done").write_text("ok\n")
    return result


def aggregate(runs: list[dict]) -> dict:
    """One system's row from its runs (one per seed): seed 0's fields, then mean / std / min / max of the
    held-out bpb, mean throughput and wall time, the largest peak memory, loss by position averaged."""
    bpbs = [r["bpb"] for r in runs]
    mean = sum(bpbs) / len(bpbs)
    std = (sum((b - mean) ** 2 for b in bpbs) / (len(bpbs) - 1)) ** 0.5 if len(bpbs) > 1 else 0.0
    row = dict(runs[0])
    row.pop("seed", None)
    row.update(
        bpb=mean,
        bpb_std=std,
        bpb_min=min(bpbs),
        bpb_max=max(bpbs),
        seeds=[r["seed"] for r in runs],
        seed_bpb=bpbs,
        tokens_per_s=sum(r["tokens_per_s"] for r in runs) / len(runs),
        train_wall_s=sum(r["train_wall_s"] for r in runs) / len(runs),
        peak_memory_mb=max(r["peak_memory_mb"] for r in runs),
    )
    buckets = [r.get("by_position") or [] for r in runs]
    if all(len(b) == len(buckets[0]) for b in buckets) and buckets[0]:  # the same documents: the same buckets
        row["by_position"] = [
            {**b0, "bpb": sum(b[i]["bpb"] for b in buckets) / len(buckets)} for i, b0 in enumerate(buckets[0])
        ]
    return row


def _ablations(cc: CompareConfig, run_dir: Path, cfg: ModelConfig, docs: list[bytes], precision: str) -> list[dict]:
    """The same checkpoint evaluated with its memory off, halved and doubled (in the run's `precision`)."""
    key = memory_key(cfg)
    if key is None:
        return []
    size = _get_dotted(cfg, key)
    rows = []
    for label, value in (("off", 0), ("half", size // 2), ("trained", size), ("double", size * 2)):
        try:
            model = load(run_dir, **{key: value}).to(cc.device)
            bpb = evaluate(model, docs, batch_size=min(4, len(docs)), device=cc.device, precision=precision)["bpb"]
            rows.append({"variant": label, "key": key, "value": value, "bpb": bpb})
        except (ValueError, RuntimeError) as err:  # e.g. a mechanism that refuses a zero-size memory
            rows.append({"variant": label, "key": key, "value": value, "bpb": None, "note": str(err)[:120]})
    return rows


def _child(cc_dict: dict, system: str, row_tokens: int, run_dir: str, seed: int) -> None:
    cc = CompareConfig(**cc_dict)
    cfgs, _, _ = plan(CompareConfig(**{**cc_dict, "systems": [system], "row_tokens": row_tokens}))
    try:
        run_system(cc, system, cfgs[system], row_tokens, Path(run_dir), seed)
    except TrainingInterrupted as stop:  # its checkpoint is written: the comparison continues from it when rerun
        log.warning("%s seed %d: %s", system, seed, stop)
        sys.exit(stop.exit_code)


class CompareInterrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM while a run trained in its own process: that process was stopped first (its trainer writes
    a checkpoint), so rerunning the comparison continues it. `exit_code` follows the shell's 128 + signal."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}; rerun the same command to continue")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _run_in_child(target, args: tuple) -> int:
    """Run ``target(*args)`` in a spawned process and return its exit code.

    A SIGTERM sent to this process is passed on to the child (whose trainer finishes its step, writes a checkpoint
    and exits) and this process waits for it, then raises `CompareInterrupted`: killing the comparison never leaves
    its training child running. SIGINT is not passed on: Ctrl-C reaches the whole foreground process group, so the
    child has it already (a second one would make its trainer abort without a checkpoint); this process waits for
    the child likewise. Whatever else stops the wait, the child is terminated, not left behind."""
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args)
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        received.append(signum)
        if signum == signal.SIGTERM and proc.pid is not None and proc.exitcode is None:
            os.kill(proc.pid, signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        proc.start()
        if signal.SIGTERM in received:  # arrived before the child had a pid
            os.kill(proc.pid, signal.SIGTERM)
        proc.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if proc.pid is not None and proc.is_alive():
            proc.terminate()
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
    if received:
        raise CompareInterrupted(received[0])
    return proc.exitcode


# settings that leave a finished run's result as it is: which systems and how many seeds run (each run, one system
# and one seed, is trained and scored on its own), the report's size tolerance, the command line recorded verbatim
REPORT_ONLY_KEYS = ("systems", "seeds", "param_tolerance", "command")


def check_earlier_settings(out: Path, record: dict) -> None:
    """Refuse (ValueError) to reuse the runs in `out` when the comparison that trained them (its ``compare.json``)
    had other settings than `record`: their results would be reported under settings they were not trained with.
    Settings in `REPORT_ONLY_KEYS` may differ; a key one of the two records lacks (an older version's) is not
    compared."""
    earlier_file, runs = out / "compare.json", out / "runs"
    if not earlier_file.is_file() or not (runs.is_dir() and any(runs.iterdir())):
        return
    try:
        earlier = json.loads(earlier_file.read_bytes())
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{str(earlier_file)!r} is not valid JSON ({err}); was it cut short or edited?") from err
    if not isinstance(earlier, dict):
        raise ValueError(f"{str(earlier_file)!r} is not a comparison's record (a JSON object)")
    now = json.loads(json.dumps(record))  # as it is recorded: tuples as lists
    changed = [
        f"{key} {earlier[key]!r} -> {value!r}"
        for key, value in now.items()
        if key in earlier and key not in REPORT_ONLY_KEYS and earlier[key] != value
    ]
    if changed:
        raise ValueError(
            f"{str(out)!r} holds runs of a comparison with other settings ({'; '.join(changed)}), which would be "
            f"reported as results of these; use another --out, or delete {str(runs)!r} to train them again"
        )


def compare(cc: CompareConfig, out: str | Path, *, isolate: bool = True) -> Path:
    """Run the comparison into `out` (resumable) and write report.md / report.html; return `out`.

    With `isolate` each run (system, seed) trains in its own (spawned) process, so peak memory is per run.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs, skipped, row_tokens = plan(cc)
    layout = {"rows": cc.rows, "row_tokens": row_tokens, "tokens_per_step": cc.rows * row_tokens}
    record = {**asdict(cc), **layout}
    check_earlier_settings(out, record)
    (out / "compare.json").write_text(json.dumps(record, indent=1))
    results = {}
    for system, cfg in cfgs.items():
        runs = []
        for seed in range(cc.seeds):
            run_dir = out / "runs" / system / f"seed-{seed}"
            if (run_dir / "done").exists():
                log.info("%s seed %d: finished earlier, reusing %s", system, seed, run_dir)
            else:
                log.info(
                    "%s seed %d: training %s (%d rows x %d tokens per update, %d segment(s) of %d per row)",
                    *(system, seed, cfg.name, cc.rows, row_tokens, row_tokens // cfg.segment_len, cfg.segment_len),
                )
                run_dir.mkdir(parents=True, exist_ok=True)
                if isolate:
                    code = _run_in_child(_child, (asdict(cc), system, row_tokens, str(run_dir), seed))
                    if code != 0:
                        skipped[system] = f"seed {seed} failed with exit code {code} (see the log above)"
                        break
                else:
                    run_system(cc, system, cfg, row_tokens, run_dir, seed)
            runs.append(json.loads((run_dir / "result.json").read_text()))
        if system in skipped:
            continue
        results[system] = aggregate(runs)
        (out / "runs" / system / "result.json").write_text(json.dumps(results[system], indent=1))
        (out / "runs" / system / "done").write_text("ok\n")
    write_report(out, cc, results, skipped, row_tokens, cfgs)
    write_html(out)
    return out
