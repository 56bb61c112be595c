"""The Markdown report of a `longrange compare` run (tables, plots, command and configs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from longrange.report.plots import loss_by_position, training_curves


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    """A Markdown table of `rows`; `columns` are (key, header) pairs; floats get 3-4 digits."""

    def cell(value: Any, key: str) -> str:
        if value is None:
            return "" if key == "note" else "n/a"
        if isinstance(value, float):
            return f"{value:.4f}" if abs(value) < 10 else f"{value:,.0f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(k), k) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


SUMMARY_COLUMNS = [
    ("system", "system"),
    ("parameters", "parameters"),
    ("bpb_cell", "held-out bpb"),
    ("tokens_per_s", "train tokens/s"),
    ("peak_memory_mb", "peak memory (MiB)"),
    ("train_wall_s", "train wall (s)"),
    ("segment_len", "segment"),
    ("reach", "reach (tokens)"),
]

LAYOUT_COLUMNS = [
    ("system", "system"),
    ("rows", "rows"),
    ("row_tokens", "tokens per row per update"),
    ("segment_len", "segment"),
    ("accumulate", "segments per row per update"),
    ("memory", "memory carried across segments"),
    ("reach", "reach (tokens)"),
    ("reach_formula", "reach ="),
]


def bpb_cell(r: dict) -> str:
    """``mean`` for one seed; ``mean ± std [min, max]`` for several."""
    if len(r.get("seed_bpb", [])) < 2:
        return f"{r['bpb']:.4f}"
    return f"{r['bpb']:.4f} ± {r['bpb_std']:.4f} [{r['bpb_min']:.4f}, {r['bpb_max']:.4f}]"


def summary_table(results: dict[str, dict]) -> str:
    return table([{**r, "bpb_cell": bpb_cell(r)} for r in results.values()], SUMMARY_COLUMNS)


def separations(results: dict[str, dict]) -> list[dict]:
    """Every pair of systems, better first: whether the difference of mean bpb is larger than the spread.

    Larger than the spread means the seeds' min-max ranges do not overlap (every seed of the better system
    beats every seed of the other); with one seed there is no spread and no pair is called separated.
    """
    ranked = sorted(results.values(), key=lambda r: r["bpb"])
    pairs = []
    for i, a in enumerate(ranked):
        for b in ranked[i + 1 :]:
            seeds = min(len(a.get("seed_bpb", [a["bpb"]])), len(b.get("seed_bpb", [b["bpb"]])))
            pairs.append(
                {
                    "better": a["system"],
                    "worse": b["system"],
                    "difference": b["bpb"] - a["bpb"],
                    "separated": seeds > 1 and a["bpb_max"] < b["bpb_min"],
                }
            )
    return pairs


def size_check(results: dict[str, dict], tolerance: float) -> dict:
    """Whether the parameter counts are within `tolerance` (max / min - 1) of each other."""
    counts = {s: r["parameters"] for s, r in results.items()}
    small, large = min(counts, key=counts.get), max(counts, key=counts.get)
    ratio = counts[large] / counts[small] - 1
    return {"smallest": small, "largest": large, "ratio": ratio, "tolerance": tolerance, "within": ratio <= tolerance}


def _data_section(cc: Any, results: dict[str, dict], row_tokens: int) -> list[str]:
    seeds = getattr(cc, "seeds", 1)
    rows = [{**r, "memory": "yes" if r.get("stateful") else "no"} for r in results.values()]
    one_pass = [s for s in results if s in getattr(cc, "whole_row", [])]
    whole = ", ".join(f"`{s}`" for s in one_pass) if one_pass else "No system"
    return [
        "## Data: equal rows and tokens per update",
        "",
        f"Every system reads the same {cc.rows} rows x {row_tokens:,} tokens per row per update "
        f"({cc.rows * row_tokens:,} tokens per update, {cc.rows * row_tokens * cc.steps:,} per run): row g reads "
        "the same documents in the same order for every system (the order depends on the seed and the row), so "
        "for a given seed all systems train on the same bytes at the same update. Each system cuts a row's "
        "tokens into its own segments, read in order within the update; a system with memory carries it from "
        "one segment of the row to the next and across updates, one without sees each segment alone. "
        f"{whole} read{'s' if len(one_pass) == 1 else ''} the whole row in one pass (built for long sequences). "
        "Reach: the most tokens of context a prediction can see (within its document). The last segment of "
        "each document is padded, so a longer segment trains on slightly fewer real tokens.",
        "",
        table(rows, LAYOUT_COLUMNS),
        "",
        f"Seeds: {seeds} per system (0 .. {seeds - 1}); a seed sets the initial weights and the document order.",
    ]


def _spread_section(results: dict[str, dict], seeds: int) -> tuple[list[str], list[dict]]:
    pairs = separations(results)
    parts = ["", "## Differences and the spread", ""]
    if seeds < 2:
        parts.append(
            "_One seed per system: no spread is measured, so no difference below is known to exceed the noise "
            "(run with `--seeds 2` or more)._"
        )
    else:
        parts.append(
            f"A difference is larger than the spread when the {seeds} seeds' min-max ranges of held-out bpb do "
            "not overlap."
        )
    parts.append("")
    for p in pairs:
        verdict = "larger than the spread" if p["separated"] else "within the spread"
        if seeds < 2:
            verdict = "not tested (one seed)"
        parts.append(f"- `{p['better']}` better than `{p['worse']}` by {p['difference']:.4f} bpb: {verdict}")
    return parts, pairs


def _size_section(results: dict[str, dict], tolerance: float) -> tuple[list[str], dict]:
    check = size_check(results, tolerance)
    small, large = check["smallest"], check["largest"]
    head = (
        f"Parameter counts run from {results[small]['parameters']:,} (`{small}`) to "
        f"{results[large]['parameters']:,} (`{large}`), {check['ratio']:.1%} apart: "
    )
    if check["within"]:
        verdict = f"within the {tolerance:.0%} tolerance, the systems are of equal size."
    else:
        verdict = f"more than the {tolerance:.0%} tolerance: the sizes differ (the table shows each count)."
    return ["", "## Size", "", head + verdict], check


def write_report(out: Path, cc: Any, results: dict[str, dict], skipped: dict[str, str], row_tokens: int, cfgs) -> Path:
    """Write ``out/report.md``, ``summary.md``, ``results.json``, ``report.json`` and the PNG plots it links."""
    runs = {s: out / "runs" / s / "seed-0" for s in results}
    seeds = getattr(cc, "seeds", 1)
    parts = [
        "# Comparison of long-range systems",
        "",
        f"Corpus `{cc.data or 'stdlib'}`, size `{cc.size}`, {cc.steps} updates per run, {seeds} seed(s) per system, "
        f"evaluated on the first {cc.eval_bytes or 'all'} bytes of {cc.eval_docs} held-out documents, state carried "
        "across segments.",
        "",
        "## Results",
        "",
        summary_table(results) if results else "_no system finished_",
        "",
        "Held-out bpb: mean over seeds (± sample standard deviation [min, max] with several seeds). "
        "Peak memory: per-run process peak RSS on CPU (each run in its own process), "
        "`torch.cuda.max_memory_allocated` on GPU; the largest over seeds. Tokens/s: mean training throughput.",
    ]
    report_json: dict[str, Any] = {
        "rows": cc.rows,
        "row_tokens": row_tokens,
        "tokens_per_update": cc.rows * row_tokens,
        "steps": cc.steps,
        "seeds": seeds,
        "systems": {
            s: {k: r.get(k) for k in ("segment_len", "accumulate", "stateful", "reach", "parameters", "bpb")}
            for s, r in results.items()
        },
    }
    if results:
        parts += ["", *_data_section(cc, results, row_tokens)]
        spread, report_json["pairs"] = _spread_section(results, seeds)
        size, report_json["size"] = _size_section(results, getattr(cc, "param_tolerance", 0.1))
        parts += spread + size
    if skipped:
        parts += ["", "### Skipped", ""] + [f"- `{s}`: {why}" for s, why in skipped.items()]
    if results:
        training_curves(runs, out / "training_curves.png")
        loss_by_position(results, out / "loss_by_position.png")
        parts += [
            "",
            "## Training curves",
            "",
            "Seed 0 of each system; the x axis counts target tokens (padding at document ends excluded).",
            "",
            "![training curves](training_curves.png)",
            "",
            "## Loss by position in the document",
            "",
            "Held-out bits per byte of targets at byte offsets [2^i, 2^(i+1)) of their document, mean over seeds. "
            "A curve that keeps falling with position means the model uses long context.",
            "",
            "![loss by position](loss_by_position.png)",
        ]
        ablation_rows = [{"system": s, **row} for s, r in results.items() for row in r.get("ablations", [])]
        parts += ["", "## Memory ablations", ""]
        if ablation_rows:
            parts += [
                "Seed 0's trained checkpoint evaluated again with its memory size changed (no retraining).",
                "",
                table(
                    ablation_rows,
                    [
                        ("system", "system"),
                        ("key", "config key"),
                        ("variant", "memory"),
                        ("value", "value"),
                        ("bpb", "held-out bpb"),
                        ("note", "note"),
                    ],
                ),
            ]
        else:
            parts += ["_no system with memory in this comparison_"]
    parts += ["", "## Reproduce", "", "```", cc.command or "(called from Python)", "```", "", "### Configs", ""]
    for system, cfg in cfgs.items():
        parts += [f"`{system}` (`{cfg.name}`):", "", "```json", json.dumps(cfg.to_dict(), sort_keys=True), "```", ""]
    (out / "summary.md").write_text(summary_table(results) + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.json").write_text(json.dumps(report_json, indent=1))
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
