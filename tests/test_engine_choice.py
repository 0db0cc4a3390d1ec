"""``engine: auto`` and the colocated vLLM engine's lifecycle (sleep mode is CUDA-only: its calls are recorded)."""

import logging

import pytest
import torch

from stat_pl.engines import choice, live
from stat_pl.engines.choice import choose_engine
from stat_pl.engines.live import LiveVLLM
from stat_pl.engines.vllm import VLLMEngine, VLLMSettings
from stat_pl.models import StudentConfig


@pytest.fixture
def machine(monkeypatch):
    def make(cuda: bool, vllm: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(choice, "vllm_installed", lambda: vllm)

    return make


@pytest.mark.parametrize(
    "cuda, vllm, expected", [(True, True, "vllm"), (True, False, "hf"), (False, True, "hf"), (False, False, "hf")]
)
def test_auto_is_vllm_only_with_a_gpu_and_vllm_and_says_so(machine, caplog, cuda, vllm, expected):
    machine(cuda, vllm)
    with caplog.at_level(logging.INFO):
        assert choose_engine("auto", "model.init_args.engine") == expected
    assert f"model.init_args.engine auto -> {expected}" in caplog.text


def test_an_explicit_engine_is_kept_and_a_typo_names_the_key(machine):
    machine(cuda=False, vllm=False)
    assert choose_engine("vllm", "engine") == "vllm" and choose_engine("hf", "engine") == "hf"
    with pytest.raises(ValueError, match="SkillReprofiler.engine: unknown engine 'vlm'"):
        choose_engine("vlm", "SkillReprofiler.engine")


class RecordingLLM:
    """Stands in for ``vllm.LLM`` on the CUDA-only sleep-mode calls: records them in order."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def sleep(self, level: int) -> None:
        self.calls.append(f"sleep{level}")

    def wake_up(self) -> None:
        self.calls.append("wake_up")


class Student:
    student = StudentConfig("tiny")

    def save_adapter(self, path):
        return path


def engine_that_records(calls: list[str], sleeps: bool) -> VLLMEngine:
    engine = VLLMEngine.__new__(VLLMEngine)
    engine.llm, engine.sleeps, engine.asleep = RecordingLLM(calls), sleeps, False
    engine.set_adapter = lambda path: calls.append(f"adapter {path}")
    return engine


@pytest.mark.parametrize("sleeps, expected", [(True, ["wake_up", "adapter a", "sleep1"]), (False, ["adapter a"])])
def test_a_colocated_engine_wakes_for_each_use_and_sleeps_after_it_even_on_error(tmp_path, sleeps, expected):
    calls: list[str] = []
    colocated = LiveVLLM()
    colocated.engine = engine_that_records(calls, sleeps)
    colocated.engine.asleep = sleeps  # asleep since its last use
    with colocated.serving(Student(), "a") as engine:
        assert engine is colocated.engine
    assert calls == expected
    calls.clear()
    colocated.engine.asleep = sleeps
    with pytest.raises(RuntimeError), colocated.serving(Student(), "a"):
        raise RuntimeError("generation failed")
    assert calls == expected


def test_colocated_settings_default_to_the_callers_length_and_to_sleep_where_vllm_can(monkeypatch):
    monkeypatch.setattr(live, "sleep_mode_available", lambda: True)
    settings = LiveVLLM()._settings(max_model_len=320)
    assert settings.max_model_len == 320 and settings.enable_sleep_mode is True
    monkeypatch.setattr(live, "sleep_mode_available", lambda: False)
    explicit = LiveVLLM(VLLMSettings(max_model_len=4096, enable_sleep_mode=False))._settings(max_model_len=320)
    assert explicit.max_model_len == 4096 and explicit.enable_sleep_mode is False
