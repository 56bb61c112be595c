"""`longrange eval`: refuses impossible results, prints before writing, names files by settings, checks the corpus."""

import json
import math

import pytest
import torch

import longrange
from longrange.cli import main
from longrange.commands.eval import default_output
from longrange.data.corpus import load_corpus
from longrange.eval.evaluate import ImplausibleResult, check_result


def _run(tmp_path, corpus_dir, scale: float = 1.0):
    """A run folder as `train` leaves it: checkpoint/ and corpus.json (the manifest of the corpus)."""
    model = longrange.build_model(longrange.ModelConfig.from_name("transformer-tiny", segment_len=32))
    with torch.no_grad():
        model.head.weight.mul_(scale)  # the logits grow with the scale
    run = tmp_path / "run"
    longrange.save(model, run / "checkpoint")
    spec = str(corpus_dir)
    (run / "corpus.json").write_text(json.dumps({"spec": spec, **load_corpus(spec).manifest}))
    return run


def _eval(run, *args):
    return main(["eval", str(run), "--split", "train", "--docs", "2", "--no-progress", *args])


def test_non_finite_results_are_refused_and_the_json_is_strict():
    with pytest.raises(ImplausibleResult, match="nan bits per byte: the model's outputs are not finite"):
        check_result({"bpb": math.nan, "loss": math.nan}, 256)
    with pytest.raises(ImplausibleResult, match="inf bits per byte"):
        check_result({"bpb": math.inf, "loss": math.inf}, 256)
    check_result({"bpb": 8.03, "loss": 8.03 * math.log(2)}, 256)  # an untrained model: about log2(256)


def test_a_result_far_worse_than_uniform_is_an_error(tmp_path, corpus_dir, capsys):
    run = _run(tmp_path, corpus_dir, scale=1000.0)  # huge, confidently wrong logits, as after divergence
    assert _eval(run) == 2
    captured = capsys.readouterr()
    assert "worse than a uniform guess over 256 tokens (8.00)" in captured.err and captured.out == ""
    assert not list(run.glob("eval-*.json"))
    assert _eval(run, "--allow-worse-than-uniform") == 0


def test_result_is_printed_before_the_file_and_an_unwritable_file_is_a_warning(tmp_path, corpus_dir, capsys):
    run = _run(tmp_path, corpus_dir)
    blocked = default_output(run, "train", {"docs": 2})  # the default file of these settings
    blocked.mkdir()  # cannot be written as a file, even by root (a read-only folder is not, for root)
    assert _eval(run) == 0
    captured = capsys.readouterr()
    assert "bits per byte over" in captured.out and f"warning: could not write {blocked}" in captured.err
    assert _eval(run, "--output", str(blocked)) == 2  # a file the user named: an error (tests/test_cli_one_line.py)


def test_file_name_carries_the_settings_so_an_ablation_keeps_the_baseline(tmp_path, corpus_dir, capsys):
    run = _run(tmp_path, corpus_dir)
    args = ["eval", str(run), "--split", "train", "--no-progress"]
    assert main(args) == 0
    baseline = json.loads((run / "eval-train.json").read_text())
    assert main([*args, "--set", "segment_len=16"]) == 0
    assert main([*args, "--set", "segment_len=8"]) == 0
    files = sorted(p.name for p in run.glob("eval-train*.json"))
    assert len(files) == 3 and json.loads((run / "eval-train.json").read_text()) == baseline
    ablations = [json.loads((run / f).read_text()) for f in files if f != "eval-train.json"]
    assert sorted(a["settings"]["set"] for a in ablations) == [["segment_len=16"], ["segment_len=8"]]


def test_a_changed_corpus_is_an_error_unless_allowed(tmp_path, corpus_dir, capsys, caplog):
    run = _run(tmp_path, corpus_dir)
    (corpus_dir / "added.txt").write_text("a document added after training moves the split\n")
    assert _eval(run) == 2
    assert "changed since the run was trained (documents 8 -> 9" in capsys.readouterr().err
    assert _eval(run, "--allow-corpus-change") == 0
    assert "changed since the run was trained" in caplog.text


def test_a_corpus_without_held_out_documents_says_how_to_fix_it(tmp_path, capsys):
    (tmp_path / "two.txt").write_text("one document\ftwo documents")
    run = _run(tmp_path, tmp_path / "two.txt")
    assert main(["eval", str(run), "--no-progress"]) == 2
    assert "has 2 document(s), so it has no 'test' split" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["--docs", "-1"], ["--docs", "0"], ["--batch-size", "0"], ["--segment-len", "0"]])
def test_out_of_range_numbers_are_refused(tmp_path, corpus_dir, bad, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _eval(_run(tmp_path, corpus_dir), *bad)
    assert exit_info.value.code == 2 and "is less than 1" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["tpu9", "cuda:x", "cuda"])
def test_unknown_or_unavailable_device_is_one_line(tmp_path, corpus_dir, device, capsys):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert _eval(_run(tmp_path, corpus_dir), "--device", device) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--device {device!r}" in err


def test_progress_bar_unless_no_progress(tmp_path, corpus_dir, capsys):
    run = _run(tmp_path, corpus_dir)
    assert main(["eval", str(run), "--split", "train", "--docs", "2"]) == 0
    assert "eval: 100%" in capsys.readouterr().err
    assert _eval(run) == 0
    assert "eval:" not in capsys.readouterr().err


def test_precision_and_compile_options(tmp_path, corpus_dir, capsys, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(model) or model)  # no C++ build in tests
    run = _run(tmp_path, corpus_dir)
    assert _eval(run, "--output", str(tmp_path / "fp32.json")) == 0
    assert _eval(run, "--precision", "bf16", "--compile", "--output", str(tmp_path / "bf16.json")) == 0
    fp32, bf16 = (json.loads((tmp_path / f"{p}.json").read_text())["bpb"] for p in ("fp32", "bf16"))
    assert len(compiled) == 1 and bf16 == pytest.approx(fp32, abs=0.05) and bf16 != fp32


def test_the_default_result_file_is_not_written_through_a_link(tmp_path, corpus_dir, capsys):
    run = _run(tmp_path, corpus_dir)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    default_output(run, "train", {"docs": 2}).symlink_to(victim)  # planted where eval writes its result
    assert _eval(run) == 2
    assert victim.read_text() == "precious\n"
    assert "link" in capsys.readouterr().err
