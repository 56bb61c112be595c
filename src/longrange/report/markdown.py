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
    ("bpb", "held-out bpb"),
    ("tokens_per_s", "train tokens/s"),
    ("peak_memory_mb", "peak memory (MiB)"),
    ("train_wall_s", "train wall (s)"),
    ("segment_len", "segment"),
    ("batch_size", "rows/step"),
]


def summary_table(results: dict[str, dict]) -> str:
    return table(list(results.values()), SUMMARY_COLUMNS)


def write_report(out: Path, cc: Any, results: dict[str, dict], skipped: dict[str, str], tokens: int, cfgs) -> Path:
    """Write ``out/report.md``, ``summary.md``, ``results.json`` and the PNG plots it links."""
    runs = {s: out / "runs" / s for s in results}
    parts = [
        "# Comparison of long-range systems",
        "",
        f"Corpus `{cc.data or 'stdlib'}`, size `{cc.size}`, {cc.steps} updates of {tokens:,} tokens each "
        f"(rows x segment, equal for every system), evaluated on the first {cc.eval_bytes or 'all'} bytes of "
        f"{cc.eval_docs} held-out documents, state carried across segments.",
        "",
        "## Results",
        "",
        summary_table(results) if results else "_no system finished_",
        "",
        "Peak memory: per-system process peak RSS on CPU (each system in its own process), "
        "`torch.cuda.max_memory_allocated` on GPU. Tokens/s: mean training throughput.",
    ]
    if skipped:
        parts += ["", "### Skipped", ""] + [f"- `{s}`: {why}" for s, why in skipped.items()]
    if results:
        training_curves(runs, out / "training_curves.png")
        loss_by_position(results, out / "loss_by_position.png")
        parts += [
            "",
            "## Training curves",
            "",
            "![training curves](training_curves.png)",
            "",
            "## Loss by position in the document",
            "",
            "Held-out bits per byte of targets at byte offsets [2^i, 2^(i+1)) of their document. "
            "A curve that keeps falling with position means the model uses long context.",
            "",
            "![loss by position](loss_by_position.png)",
        ]
        ablation_rows = [{"system": s, **row} for s, r in results.items() for row in r.get("ablations", [])]
        parts += ["", "## Memory ablations", ""]
        if ablation_rows:
            parts += [
                "Each trained checkpoint evaluated again with its memory size changed (no retraining).",
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
    path = out / "report.md"
    path.write_text("\n".join(parts) + "\n")
    return path
