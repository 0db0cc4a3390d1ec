"""What a LightningModule that trains a (Q)LoRA adapter needs whatever its objective: the model, checkpoints, export.

The model is built in ``configure_model`` (quantised weights are placed on the device they load on),
checkpoints hold only the trainable adapter weights (the frozen base is reloaded from its source),
``generation_model`` is what engines sample from, and the adapter is written with PEFT's
``save_pretrained`` when fitting ends. ``GRPOModule`` builds on it; ``SFTModule`` holds the same code
today and can move onto it.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from stat_pl.models import LoRAConfig, Quantization, dequantized_copy, load_causal_lm, sync_lora


class AdapterModule(L.LightningModule):
    """A causal LM + a trainable PEFT LoRA adapter.

    Args:
        model: Hub name, local folder, GGUF file or ``offline:smollm2-135m-instruct``.
        quantization: ``"nf4"`` for QLoRA (the paper), ``"int8"``, or ``"none"``.
        compute_dtype: bitsandbytes compute dtype (the paper: bfloat16; use float32 on a CPU without bf16).
        lora: adapter settings; the defaults are the paper's.
        init_adapter: start from this saved PEFT adapter (trainable) instead of a fresh one; ``lora`` is then
            not used.
        gradient_checkpointing: trade compute for memory on long sequences.
        adapter_dir: where :meth:`on_fit_end` saves the adapter; default ``<default_root_dir>/adapter``.
    """

    def __init__(self, model: str, quantization: Quantization = "nf4", compute_dtype: str = "bfloat16",
                 lora: LoRAConfig | None = None, init_adapter: str | None = None,
                 gradient_checkpointing: bool = False, adapter_dir: str | None = None) -> None:
        super().__init__()
        self.model_name = model
        self.quantization = quantization
        self.compute_dtype = compute_dtype
        self.lora = lora or LoRAConfig()
        self.init_adapter = init_adapter
        self.gradient_checkpointing = gradient_checkpointing
        self.adapter_dir = adapter_dir
        self.model: torch.nn.Module | None = None
        self._generation_copy: list[torch.nn.Module] = []  # a list, so the copy is not a registered submodule

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = load_causal_lm(
            self.model_name,
            quantization=self.quantization,
            compute_dtype=self.compute_dtype,
            lora=self.lora,
            gradient_checkpointing=self.gradient_checkpointing,
            device=self.device if self.device.type == "cuda" else "cpu",
            init_adapter=self.init_adapter,
        )

    def generation_model(self) -> torch.nn.Module:
        """The model engines generate with: the live model, or on CPU with 4-bit weights a float copy.

        The copy (:func:`~stat_pl.models.dequantized_copy`) is made once and gets the current adapter
        weights at every call: the same effective weights, computed in float32 (bench/README.md: 3.3x
        faster than the 4-bit layers with 2 torch threads on the shared dev CPU).
        """
        if self.quantization != "nf4" or self.device.type != "cpu":
            return self.model
        if not self._generation_copy:
            self._generation_copy.append(dequantized_copy(self.model))
        sync_lora(self.model, self._generation_copy[0])
        return self._generation_copy[0]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def make_optimizer(self, name: str, lr: float, weight_decay: float,
                       betas: tuple[float, float]) -> torch.optim.Optimizer:
        """``"adamw"`` (torch) or ``"paged_adamw_8bit"`` (bitsandbytes, CUDA only; the paper's)."""
        kwargs = {"lr": lr, "weight_decay": weight_decay, "betas": betas}
        if name == "paged_adamw_8bit":
            if not torch.cuda.is_available():
                raise RuntimeError("model.optimizer: paged_adamw_8bit needs CUDA; use 'adamw' on CPU")
            import bitsandbytes as bnb

            return bnb.optim.PagedAdamW8bit(self.trainable_parameters(), **kwargs)
        if name != "adamw":
            raise ValueError(f"model.optimizer: unknown optimizer {name!r}; use 'adamw' or 'paged_adamw_8bit'")
        return torch.optim.AdamW(self.trainable_parameters(), **kwargs)

    # ---- checkpoints and export ------------------------------------------------------------------
    def state_dict(self, *args, **kwargs) -> dict:
        """Only the trainable parameters: the frozen (quantised) base is reloaded from its source."""
        full = super().state_dict(*args, **kwargs)
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        prefix = kwargs.get("prefix", "")
        return {k: v for k, v in full.items() if k.removeprefix(prefix) in trainable}

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Load adapter weights into the freshly built model; every saved tensor must find its parameter."""
        missing_in_model = set(state_dict) - set(super().state_dict())
        if missing_in_model:
            raise KeyError(f"checkpoint has weights this model lacks: {sorted(missing_in_model)[:5]} ... "
                           "was it made for another model or LoRA config?")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def on_fit_end(self) -> None:
        if self.trainer.is_global_zero:
            self.save_adapter(self.adapter_path())

    def adapter_path(self) -> Path:
        return Path(self.adapter_dir or Path(self.trainer.default_root_dir) / "adapter")

    def save_adapter(self, path: str | Path) -> Path:
        """Write the adapter with PEFT's ``save_pretrained`` (loadable by plain PEFT on the base model)."""
        self.model.save_pretrained(str(path))
        return Path(path)
