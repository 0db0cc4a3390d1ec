"""Precision and threads from the hardware: ``auto`` picks float32 where bf16 is emulated, bf16 where native."""

import logging

import pytest
import torch
import yaml
from test_sft_cli import ROOT, run_cli, tiny_config

from stat_pl import precision
from stat_pl.cli import configure_threads
from stat_pl.models import StudentConfig
from stat_pl.precision import compute_dtype_for, resolve_precision


@pytest.fixture
def x86_cpu(monkeypatch):
    """An x86 CPU without CUDA, whose bf16 flags and measured bf16 speed-up the test sets."""

    def make(flags: bool, speedup: float) -> None:
        monkeypatch.setattr(precision, "cpu_has_bf16_instructions", lambda: flags)
        monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: speedup)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    return make


def test_auto_is_float32_on_a_cpu_without_native_bf16(x86_cpu, monkeypatch):
    x86_cpu(flags=False, speedup=0.01)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: pytest.fail("no probe needed: the flags decide"))
    choice = resolve_precision("cpu")
    assert (choice.lightning, choice.dtype) == ("32-true", "float32")
    assert "no AVX512-BF16/AMX" in choice.reason


def test_auto_is_bf16_where_it_is_native_and_fast(x86_cpu):
    x86_cpu(flags=True, speedup=3.5)
    choice = resolve_precision("cpu")
    assert (choice.lightning, choice.dtype) == ("bf16-mixed", "bfloat16")
    assert "3.5x" in choice.reason


def test_auto_trusts_the_probe_over_the_flags(x86_cpu):
    """oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA) or a VM: the flags say bf16, the matmul is emulated."""
    x86_cpu(flags=True, speedup=0.02)
    assert resolve_precision("auto").lightning == "32-true"


@pytest.mark.parametrize(
    "flags, expected", [("fpu avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("fpu amx_bf16 amx_tile", True)]
)
def test_bf16_instructions_are_read_from_the_cpu_flags(monkeypatch, tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    monkeypatch.setattr(precision.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    assert precision.cpu_has_bf16_instructions() is expected


def test_auto_on_a_non_x86_cpu_follows_the_probe(monkeypatch):
    monkeypatch.setattr(precision.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 2.0)
    assert resolve_precision("cpu").dtype == "bfloat16"
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: 0.5)
    assert resolve_precision("cpu").dtype == "float32"


def test_auto_on_cuda_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "H100")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto").lightning == "bf16-mixed"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("gpu").lightning == "32-true"


@pytest.mark.parametrize(
    "precision, dtype",
    [
        ("bf16-mixed", "bfloat16"),
        ("bf16-true", "bfloat16"),
        ("32-true", "float32"),
        ("16-mixed", "float16"),
        (32, "float32"),
    ],
)
def test_the_module_dtype_follows_the_trainer(precision, dtype):
    assert compute_dtype_for(precision) == dtype


def test_python_trainer_auto_drives_lightning_and_the_module_decides_its_dtype_once(x86_cpu, tiny_model_dir, caplog):
    """Without the CLI: StatTrainer resolves ``auto``; a module left at ``compute_dtype="auto"`` takes it once."""
    from stat_pl.modules.sft import SFTModule
    from stat_pl.trainer import StatTrainer

    x86_cpu(flags=False, speedup=0.01)
    with caplog.at_level(logging.INFO):
        trainer = StatTrainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_steps=1)
    assert trainer.precision == "32-true"
    assert "precision auto -> 32-true" in caplog.text and "AVX512-BF16" in caplog.text
    module = SFTModule(StudentConfig(str(tiny_model_dir), quantization="none"))
    module.trainer = trainer
    module.configure_model()
    assert module.compute_dtype == "float32"

    x86_cpu(flags=True, speedup=4.0)
    assert StatTrainer(accelerator="cpu", logger=False, enable_checkpointing=False).precision == "bf16-mixed"


def test_the_cli_decides_precision_once_and_writes_it_into_the_run_config(tmp_path, tiny_model_dir):
    """``auto`` in the YAML is resolved before anything is built; config.yaml holds what the run used."""
    config = tiny_config(tmp_path, tiny_model_dir, max_steps=1)
    out = run_cli("fit", "--config", str(config))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "stat_pl: precision auto -> " in out.stdout + out.stderr
    saved = yaml.safe_load(next((tmp_path / "run").rglob("config.yaml")).read_text())
    chosen = saved["trainer"]["precision"]
    assert chosen in ("bf16-mixed", "32-true")
    assert saved["model"]["init_args"]["student"]["compute_dtype"] == compute_dtype_for(chosen)
    assert chosen == resolve_precision("cpu").lightning  # this machine's own answer


def test_explicit_bf16_on_an_emulating_cpu_is_kept_with_a_warning(x86_cpu, caplog):
    from stat_pl.trainer import StatTrainer

    x86_cpu(flags=False, speedup=0.01)
    with caplog.at_level(logging.WARNING):
        trainer = StatTrainer(accelerator="cpu", precision="bf16-mixed", logger=False, enable_checkpointing=False)
    assert trainer.precision == "bf16-mixed"
    assert "precision bf16-mixed on this CPU is slow" in caplog.text


def test_threads_come_from_the_environment(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("STAT_PL_THREADS", "1")
        assert configure_threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.delenv("STAT_PL_THREADS")
        assert configure_threads() is None
        monkeypatch.setenv("STAT_PL_THREADS", "two")
        with pytest.raises(ValueError, match=r"\$STAT_PL_THREADS='two'"):
            configure_threads()
    finally:
        torch.set_num_threads(before)


def test_fit_with_output_to_a_file_prints_progress_lines_and_flushes_metrics(tmp_path, tiny_model_dir):
    """Off a terminal the run prints a line every log_every_n_steps with loss and tokens/s; the logger's
    metrics file holds the same losses at the same steps."""
    import csv

    config = tiny_config(
        tmp_path,
        tiny_model_dir,
        max_steps=4,
        log_every_n_steps=2,
        enable_progress_bar=None,
        logger={
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(tmp_path / "run"), "name": "logs", "flush_logs_every_n_steps": 2},
        },
    )
    out = run_cli("fit", "--config", str(config), "--trainer.precision=32-true")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[3] for line in lines] == ["2/4", "4/4"]
    assert lines[0].startswith("epoch 1  step 2/4")  # max_epochs unset (-1): no "1/-1"
    assert "training: epochs until max_steps, 4 optimizer steps" in out.stdout
    assert all("train/loss" in line and "train/tokens_per_s" in line for line in lines)
    assert "training done: 4 optimizer steps" in out.stdout
    (metrics_file,) = (tmp_path / "run" / "logs").rglob("metrics.csv")
    logged = [row for row in csv.DictReader(metrics_file.open()) if row["train/loss"]]
    printed = [line.split("train/loss ", 1)[1].split()[0] for line in lines]
    assert [f"{float(row['train/loss']):.4g}" for row in logged] == printed
    assert all(float(row["train/tokens_per_s"]) > 0 for row in logged)


def test_shipped_cpu_configs_choose_precision_from_the_hardware():
    for name in ("demo.yaml", "sft_smollm2_math.yaml"):
        config = yaml.safe_load((ROOT / "configs" / name).read_text())
        assert config["trainer"]["precision"] == "auto", name
        assert config["model"]["init_args"]["student"]["compute_dtype"] == "auto", name
