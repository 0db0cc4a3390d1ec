"""Placement: every model goes straight to the device it runs on (the CUDA half checked by the arguments it gets).

No GPU here, so the CUDA cases record what ``from_pretrained`` / ``load_student`` are asked for (a test double, since
the real load needs a GPU) and check the decision: the device map, the dtype, the trainer's ``root_device``.
"""

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from stat_pl import models
from stat_pl.models import StudentConfig, load_causal_lm
from stat_pl.modules import adapter_module
from stat_pl.modules.sft import SFTModule


@pytest.fixture
def from_pretrained_calls(monkeypatch, tiny_model_dir):
    """Record ``from_pretrained``'s keyword arguments, then load the tiny model on the CPU as usual."""
    calls: list[dict] = []
    real = AutoModelForCausalLM.from_pretrained

    def record(source, **kwargs):
        calls.append(dict(kwargs))
        kwargs.pop("device_map", None)
        return real(source, **{**kwargs, "dtype": torch.float32})

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", record)
    return calls


def test_a_model_for_a_gpu_loads_onto_that_gpu_in_its_compute_dtype(from_pretrained_calls, tiny_model_dir):
    load_causal_lm(str(tiny_model_dir), quantization="none", compute_dtype="bfloat16", device="cuda:1")
    assert from_pretrained_calls[-1]["device_map"] == {"": "cuda:1"}
    assert from_pretrained_calls[-1]["dtype"] == torch.bfloat16


def test_on_a_cpu_plain_weights_load_as_before_and_quantised_ones_are_mapped_to_it(
    from_pretrained_calls, tiny_model_dir
):
    load_causal_lm(str(tiny_model_dir), quantization="none", device="cpu")
    assert "device_map" not in from_pretrained_calls[-1] and from_pretrained_calls[-1]["dtype"] == torch.float32
    load_causal_lm(str(tiny_model_dir), quantization="nf4", compute_dtype="float32", device="cpu")
    assert from_pretrained_calls[-1]["device_map"] == {"": "cpu"}


def test_without_a_device_models_go_to_the_current_cuda_device_if_any(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.default_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert models.default_device() == torch.device("cuda", 3)


def test_the_student_is_built_on_the_strategys_root_device_without_the_cpu_door(monkeypatch, tiny_model_dir):
    """``configure_model`` runs before the strategy moves the module: it must ask the strategy, not ``self.device``."""
    asked: list[torch.device] = []

    def load_student(student, compute_dtype, device, sharded=False):
        asked.append(device)
        return load_causal_lm(student.model, quantization="none", lora=models.LoRAConfig(r=2), device="cpu")

    monkeypatch.setattr(adapter_module, "load_student", load_student)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, precision="bf16-mixed")
    monkeypatch.setattr(type(trainer.strategy), "root_device", property(lambda self: torch.device("cuda", 1)))
    module = SFTModule(StudentConfig(str(tiny_model_dir), quantization="none"))
    module.trainer = trainer
    module.configure_model()
    assert asked == [torch.device("cuda", 1)]
    assert module.compute_dtype == "bfloat16"
    assert module.generation_model() is module.model  # the CPU-only generation copy stays off a GPU
