"""The GPU run's summary: fabricated stage outputs (as benchmarks/gpu_run.sh and the benches write them, some cut
short by their time limits) become one summary.json, and the README's GPU rows are written from it."""

import json

import pytest

from longrange.bench import gpu_summary

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5">
<testcase classname="tests.model.test_export" name="test_exported_program_equals_eager_with_its_state[luna-tiny]"/>
<testcase classname="tests.model.test_export" name="test_memorizing_is_refused_with_the_reason"/>
<testcase classname="tests.model.test_graph_breaks" name="test_traces[memorizing-tiny]">
<failure message="AssertionError: memories filled: knn.py:186 (forward): ...">trace</failure></testcase>
<testcase classname="tests.model.test_export" name="test_exported_program_equals_eager_with_its_state[reformer-tiny]">
<skipped message="torch.export of torch 2.11 cannot trace ..."/></testcase>
<testcase classname="tests.train.test_trainer" name="test_resume"><error message="fixture">trace</error></testcase>
</testsuite></testsuites>
"""


def _point(preset, batch, tokens_per_s, **extra):
    return {
        "preset": preset,
        "batch_size": batch,
        "tokens_per_s": tokens_per_s,
        "mfu": 0.31,
        "ceiling_gflops": 612000.0,
        "ceiling_dtype": "bfloat16",
        "precision": "bf16",
        "compile": False,
        "fused_adamw": True,
        "peak_mib": 20480.0,
        "status": "ok",
        **extra,
    }


def _fabricate(out):
    (out / "env.json").write_text(
        json.dumps({"device": "NVIDIA H100 80GB HBM3", "torch": "2.11.0+cu130", "cuda": "13.0"})
    )
    stages = [
        {"stage": "env", "exit": 0, "seconds": 3, "limit": 30},
        {"stage": "tests", "exit": 1, "seconds": 190, "limit": 300},
        {"stage": "attention", "exit": 124, "seconds": 240, "limit": 240},
        {"stage": "dist-nccl", "exit": 0, "seconds": 9, "limit": 60},
        {"stage": "dist-gloo2", "exit": 137, "seconds": 100, "limit": 90},
        {"stage": "dist-world1", "exit": 0, "seconds": 0, "limit": 0, "skipped": "no CUDA device"},
    ]
    (out / "stages.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stages) + '{"stage": "knn", "ex')
    (out / "tests.xml").write_text(JUNIT)
    (out / "sweep").mkdir()
    best = {**_point("transformer-base", 32, 410000.0), "batch_sizes_tried": [8, 16, 32, 64], "sweep_stopped": "x"}
    sweep = {"meta": {}, "rows": [best], "points": [_point("transformer-base", 8, 200000.0)]}
    (out / "sweep" / "train.json").write_text(json.dumps(sweep))
    (out / "profile").mkdir()
    kernels = [{"name": f"kernel{i}", "calls": 3, "self_ms": 10.0 - i, "share": 0.1} for i in range(8)]
    (out / "profile" / "transformer-base.json").write_text(json.dumps({"rows": kernels}))
    (out / "attention").mkdir()  # cut by its limit: rows.jsonl only, the last line torn
    rows = [
        {"variant": "full", "length": 16384, "precision": "bf16", "time_s": 0.02, "peak_mib": 300.0, "status": "ok"},
        {"variant": "knn", "length": 16384, "precision": "bf16", "status": "timeout>40s"},
        {"variant": "knn", "length": 65536, "precision": "bf16", "status": "not run: failed at length 16384"},
    ]
    (out / "attention" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"variant": "x')
    (out / "knn").mkdir()
    search = [{"distribution": "random", "size": 1048576, "backend": "exact", "precision": "bf16", "search_s": 0.012}]
    search[0]["recall"] = 0.998
    step = [{"memory_size": 0, "precision": "bf16", "step_s": 0.1, "ratio": 1.0}]
    step.append({"memory_size": 1048576, "precision": "bf16", "step_s": 0.13, "ratio": 1.3})
    (out / "knn" / "knn.json").write_text(json.dumps({"meta": {}, "search": search, "step": step}))
    (out / "train").mkdir()
    steps = {"preset": "transformer-xl-base", "seconds": 300, "first": 5100, "resumed": 5300}
    (out / "train" / "steps.json").write_text(json.dumps(steps))
    metrics = [{"step": 50, "loss": 3.0, "tokens_per_s": 9.0e4}, {"step": 100, "valid_bpb": 2.1}]
    metrics += [{"step": 150, "loss": 2.5, "tokens_per_s": 1.0e5}, {"step": 200, "loss": 2.4, "tokens_per_s": 1.1e5}]
    (out / "train" / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (out / "train" / "eval-first.json").write_text(json.dumps({"bpb": 2.05, "split": "test"}))
    (out / "train" / "eval-resumed.json").write_text(json.dumps({"bpb": 2.04, "split": "test"}))
    (out / "train" / "generate.txt").write_text("def f(x):\n    return x\n")


def test_collect_reads_every_stage_and_what_a_cut_stage_left(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    _fabricate(out)
    summary = gpu_summary.collect(out)
    assert summary["schema"] == gpu_summary.SCHEMA and summary["card"] == "h100"
    assert summary["stages"]["tests"]["status"] == "failed" and summary["stages"]["attention"]["status"] == "timed out"
    assert "knn" not in summary["stages"]  # its line was torn by the kill
    assert summary["tests"] == {
        "passed": 2,
        "failed": 1,
        "skipped": 1,
        "errors": 1,
        "failures": [
            "tests/model/test_graph_breaks.py::test_traces[memorizing-tiny]",
            "tests/train/test_trainer.py::test_resume",
        ],
        "messages": {
            "tests/model/test_graph_breaks.py::test_traces[memorizing-tiny]": "AssertionError: memories filled: "
            "knn.py:186 (forward): ...",
            "tests/train/test_trainer.py::test_resume": "fixture",
        },
    }
    (row,) = summary["train_throughput"]
    assert row["batch_size"] == 32 and row["tokens_per_s"] == 410000.0 and row["ceiling_tflops"] == 612.0
    assert row["batch_sizes_tried"] == [8, 16, 32, 64] and row["peak_mib"] == 20480.0
    assert summary["train_throughput_compiled"] == []  # that stage did not run
    assert [k["name"] for k in summary["profile"]["transformer-base"]] == [f"kernel{i}" for i in range(5)]
    assert [(r["variant"], r["status"]) for r in summary["attention"]] == [
        ("full", "ok"),
        ("knn", "timeout>40s"),
        ("knn", "not run: failed at length 16384"),
    ]
    assert summary["knn"]["search"][0]["search_s"] == 0.012 and summary["knn"]["layer"][1]["ratio"] == 1.3
    assert summary["train_run"] == {
        "preset": "transformer-xl-base",
        "seconds": 300,
        "steps": 5100,
        "tokens_per_s": 1.0e5,
        "eval_bpb": 2.05,
        "resumed_steps": 5300,
        "eval_bpb_resumed": 2.04,
        "generated_chars": 23,
    }
    assert summary["distributed"] == {
        "dist-nccl": "ok",
        "dist-gloo2": "timed out",
        "dist-world1": "skipped: no CUDA device",
    }
    json.dumps(summary, allow_nan=False)  # strict JSON


def test_an_empty_folder_gives_a_summary_of_nothing(tmp_path):
    summary = gpu_summary.collect(tmp_path, card="a100")
    assert summary["card"] == "a100" and summary["tests"] is None and summary["knn"] is None
    assert summary["train_throughput"] == [] and summary["attention"] == [] and summary["train_run"] is None


@pytest.mark.parametrize(
    ("device", "card"),
    [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"), ("NVIDIA A100-SXM4-40GB", "a100"), ("cpu", "cpu")],
)
def test_card_names(device, card):
    assert gpu_summary.card_name(device) == card


def test_the_readme_rows_are_rewritten_from_every_summary(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    _fabricate(out)
    results = tmp_path / "results"
    assert gpu_summary.main(["collect", str(out), "--into", str(results / "gpu-h100")]) == 0
    assert json.loads((out / "summary.json").read_text()) == json.loads((results / "gpu-h100/summary.json").read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\nbefore\n\n{gpu_summary.BEGIN}\nold rows\n{gpu_summary.END}\n\nafter\n")
    args = ["readme", "--results", str(results), "--readme", str(readme)]
    assert gpu_summary.main(args) == 0
    text = readme.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n") and text.endswith("\n\nafter\n") and "old rows" not in text
    assert "NVIDIA H100 80GB HBM3 (torch 2.11.0+cu130" in text and "`results/gpu-h100/summary.json`" in text
    assert "| transformer-base | bf16 fused AdamW | 32 (8, 16, 32, 64; x) | 410,000 | 31% | 612 bfloat16 |" in text
    assert "| full | 0.020 s, 300 MiB |" in text and "| knn | timeout>40s | not run: failed at length 16384 |" in text
    assert (
        "exact search over 1,048,576 keys (bf16): 12.0 ms" in text and "M = 1,048,576: 0.130 s per step, x1.30" in text
    )
    assert "2 passed, 1 failed, 1 errors, 1 skipped" in text and "dist-gloo2 timed out" in text
    assert "--resume to step 5300: 2.0400" in text
    assert gpu_summary.main(args) == 0 and readme.read_text() == text  # a second pass changes nothing
    assert "unchanged" in capsys.readouterr().out


def test_a_readme_without_the_block_is_refused_in_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no block here\n")
    assert gpu_summary.main(["readme", "--results", str(tmp_path), "--readme", str(readme)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpu_summary readme: error:") and "no GPU block" in err and err.count("\n") == 1
    assert gpu_summary.main(["collect", str(tmp_path / "missing")]) == 2
