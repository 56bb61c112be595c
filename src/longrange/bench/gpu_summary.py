"""One GPU run's outputs as one file, and the GPU rows of benchmarks/README.md written from those files.

``python -m longrange.bench.gpu_summary collect OUT [--card NAME] [--into DIR]`` reads what
`benchmarks/gpu_run.sh` left in OUT and writes OUT/summary.json (and DIR/summary.json, e.g.
benchmarks/results/gpu-h100); ``python -m longrange.bench.gpu_summary readme [--results DIR] [--readme FILE]``
rewrites the block between `BEGIN` and `END` in the README from every results/gpu-*/summary.json.

What is read (each part may be missing: a stage cut by its time limit leaves what it wrote, and the summary
says which stages ran, failed or timed out):

    env.json              device, torch, CUDA, bf16 support, memory (written by the script's env stage)
    stages.jsonl          one line per stage: {"stage", "exit", "seconds", "limit"} (exit 124 or 137: timed out)
    tests.xml             pytest's JUnit XML: counts and the failed tests' ids
    sweep/train.json      `bench train` with a batch-size sweep: each system's fastest point
    compile/train.json    the same with --compile
    profile/*.json        `bench train --profile`: the kernels that take the most time
    attention/results.json, else attention/rows.jsonl      `bench attention`
    knn/knn.json          `bench knn`: the exact search and the kNN layer's step overhead
    train/steps.json, train/eval-first.json, train/eval-resumed.json, train/generate.txt, train/metrics.jsonl
                          the timed training run, its evaluation, --resume, evaluation again, generation

summary.json (``SCHEMA`` 1):

    {"schema": 1, "card": "h100", "env": {...}, "stages": {NAME: {"exit", "seconds", "limit", "status"}},
     "tests": {"passed", "failed", "skipped", "errors", "failures": [ids], "messages": {id: text}} | null,
     "train_throughput": [ROW], "train_throughput_compiled": [ROW],
       ROW = {"preset", "precision", "compile", "fused_adamw", "batch_size", "tokens_per_s", "mfu",
              "ceiling_tflops", "ceiling_dtype", "peak_mib", "batch_sizes_tried", "sweep_stopped"}
     "profile": {PRESET: [{"name", "share"}, ...]},
     "attention": [{"variant", "length", "precision", "time_s", "peak_mib", "status"}],
     "knn": {"search": [{"size", "backend", "precision", "search_s", "recall"}],
             "layer": [{"memory_size", "precision", "step_s", "ratio"}]} | null,
     "train_run": {"preset", "seconds", "steps", "tokens_per_s", "eval_bpb", "resumed_steps",
                   "eval_bpb_resumed", "generated_chars"} | null,
     "distributed": {STAGE: STATUS} for the dist-* stages}
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

SCHEMA = 1
BEGIN = "<!-- gpu-rows:begin (written by `python -m longrange.bench.gpu_summary readme`; edits are lost) -->"
END = "<!-- gpu-rows:end -->"
MESSAGE_CHARS = 500  # of each failed test's message (a graph break's names its frame and reason first)
TIMED_OUT = (124, 137)  # `timeout`'s exit codes: the limit was reached (137: killed after the grace period)


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _jsonl(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            continue
    return rows


def card_name(device: str) -> str:
    """A short folder name for a device: "NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA A100-SXM4-40GB" -> "a100";
    "cpu" for the CPU (a dry run)."""
    if not device or device.lower().startswith("cpu"):
        return "cpu"
    found = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Z]?)\b", device.upper())
    return found.group(1).lower() if found else re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def stages(out: Path) -> dict[str, dict]:
    result = {}
    for row in _jsonl(out / "stages.jsonl"):
        code = int(row.get("exit", -1))
        status = "ok" if code == 0 else "timed out" if code in TIMED_OUT else "failed"
        if code == 0 and row.get("skipped"):
            status = f"skipped: {row['skipped']}"
        result[row["stage"]] = {
            "exit": code,
            "seconds": row.get("seconds"),
            "limit": row.get("limit"),
            "status": status,
        }
    return result


def tests(out: Path) -> dict | None:
    try:
        root = ET.parse(out / "tests.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    failures, messages = [], {}
    for case in root.iter("testcase"):
        ident = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            counts["failed" if problem.tag == "failure" else "errors"] += 1
            failures.append(ident)
            messages[ident] = (problem.get("message") or "")[:MESSAGE_CHARS]
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return {**counts, "failures": failures, "messages": messages}


def throughput(path: Path) -> list[dict]:
    data = _json(path) or {}
    keys = ("preset", "precision", "compile", "fused_adamw", "batch_size", "tokens_per_s", "mfu", "ceiling_dtype")
    keys += ("peak_mib", "batch_sizes_tried", "sweep_stopped")
    rows = []
    for row in data.get("rows", []):
        rows.append({**{k: row.get(k) for k in keys}, "ceiling_tflops": row.get("ceiling_gflops", 0) / 1e3})
    return rows


def profiles(folder: Path, top: int = 5) -> dict[str, list[dict]]:
    result = {}
    for path in sorted(folder.glob("*.json")):
        data = _json(path) or {}
        rows = data.get("rows", [])[:top]
        result[path.stem] = [{"name": r["name"], "share": r["share"]} for r in rows]
    return result


def attention(folder: Path) -> list[dict]:
    data = _json(folder / "results.json")
    rows = data.get("rows", []) if isinstance(data, dict) else data if isinstance(data, list) else None
    if rows is None:
        rows = _jsonl(folder / "rows.jsonl")
    keys = ("variant", "length", "precision", "time_s", "peak_mib", "status")
    return [{k: row.get(k) for k in keys} for row in rows]


def knn(folder: Path) -> dict | None:
    data = _json(folder / "knn.json")
    if data is None:
        return None
    search = [
        {k: r.get(k) for k in ("size", "backend", "precision", "search_s", "recall")} for r in data.get("search", [])
    ]
    layer = [{k: r.get(k) for k in ("memory_size", "precision", "step_s", "ratio")} for r in data.get("step", [])]
    return {"search": search, "layer": layer}


def train_run(folder: Path) -> dict | None:
    steps = _json(folder / "steps.json")
    if steps is None:
        return None
    speeds = [r["tokens_per_s"] for r in _jsonl(folder / "metrics.jsonl") if "tokens_per_s" in r]
    first, resumed = _json(folder / "eval-first.json") or {}, _json(folder / "eval-resumed.json") or {}
    try:
        generated = len((folder / "generate.txt").read_text())
    except OSError:
        generated = None
    return {
        "preset": steps.get("preset"),
        "seconds": steps.get("seconds"),
        "steps": steps.get("first"),
        "tokens_per_s": sorted(speeds)[len(speeds) // 2] if speeds else None,  # the median logged window
        "eval_bpb": first.get("bpb"),
        "resumed_steps": steps.get("resumed"),
        "eval_bpb_resumed": resumed.get("bpb"),
        "generated_chars": generated,
    }


def collect(out: Path, card: str | None = None) -> dict:
    """The summary of one run's folder (module docstring)."""
    env = _json(out / "env.json") or {}
    ran = stages(out)
    return {
        "schema": SCHEMA,
        "card": card or card_name(env.get("device", "")),
        "env": env,
        "stages": ran,
        "tests": tests(out),
        "train_throughput": throughput(out / "sweep" / "train.json"),
        "train_throughput_compiled": throughput(out / "compile" / "train.json"),
        "profile": profiles(out / "profile"),
        "attention": attention(out / "attention"),
        "knn": knn(out / "knn"),
        "train_run": train_run(out / "train"),
        "distributed": {name: s["status"] for name, s in ran.items() if name.startswith("dist-")},
    }


def _length(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def _cell(value, fmt: str, none: str = "-") -> str:
    return none if value is None else format(value, fmt)


def readme_rows(summary: dict, folder: str) -> list[str]:
    """The README's lines for one card's summary."""
    env = summary.get("env", {})
    lines = [
        f"#### {env.get('device', summary['card'])} (torch {env.get('torch', '?')}, CUDA {env.get('cuda', '?')}, "
        f"`{folder}/summary.json`)",
        "",
    ]
    done = summary.get("stages", {})
    if done:
        lines.append(
            "Stages: "
            + ", ".join(f"{name} {s['status']} ({_cell(s.get('seconds'), '.0f')} s)" for name, s in done.items())
            + "."
        )
        lines.append("")
    t = summary.get("tests")
    if t:
        failed = "" if not t["failures"] else ": " + ", ".join(f"`{f}`" for f in t["failures"])
        lines += [
            f"Tests on the GPU: {t['passed']} passed, {t['failed']} failed, {t['errors']} errors, "
            f"{t['skipped']} skipped{failed}.",
            "",
        ]
    rows = summary.get("train_throughput") or []
    if rows:
        compiled = {r["preset"]: r for r in summary.get("train_throughput_compiled") or []}
        lines += [
            "| system | precision | best batch (tried) | tokens/s | MFU | ceiling TFLOP/s | peak MiB "
            "| --compile tokens/s |",
            "|---|---|---|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            c = compiled.get(r["preset"])
            tried = ", ".join(str(b) for b in r.get("batch_sizes_tried") or [])
            lines.append(
                f"| {r['preset']} | {r['precision']}{' fused AdamW' if r.get('fused_adamw') else ''} | "
                f"{r['batch_size']} ({tried}; {r.get('sweep_stopped') or '-'}) | {r['tokens_per_s']:,.0f} | "
                f"{r['mfu']:.0%} | {r['ceiling_tflops']:.3g} {r.get('ceiling_dtype') or ''} | "
                f"{_cell(r.get('peak_mib'), ',.0f')} | "
                f"{'-' if c is None else format(c['tokens_per_s'], ',.0f') + ' at ' + str(c['batch_size'])} |"
            )
        lines.append("")
    att = summary.get("attention") or []
    if att:
        lengths = sorted({r["length"] for r in att})
        precision = next((r["precision"] for r in att if r.get("precision")), "?")
        lines += [
            f"| attention ({precision}, forward + backward) | " + " | ".join(_length(n) for n in lengths) + " |",
            "|---|" + "---|" * len(lengths),
        ]
        for variant in dict.fromkeys(r["variant"] for r in att):
            cells = []
            for n in lengths:
                r = next((r for r in att if r["variant"] == variant and r["length"] == n), None)
                if r is None:
                    cells.append("-")
                elif r["status"] == "ok":
                    cells.append(f"{r['time_s']:.3f} s, {r['peak_mib']:,.0f} MiB")
                else:
                    cells.append(r["status"])
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        lines.append("")
    k = summary.get("knn")
    if k:
        parts = [
            f"exact search over {r['size']:,} keys ({r['precision']}): {r['search_s'] * 1e3:.1f} ms, "
            f"recall {r['recall']:.3f}"
            for r in k["search"]
        ]
        parts += [
            f"kNN layer at M = {r['memory_size']:,}: {r['step_s']:.3f} s per step, x{r['ratio']:.2f}"
            for r in k["layer"]
            if r["memory_size"]
        ]
        lines += ["kNN: " + "; ".join(parts) + ".", ""]
    run = summary.get("train_run")
    if run:
        lines += [
            f"Training run: {run['preset']} for {_cell(run['seconds'], '.0f')} s: {run['steps']} steps, "
            f"{_cell(run['tokens_per_s'], ',.0f')} tokens/s, {_cell(run['eval_bpb'], '.4f')} bits per byte; "
            f"--resume to step {run['resumed_steps']}: {_cell(run['eval_bpb_resumed'], '.4f')}; generate: "
            f"{_cell(run['generated_chars'], 'd', 'no output')} characters.",
            "",
        ]
    dist = summary.get("distributed") or {}
    if dist:
        lines += ["torchrun: " + ", ".join(f"{name} {status}" for name, status in dist.items()) + ".", ""]
    return lines


def readme_block(results: Path) -> str:
    """The README block from every ``gpu-*/summary.json`` under `results` (sorted by folder)."""
    lines = [BEGIN, ""]
    found = sorted(results.glob("gpu-*/summary.json"))
    for path in found:
        summary = _json(path)
        if summary is None or summary.get("schema") != SCHEMA:
            continue
        lines += readme_rows(summary, f"results/{path.parent.name}")
    if not found:
        lines += ["No `results/gpu-*/summary.json` yet: `benchmarks/gpu_run.sh` writes one.", ""]
    return "\n".join([*lines, END])


def update_readme(readme: Path, results: Path) -> bool:
    """Replace the block between `BEGIN` and `END` in `readme`; returns whether the file changed."""
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{readme}: no GPU block ({BEGIN!r} ... {END!r}) to rewrite")
    new = text[:start] + readme_block(results) + text[end + len(END) :]
    if new != text:
        readme.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m longrange.bench.gpu_summary", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="OUT/summary.json from a gpu_run.sh output folder")
    c.add_argument("out", type=Path)
    c.add_argument("--card", help="short name of the card (default: from the device name, e.g. h100)")
    c.add_argument("--into", type=Path, help="also write DIR/summary.json (e.g. benchmarks/results/gpu-h100)")
    r = sub.add_parser("readme", help="rewrite the README's GPU rows from results/gpu-*/summary.json")
    r.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    r.add_argument("--readme", type=Path, default=Path("benchmarks/README.md"))
    args = parser.parse_args(argv)
    try:
        if args.command == "collect":
            if not args.out.is_dir():
                raise ValueError(f"{args.out} is not a folder")
            text = json.dumps(collect(args.out, args.card), indent=1)
            for folder in [args.out, *([args.into] if args.into else [])]:
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "summary.json").write_text(text + "\n")
                print(f"-> {folder / 'summary.json'}")
        else:
            changed = update_readme(args.readme, args.results)
            print(f"{args.readme}: {'GPU rows rewritten' if changed else 'unchanged'}")
    except (OSError, ValueError) as err:
        print(f"gpu_summary {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
