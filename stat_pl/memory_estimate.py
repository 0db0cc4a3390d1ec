"""The GPU memory a run needs, from the model's config alone: fail at start-up, not 20 minutes in.

Pure arithmetic over a :class:`ModelShape` (read from a transformers config, no weights) and the run's settings;
:mod:`stat_pl.memory_rows` turns them into a run's rows, :mod:`stat_pl.memory_config` reads configs and
:mod:`stat_pl.memory_check` decides at start-up. Every figure is bytes on one device:

* **base weights** in their storage dtype. NF4: 0.5 byte per parameter of the decoder's linear layers plus the
  double-quantised constants (an 8-bit absmax per block of 64, a float32 absmax per 256 blocks: bitsandbytes'
  defaults); int8: 1 byte plus a float32 scale per output row. PEFT's ``prepare_model_for_kbit_training`` turns
  every parameter it did not quantise (embeddings, untied head, norms) into float32. Unquantised: the compute dtype.
* **LoRA** ``r x (in + out)`` per target module per layer, float32 (PEFT's default for adapters), its gradients
  (float32, during the backward only) and the optimizer's states: AdamW 2 x float32, 8-bit optimizers 2 x 1 byte.
* **activations** of the largest micro-batch, counted as Korthikanti et al. count them ("Reducing Activation
  Recomputation in Large Transformer Models", arXiv 2205.05198, Sec. 4.1: the tensors each op saves for the
  backward) for a Llama layer with a frozen base and LoRA, under bf16 autocast with SDPA attention (no s x s
  scores are stored, their "selective recomputation" case). Per token and layer, in bytes, with p the compute
  dtype's size and m = 4 when the base is quantised (its hidden states are float32 then), else p:
  ``8h`` (two RMSNorms upcast to float32) ``+ p(2ad + 2kvd) + 4a`` (SDPA's q, k, v, output, log-sum-exp)
  ``+ 3mi`` (SwiGLU's gate, SiLU and up outputs) ``+ sum over LoRA targets of c x in + p x r`` (c = 4 + p: the
  float32 dropout output and its autocast copy; c = p without dropout). It matches the tensors torch saves for a
  tiny Llama on CPU under bf16 autocast to a few percent (``tests/test_memory_estimate.py``). With gradient
  checkpointing each layer keeps only its input (m x h per token) and one layer's full activations live again
  during its recompute.
* **logits** ``[tokens x vocab]``, which dominate for small models with large vocabularies: the 16-bit logits and
  float32 copies of their size. SFT (transformers' loss): the upcast, log-softmax's output and the gradient, 3.
  GRPO (:func:`~stat_pl.modules.grpo_loss.token_logprobs`): the upcast, log-softmax's output and the entropy's two
  temporaries, 4.
* **KV cache** of the largest generation batch, ``2 x layers x kv_heads x head_dim x tokens x bytes``, or with
  vLLM its share, ``gpu_memory_utilization x device memory``.

Training and generation take turns: the KV cache (and vLLM, asleep between uses) is freed before the backward,
activations and gradients before the next generation. So the peak is the resident rows plus the larger phase.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

GIB = 1024**3
FP32 = 4
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: NF4 with double quantisation: 4-bit codes, an 8-bit absmax per 64 weights, a float32 absmax per 256 blocks.
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + FP32 / (64 * 256)
#: What a CUDA process holds before any tensor (context, cuBLAS workspaces): an allowance, not a measurement.
CUDA_CONTEXT_BYTES = GIB // 2
Phase = Literal["resident", "train", "generate", "not counted"]


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-style decoder that memory depends on (a transformers config's fields)."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a ``transformers.PretrainedConfig`` (its text part for a multimodal one)."""
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        heads = text.num_attention_heads
        return cls(
            hidden_size=text.hidden_size,
            intermediate_size=text.intermediate_size,
            num_layers=text.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
            vocab_size=text.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
        )

    def projections(self) -> dict[str, tuple[int, int]]:
        """Each layer's linear modules: name -> (in, out) features (the names PEFT's ``target_modules`` use)."""
        h, i, q, kv = self.hidden_size, self.intermediate_size, self.num_heads * self.head_dim, self.kv_width
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def kv_width(self) -> int:
        return self.num_kv_heads * self.head_dim

    def linear_params(self) -> int:
        """Parameters of the decoder's linear layers: what bitsandbytes quantises."""
        return self.num_layers * sum(n * m for n, m in self.projections().values())

    def other_params(self) -> int:
        """Embeddings, an untied LM head and the RMSNorm weights: kept in floating point. (Biases are ignored.)"""
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return embeddings + (2 * self.num_layers + 1) * self.hidden_size

    def parameter_count(self) -> int:
        return self.linear_params() + self.other_params()


def base_weight_bytes(shape: ModelShape, quantization: str, compute_dtype: str) -> int:
    """The frozen base in its storage dtype on the device (see the module docstring)."""
    if quantization == "none":
        return shape.parameter_count() * DTYPE_BYTES[compute_dtype]
    if quantization == "nf4":
        linear = round(shape.linear_params() * NF4_BYTES_PER_PARAM)
    elif quantization == "int8":
        row_scales = shape.num_layers * sum(out for _, out in shape.projections().values()) * FP32
        linear = shape.linear_params() + row_scales
    else:
        raise ValueError(f"unknown quantization {quantization!r}; use 'none', 'nf4' or 'int8'")
    return linear + shape.other_params() * FP32  # prepare_model_for_kbit_training upcasts the rest


def lora_targets(shape: ModelShape, target_modules: list[str], key: str) -> dict[str, tuple[int, int]]:
    """The (in, out) of each LoRA target; an unknown name is an error naming ``key``."""
    projections = shape.projections()
    unknown = sorted(set(target_modules) - set(projections))
    if unknown:
        raise ValueError(
            f"{key}: {unknown} are not projections of a Llama-style layer; use names of {list(projections)}"
        )
    return {name: projections[name] for name in target_modules}


def lora_parameter_count(shape: ModelShape, r: int, targets: dict[str, tuple[int, int]]) -> int:
    """``r x (in + out)`` per target module per layer."""
    return shape.num_layers * sum(r * (n + m) for n, m in targets.values())


def optimizer_state_bytes_per_param(optimizer_class: str) -> int:
    """AdamW's two moments: float32 each, or 1 byte each in bitsandbytes' 8-bit optimizers (``...8bit``)."""
    return 2 if "8bit" in optimizer_class.lower() else 2 * FP32


@dataclass(frozen=True)
class Adapter:
    """How the trained part of the student runs: what activations depend on besides the model's sizes."""

    quantized: bool
    compute_dtype: str
    r: int
    targets: dict[str, tuple[int, int]]
    dropout: float


def layer_activation_bytes(shape: ModelShape, adapter: Adapter) -> int:
    """Bytes one decoder layer saves for the backward per token (the count in the module docstring)."""
    p = DTYPE_BYTES[adapter.compute_dtype]
    m = FP32 if adapter.quantized else p
    q = shape.num_heads * shape.head_dim
    norms = 2 * FP32 * shape.hidden_size
    attention = p * (2 * q + 2 * shape.kv_width) + FP32 * shape.num_heads
    mlp = 3 * m * shape.intermediate_size
    per_input = (FP32 + p if p < FP32 else FP32) if adapter.dropout > 0 else p
    lora = sum(per_input * n + p * adapter.r for n, _ in adapter.targets.values())
    return norms + attention + mlp + lora


def activation_bytes(
    shape: ModelShape, adapter: Adapter, tokens: int, checkpointing: bool, repeated_prompt_tokens: int = 0
) -> int:
    """Activations of a micro-batch of ``tokens`` decoder positions, with or without gradient checkpointing.

    ``repeated_prompt_tokens``: GRPO's shared-prompt forward copies each prompt's keys and values into every one of
    its G completions' caches (and SDPA saves a 16-bit copy of them); this counts those positions.
    """
    layer = layer_activation_bytes(shape, adapter)
    if checkpointing:
        kept = FP32 if adapter.quantized else DTYPE_BYTES[adapter.compute_dtype]
        return tokens * (shape.num_layers * kept * shape.hidden_size + layer)
    kv_copy = FP32 if adapter.quantized else DTYPE_BYTES[adapter.compute_dtype]
    kv_copy += DTYPE_BYTES[adapter.compute_dtype]
    repeated = repeated_prompt_tokens * 2 * shape.kv_width * kv_copy
    return shape.num_layers * (tokens * layer + repeated)


#: float32 copies of the logits alive at the peak of the loss (see the module docstring).
SFT_LOGIT_COPIES, GRPO_LOGIT_COPIES = 3, 4


def logit_bytes(shape: ModelShape, compute_dtype: str, tokens: int, float32_copies: int) -> int:
    """Logits of ``tokens`` positions and ``float32_copies`` float32 tensors of their size."""
    return tokens * shape.vocab_size * (DTYPE_BYTES[compute_dtype] + float32_copies * FP32)


def kv_cache_bytes(shape: ModelShape, tokens: int, bytes_per_value: int) -> int:
    """Keys and values of ``tokens`` positions (all sequences together) in every layer."""
    return 2 * shape.num_layers * shape.kv_width * tokens * bytes_per_value


@dataclass(frozen=True)
class Row:
    """One part of the estimate: what it is, its size, the config key that sets it, and when it is alive."""

    name: str
    bytes: int | None  # None: a share of a device whose size is not known
    key: str
    phase: Phase

    @property
    def gib(self) -> float | None:
        return None if self.bytes is None else self.bytes / GIB


@dataclass(frozen=True)
class MemoryEstimate:
    """The rows of one run's estimate; the peak is the resident rows plus the larger of training and generation.

    ``hints``: row key -> an alternative the refusal mentions (gradient checkpointing, with what it would need);
    ``problems``: refusals that do not depend on the total (vLLM's weights not fitting in its own share).
    """

    title: str
    rows: tuple[Row, ...]
    hints: dict[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    def phase_bytes(self, phase: Phase) -> int:
        return sum(row.bytes or 0 for row in self.rows if row.phase == phase)

    @property
    def peak_phase(self) -> Phase:
        """The phase that sets the peak (``resident`` when the run neither trains nor generates beside it)."""
        train, generate = self.phase_bytes("train"), self.phase_bytes("generate")
        return "resident" if train == generate == 0 else "train" if train >= generate else "generate"

    @property
    def total_bytes(self) -> int:
        peak = self.peak_phase
        return self.phase_bytes("resident") + (self.phase_bytes(peak) if peak != "resident" else 0)

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    def largest(self) -> Row:
        """The biggest row of the peak that a config key sets: the one to change first."""
        counted = [row for row in self.rows if row.key and row.phase in ("resident", self.peak_phase)]
        return max(counted, key=lambda row: row.bytes or 0)

    def format_table(self) -> str:
        """A plain-text table: one line per row, then the peak and which phase sets it."""
        width = max(len(row.name) for row in self.rows)
        lines = [self.title, f"  {'part':<{width}}  {'GiB':>8}  {'when':<11}  config key"]
        for row in self.rows:
            size = "?" if row.gib is None else f"{row.gib:.2f}"
            lines.append(f"  {row.name:<{width}}  {size:>8}  {row.phase:<11}  {row.key}")
        phases = "resident" + (f" + {self.peak_phase}" if self.peak_phase != "resident" else "")
        lines.append(f"  {f'peak ({phases})':<{width}}  {self.total_gib:>8.2f}")
        return "\n".join(lines)


def refusal(estimate: MemoryEstimate, device_bytes: int) -> str | None:
    """None when the estimate fits ``device_bytes``; else the one-line error naming the key to change."""
    if estimate.problems:
        return estimate.problems[0]
    if estimate.total_bytes <= device_bytes:
        return None
    row = estimate.largest()
    hint = estimate.hints.get(row.key)
    return (
        f"{estimate.title}: needs about {estimate.total_gib:.1f} GiB of GPU memory at its peak "
        f"({estimate.peak_phase}) but the device has {device_bytes / GIB:.1f} GiB; the largest part is "
        f"{row.name} ({(row.gib or 0):.1f} GiB): change {row.key}" + (f", or {hint}" if hint else "")
    )
