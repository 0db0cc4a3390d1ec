"""The CPU door: ``student.cpu_kernels`` switches every CPU-only speed-up, and nothing else imports ``stat_pl.cpu``."""

import logging
import subprocess
import sys

import torch

from stat_pl.models import LoRAConfig, StudentConfig
from stat_pl.modules.sft import SFTModule


def student(model_dir, cpu_kernels: str) -> SFTModule:
    config = StudentConfig(str(model_dir), "none", "float32", LoRAConfig(r=4, dropout=0.1), cpu_kernels=cpu_kernels)
    module = SFTModule(config)
    module.configure_model()
    return module


def test_auto_turns_on_the_cpu_kernels_and_logs_them(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO):
        module = student(tiny_model_dir, "auto")
    assert "cpu_kernels auto" in caplog.text and "merged" in caplog.text
    copy = module.generation_model()
    assert copy is not module.model and not hasattr(copy, "peft_config")  # a plain merged model
    ids = torch.tensor([[1, 5, 9, 12]])
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(copy(input_ids=ids).logits, module.model(input_ids=ids).logits)


def test_off_generates_from_the_live_model(tiny_model_dir):
    module = student(tiny_model_dir, "off")
    assert module.generation_model() is module.model


def test_nothing_but_the_door_imports_stat_pl_cpu():
    """Training, data, engines, the CLI and the callbacks load without ``stat_pl.cpu``: a GPU run never meets it."""
    code = (
        "import sys\n"
        "import stat_pl.cli, stat_pl.modules.sft, stat_pl.modules.grpo, stat_pl.engines.hf\n"
        "import stat_pl.data.sft_datamodule, stat_pl.data.prompt_datamodule\n"
        "import stat_pl.evaluation.evaluate, stat_pl.profiling.profile_stage\n"
        "import stat_pl.callbacks.skill_reprofiler\n"
        "print(sorted(m for m in sys.modules if m.startswith('stat_pl.cpu')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
