"""`--precision auto`: the default of every command; bf16 where the device has fast bf16 matrix products and the
model trains faster in it, else fp32; decided once per run, recorded in train.yaml and kept on --resume.

The device's capability is injected (`fast=` or a patched `runtime.fast_bf16`), so these tests decide the same on
any machine; a spy on `torch.autocast` shows which precision a training step actually ran in.
"""

import json

import pytest
import torch
import yaml

import longrange
from longrange import runtime
from longrange.cli import build_parser, main
from longrange.runtime import AUTO_BF16_MIN_WIDTH, cpu_bf16_flags, fast_bf16, resolve_precision
from longrange.train import TrainConfig, train

CPU = torch.device("cpu")
RUN = ["--batch-size", "2", "--segment-len", "16", "--warmup-steps", "1", "--no-progress", "--log-every", "1"]


def _cfg(name: str, **overrides) -> longrange.ModelConfig:
    return longrange.ModelConfig.from_name(name, **overrides)


def test_cpu_flags_name_the_native_bf16_matrix_instructions():
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n\nprocessor\t: 1\n"
    assert cpu_bf16_flags(cpuinfo) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags("flags\t: fpu sse avx2 avx512f avx512bw\n") == []  # AVX512 alone converts bf16 in software
    assert cpu_bf16_flags("") == []


def test_detection_of_this_machine_agrees_with_its_cpu_flags():
    assert fast_bf16(torch.device("meta")) is None
    try:
        with open("/proc/cpuinfo") as fh:
            flags = cpu_bf16_flags(fh.read())
    except OSError:
        flags = []
    expected = bool(flags) and torch.backends.mkldnn.is_available()
    assert (fast_bf16(CPU) is not None) == expected


@pytest.mark.parametrize(
    ("model", "fast", "expected"),
    [
        (_cfg("transformer-small"), True, "bf16"),  # d_model 256
        (_cfg("memorizing-base"), True, "bf16"),
        (_cfg("transformer-tiny"), True, "fp32"),  # d_model 64: measured slower in bf16
        (_cfg("transformer-tiny", d_model=AUTO_BF16_MIN_WIDTH - 64), True, "fp32"),
        (_cfg("luna-base"), True, "fp32"),  # Luna at every width
        (None, True, "bf16"),  # no model (a kNN search): the device decides
        (_cfg("transformer-base"), False, "fp32"),  # no fast bf16 on the device
        (None, False, "fp32"),
    ],
)
def test_auto_decides_by_device_width_and_kind(model, fast, expected):
    assert resolve_precision("auto", CPU, model, fast=fast) == expected


def test_a_given_precision_is_kept_and_a_wrong_one_is_one_line():
    for precision in ("fp32", "bf16", "fp16"):
        assert resolve_precision(precision, CPU, _cfg("transformer-tiny"), fast=False) == precision
    with pytest.raises(ValueError, match="--precision 'fp8' is not one of"):
        resolve_precision("fp8", CPU)


def test_each_decision_is_logged_once(caplog):
    runtime._report_precision.cache_clear()  # other tests logged their decisions already
    model = _cfg("transformer-small")
    with caplog.at_level("INFO", logger="longrange.runtime"):
        for _ in range(3):
            resolve_precision("auto", CPU, model, fast=True)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision auto")]
    assert lines == ["precision auto: bf16 (fast bf16 assumed)"]


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "runs/x"],
        ["generate", "runs/x"],
        ["compare"],
        ["demo"],
        ["bench", "train"],
        ["bench", "knn"],
    ],
)
def test_auto_is_the_default_of_the_commands(argv):
    assert build_parser().parse_args(argv).precision == "auto"


def test_auto_is_the_default_of_a_train_config_and_the_train_command():
    assert TrainConfig().precision == "auto"
    assert build_parser().parse_args(["train", "--out", "r"]).precision is None  # None: the config's default


@pytest.fixture
def autocasts(monkeypatch) -> list[torch.dtype | None]:
    """The dtype of every `torch.autocast` the runtime opens (None: disabled, fp32)."""
    seen: list[torch.dtype | None] = []
    real = torch.autocast

    def spy(device_type, dtype=None, enabled=True, **kw):
        seen.append(dtype if enabled else None)
        return real(device_type, dtype=dtype, enabled=enabled, **kw)

    monkeypatch.setattr(torch, "autocast", spy)
    return seen


def _fast(monkeypatch, reason: str | None) -> None:
    monkeypatch.setattr(runtime, "fast_bf16", lambda device: reason)


def _recorded(run) -> str:
    return yaml.safe_load((run / "train.yaml").read_text())["train"]["precision"]


def test_a_run_records_the_decided_precision_and_resumes_in_it_on_another_machine(
    tmp_path, corpus_dir, monkeypatch, autocasts
):
    run, wide = tmp_path / "run", ["--preset", "transformer-tiny", "--set", f"d_model={AUTO_BF16_MIN_WIDTH}"]
    _fast(monkeypatch, "a CPU with AMX")
    assert main(["train", *wide, "--data", str(corpus_dir), "--out", str(run), "--steps", "2", *RUN]) == 0
    assert _recorded(run) == "bf16"
    assert torch.bfloat16 in autocasts and None not in autocasts  # every step (and validation) in bf16
    _fast(monkeypatch, None)  # resumed where bf16 is slow: the run keeps the precision it started with
    autocasts.clear()
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--precision", "auto", *RUN]) == 0
    assert _recorded(run) == "bf16" and autocasts and set(autocasts) == {torch.bfloat16}
    autocasts.clear()  # the library's train(), resumed with precision auto, likewise
    model_cfg = longrange.ModelConfig.from_file(run / "config.yaml")
    train_cfg = TrainConfig(steps=4, batch_size=2, segment_len=16, warmup_steps=1, log_every=1, progress=False)
    train(model_cfg, train_cfg, str(corpus_dir), run, resume=True)
    assert autocasts and set(autocasts) == {torch.bfloat16}


def test_a_run_without_fast_bf16_records_fp32(tmp_path, corpus_dir, monkeypatch, autocasts):
    _fast(monkeypatch, None)
    args = ["--preset", "transformer-tiny", "--set", f"d_model={AUTO_BF16_MIN_WIDTH}", "--data", str(corpus_dir)]
    assert main(["train", *args, "--out", str(tmp_path / "run"), "--steps", "1", *RUN]) == 0
    assert _recorded(tmp_path / "run") == "fp32" and set(autocasts) == {None}


def test_eval_reports_the_precision_it_decided(tmp_path, corpus_dir, monkeypatch):
    run = tmp_path / "run"
    _fast(monkeypatch, None)
    args = ["--preset", "transformer-tiny", "--data", str(corpus_dir), "--out", str(run), "--steps", "1"]
    assert main(["train", *args, *RUN]) == 0
    assert main(["eval", str(run), "--no-progress"]) == 0
    assert json.loads((run / "eval-test.json").read_text())["precision"] == "fp32"  # fp32: the baseline's file
    assert main(["eval", str(run), "--no-progress", "--precision", "bf16"]) == 0
    (bf16,) = [p for p in run.glob("eval-test-*.json") if json.loads(p.read_text())["settings"].get("precision")]
    assert json.loads(bf16.read_text())["precision"] == "bf16"
