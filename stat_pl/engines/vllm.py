"""VLLMEngine: the Engine protocol on vLLM (``pip install 'stat-pl[vllm]'``, CUDA only).

Written against vLLM's documented offline API (``vllm.LLM``, ``vllm.SamplingParams``,
``vllm.lora.request.LoRARequest``; targets vLLM >= 0.8.5). The live training weights reach it as the
PEFT adapter the SkillReprofiler saves each round: :meth:`set_adapter` points the next calls at it.
Not exercised by the CPU test suite (vLLM does not install without CUDA).
"""

from __future__ import annotations

from collections.abc import Sequence

from stat_pl.engines.base import Completion, Prompt, SamplingParams
from stat_pl.offline_models import resolve_model_path


def _import_vllm():
    try:
        import torch
        import vllm
    except ImportError as e:
        raise ImportError("VLLMEngine needs vLLM: pip install 'stat-pl[vllm]' (CUDA only); "
                          "use engine: hf on CPU") from e
    if not torch.cuda.is_available():
        raise RuntimeError("VLLMEngine needs a CUDA GPU; use engine: hf on CPU")
    return vllm


class VLLMEngine:
    """Batched generation with vLLM, optionally through a LoRA adapter saved by PEFT.

    Args:
        model: the base model's Hub name or local path (the adapter's base).
        enable_lora: serve adapters (needed for the live training weights).
        max_lora_rank: the largest LoRA rank served (the paper's is 16).
        gpu_memory_utilization: share of GPU memory vLLM may take; leave room for training.
        dtype: weights dtype for vLLM.
    """

    def __init__(self, model: str, enable_lora: bool = True, max_lora_rank: int = 64,
                 gpu_memory_utilization: float = 0.3, dtype: str = "bfloat16") -> None:
        vllm = _import_vllm()
        self._vllm = vllm
        self.llm = vllm.LLM(model=resolve_model_path(model), enable_lora=enable_lora, max_lora_rank=max_lora_rank,
                            gpu_memory_utilization=gpu_memory_utilization, dtype=dtype)
        self._lora = None
        self._adapters = 0

    def set_adapter(self, path: str | None) -> None:
        """Generate through the adapter saved at ``path`` from now on (None: the base model).

        Each call gets a new integer id, so vLLM loads the new weights instead of its cached adapter.
        """
        from vllm.lora.request import LoRARequest

        if path is None:
            self._lora = None
            return
        self._adapters += 1
        self._lora = LoRARequest(f"adapter-{self._adapters}", self._adapters, path)

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingParams) -> list[list[Completion]]:
        params = self._vllm.SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                           max_tokens=sampling.max_new_tokens, stop=list(sampling.stop) or None,
                                           seed=sampling.seed)
        if all(isinstance(p, str) for p in prompts):
            outputs = self.llm.generate(list(prompts), params, lora_request=self._lora)
        else:
            outputs = self.llm.chat([list(p) for p in prompts], params, lora_request=self._lora)
        return [[Completion(o.text, len(o.token_ids), "length" if o.finish_reason == "length" else "stop")
                 for o in request.outputs] for request in outputs]
