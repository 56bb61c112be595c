"""The reproductions of the Reformer ablations, Luna seq2seq, fine-tuning into memory and ListOps at LRA length at a
tiny budget: each runs end to end and writes its table and JSON."""

import argparse
import json

import pytest

from longrange.commands.repro import REPROS


def _args(name: str, tmp_path, **overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    REPROS[name].add_arguments(parser)
    args = parser.parse_args([])
    vars(args).update(overrides, out=tmp_path)
    return args


def test_reformer_ablations_table_has_every_comparison(tmp_path):
    from longrange.repro import reformer_ablations

    args = _args(
        "reformer-ablations",
        tmp_path,
        steps=2,
        batch_size=2,
        segment_len=32,
        d_model=16,
        layers=1,
        bucket_size=8,
        rounds="1,2",
        seeds=2,
        lsh_seeds=1,
        eval_bytes=128,
        eval_docs=1,
    )
    table = reformer_ablations.run(args)
    for row in ("| a,b | full, separate Q/K |", "| a,c | full, shared QK |", "| b | full, separate Q/K, reversible |"):
        assert row in table
    assert "| c | LSH-1 |" in table and "| c | LSH-2 |" in table and "shared QK does not hurt" in table
    results = json.loads((tmp_path / "reformer_ablations.json").read_text())["results"]
    assert len(results["full, shared QK"]["runs"]) == 2 and len(results["LSH-2"]["runs"]) == 1
    # shared QK has no key projection: fewer parameters than separate Q/K
    assert results["full, shared QK"]["parameters"] < results["full, separate Q/K"]["parameters"]


def test_luna_seq2seq_reports_both_models(tmp_path):
    from longrange.repro import luna_seq2seq

    args = _args(
        "luna-seq2seq",
        tmp_path,
        steps=2,
        batch_size=2,
        max_len=8,
        d_model=16,
        heads=2,
        layers=1,
        test=2,
        speed_len=12,
        speed_batch=2,
    )
    table = luna_seq2seq.run(args)
    assert "| luna-16 |" in table and "| full |" in table and "greedy ms / sequence at 12 |" in table
    result = json.loads((tmp_path / "luna_seq2seq.json").read_text())["results"]["luna-16"]
    assert 0 <= result["exact_match"] <= 1 and result["decode_ms_per_sequence"] > 0 and result["speed_decode_ms"] > 0
    with pytest.raises(ValueError, match="--models"):
        luna_seq2seq.run(_args("luna-seq2seq", tmp_path, models="luna-16,nope"))


def test_reformer_ablations_small_size_sets_the_larger_model_and_keeps_given_options(tmp_path):
    from longrange.repro import reformer_ablations

    args = reformer_ablations.with_size(
        _args("reformer-ablations", tmp_path, size="small", steps=7), vars(_args("reformer-ablations", tmp_path))
    )
    assert (args.d_model, args.segment_len, args.layers, args.steps) == (256, 1024, 4, 7)  # --steps 7 given: kept
    names = list(reformer_ablations.variants(args))
    assert names == ["full, separate Q/K", "full, shared QK", "LSH-1", "LSH-4"]  # shared QK and rounds only


def test_memory_finetune_starts_from_a_model_pretrained_without_memory(tmp_path):
    from longrange.config import ModelConfig
    from longrange.repro import memory_finetune

    small = dict(batch_size=2, segment_len=16, memory_size=32, eval_bytes=256, eval_docs=1, finetune_steps="2")
    args = _args("memory-finetune", tmp_path / "a", pretrain_steps=2, **small)
    args.func = print  # the command line's handler rides along in args: not written to the JSON
    table = memory_finetune.run(args)
    assert "| fine-tuned with memory | +2 |" in table and "| continued without memory | +2 |" in table
    bpb = json.loads((tmp_path / "a" / "memory_finetune.json").read_text())["bpb"]
    assert set(bpb) == {
        "pretrained",
        "memory on, not fine-tuned",
        "memory+2",
        "memory+2, memory off",
        "no-memory+2",
    }
    pretrained = ModelConfig.from_dict(
        __import__("yaml").safe_load((tmp_path / "a" / "runs" / "pretrained" / "config.yaml").read_text())
    )
    assert "knn" in pretrained.layers and pretrained.knn.memory_size == 0  # the memorizing layout, memory off
    # --from: the pretrained run is reused (not trained again); an XL run is swapped into the memorizing layout
    table = memory_finetune.run(
        _args("memory-finetune", tmp_path / "b", source=tmp_path / "a" / "runs" / "pretrained", **small)
    )
    assert "given run" in table and not (tmp_path / "b" / "runs" / "pretrained").exists()
    cfg = memory_finetune.memorizing_config(ModelConfig.from_name("transformer-xl-tiny"), 64)
    assert cfg.layers == ModelConfig.from_name("memorizing-tiny").layers and cfg.knn.memory_size == 64
    with pytest.raises(ValueError, match="transformer-xl"):
        memory_finetune.memorizing_config(ModelConfig.from_name("transformer-tiny"), 64)


def test_listops_lra_option_sets_the_lra_setting_and_times_a_few_steps(tmp_path):
    from longrange.repro import listops

    lra = listops.lra_settings(_args("listops", tmp_path, lra=True))
    assert (lra.max_len, lra.min_len, lra.d_model, lra.layers, lra.steps, lra.time_steps) == (
        2000,
        500,
        512,
        6,
        5000,
        3,
    )
    assert lra.train == 3 * 4 and lra.time_batch == 4  # timing only: the examples the timed steps read
    args = _args("listops", tmp_path, max_len=32, d_model=16, layers=1, batch_size=4, models="luna-16", time_steps=2)
    table = listops.run(args)
    assert "timing only" in table and "extrapolated" in table and "| luna-16 |" in table
    result = json.loads((tmp_path / "listops.json").read_text())["results"]["luna-16"]
    assert result["accuracy"] is None and result["step_s"] > 0


def test_the_command_line_names_every_new_reproduction():
    from longrange.commands import repro

    parser = argparse.ArgumentParser()
    repro.add_arguments(parser)
    for argv in (
        ["reformer-ablations", "--rounds", "1,8", "--seeds", "5"],
        ["luna-seq2seq", "--task", "sort", "--max-len", "512"],
        ["memory-finetune", "--from", "runs/xl", "--finetune-steps", "50,200"],
        ["listops", "--lra", "--time-steps", "0"],
    ):
        args = parser.parse_args(argv)
        assert args.repro == argv[0]
    assert parser.parse_args(["memory-finetune", "--from", "runs/xl"]).source.name == "xl"
