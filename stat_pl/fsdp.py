"""FSDP-QLoRA through Lightning's ``FSDPStrategy``: the one place that knows about fully sharded training.

Use it as ``trainer.strategy: {class_path: stat_pl.fsdp.QLoRAFSDPStrategy, init_args: {...}}`` (the
``configs/paper/*_fsdp.yaml`` overlays do). It follows the FSDP-QLoRA recipe of bitsandbytes, PEFT and Answer.AI:

* **Uniform flat parameters.** FSDP flattens each wrapped unit's parameters into one tensor of one dtype. The student
  is loaded for FSDP (:func:`stat_pl.models.load_causal_lm` with ``sharded=True``): NF4 weights stored in the compute
  dtype (``bnb_4bit_quant_storage``), every other frozen weight (norms, embeddings, head) kept in the compute dtype
  instead of PEFT's float32 upcast; the LoRA leaves stay float32 in units of their own.
* **Wrap policy.** PEFT's ``fsdp_auto_wrap_policy``, built from the student when Lightning wraps it: each decoder
  layer (the model's ``_no_split_modules``) and each trainable LoRA leaf is a unit; the embeddings, final norm and
  head stay in the root unit. ``use_orig_params=True`` (Lightning's default) lets frozen and trainable weights share
  a unit and keeps the optimizer on the named LoRA parameters.
* **Activation checkpointing** of the decoder layers through the strategy when ``student.gradient_checkpointing`` is
  on (the loader then leaves transformers' own checkpointing off).
* **Adapter-only checkpoints.** Only the trainable weights are gathered (full state dict, rank 0) into a checkpoint
  and loaded back on resume; the frozen base is reloaded from its source, as without FSDP.
* **Loading.** Each rank loads the student onto its own device (bitsandbytes quantises while loading) rather than on
  the meta device with ``sync_module_states``: the NF4 base of a 3B model is about 2 GB, meta-device loading of
  ``Params4bit`` needs bitsandbytes' own materialisation, and a per-rank load is what the single-GPU path does.
  ``sync_module_states=True`` still broadcasts rank 0's weights, so every rank starts from the same LoRA init.
* **Manual optimisation** (:class:`~stat_pl.modules.grpo.GRPOModule`): FSDP queues its end-of-backward work only for
  a backward of the root unit's output, so a module that calls ``manual_backward`` itself runs its ``training_step``
  outside the root and each of its model calls inside one through :func:`sharded_call`.

On a CPU, Lightning refuses ``strategy: fsdp`` but takes this subclass, and FSDP runs over gloo (docs/fsdp.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from peft.utils.other import fsdp_auto_wrap_policy
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_PREFIX
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.fsdp._common_utils import FSDP_PREFIX

from stat_pl.errors import UserError
from stat_pl.models import torch_dtype

T = TypeVar("T")


class QLoRAFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` for a (Q)LoRA :class:`~stat_pl.modules.adapter_module.AdapterModule`.

    The wrap policy and activation checkpointing come from the student, so a config names only how to shard.

    Args:
        sharding_strategy: ``"FULL_SHARD"`` (parameters, gradients and optimizer state sharded), ``"SHARD_GRAD_OP"``,
            ``"NO_SHARD"`` or ``"HYBRID_SHARD"`` (FSDP's ``ShardingStrategy``).
        cpu_offload: keep the parameter shards on the CPU between uses (less GPU memory, slower).
        limit_all_gathers: throttle FSDP's prefetching all-gathers (FSDP's default; less peak memory).
        process_group_backend: ``None`` picks NCCL on GPUs and gloo on CPUs.
    """

    def __init__(
        self,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        cpu_offload: bool = False,
        limit_all_gathers: bool = True,
        process_group_backend: str | None = None,
    ) -> None:
        super().__init__(
            sharding_strategy=sharding_strategy,
            cpu_offload=cpu_offload,
            state_dict_type="full",
            process_group_backend=process_group_backend,
            use_orig_params=True,
            sync_module_states=True,
            limit_all_gathers=limit_all_gathers,
        )

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Build the wrap and checkpointing policies from the student Lightning is about to wrap, then wrap."""
        self.configure_policies(model)
        return super()._setup_model(model)

    def configure_policies(self, model: torch.nn.Module) -> None:
        """The wrap policy (decoder layers, LoRA leaves) and activation checkpointing, from ``model``'s student."""
        student = getattr(model, "model", None)
        if student is None or not hasattr(model, "student"):
            raise UserError(
                "trainer.strategy: QLoRAFSDPStrategy wraps a stat-pl AdapterModule (SFTModule, GRPOModule); "
                f"got {type(model).__name__}"
            )
        self.kwargs["auto_wrap_policy"] = fsdp_auto_wrap_policy(student)
        self._check_mixed_precision(model)
        if model.student.gradient_checkpointing:
            layers = tuple(_decoder_layer_classes(student))
            self._activation_checkpointing_kwargs = {"check_fn": lambda module: isinstance(module, layers)}

    def _check_mixed_precision(self, model: torch.nn.Module) -> None:
        """NF4 weights are bytes stored as ``compute_dtype`` values: an FSDP cast to another dtype corrupts them."""
        mixed = self.mixed_precision_config
        param_dtype = getattr(mixed, "param_dtype", None)
        if (
            model.student.quantization == "nf4"
            and param_dtype is not None
            and param_dtype != torch_dtype(model.compute_dtype)
        ):
            raise UserError(
                f"trainer.precision casts parameters to {param_dtype} but model.init_args.student.compute_dtype is "
                f"{model.compute_dtype}: under FSDP the NF4 storage must be the dtype FSDP computes in; set both to "
                "bf16 (precision: bf16-mixed, compute_dtype: bfloat16) or leave compute_dtype: auto"
            )

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """Automatic optimisation: through the root unit (Lightning's way). Manual: the module's own step, whose model
        calls go through the root one by one (:func:`sharded_call`), so each ``manual_backward`` is of a root output."""
        module = self.lightning_module
        if module.automatic_optimization:
            return super().training_step(*args, **kwargs)
        with self.precision_plugin.train_step_context():
            return module.training_step(*args, **kwargs)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The trainable (adapter) weights, gathered whole onto rank 0 (every rank must call this; others get {})."""
        return gathered_trainable_state(self.model, self.lightning_module, rank0_only=True)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Resume from an adapter-only checkpoint: FSDP loads what is there; the frozen base is already loaded."""
        module = self.lightning_module
        strict = module.strict_loading
        module.strict_loading = False  # the base is never in the checkpoint; the adapter keys are checked below
        try:
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=weights_only)
            if strict:
                check_adapter_keys(set(checkpoint["state_dict"]), trainable_names(module))
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        finally:
            module.strict_loading = strict


def sharded_call(trainer: L.Trainer | None, module: L.LightningModule, call: Callable[[], T]) -> T:
    """``call()``, run inside the FSDP root unit's forward when ``trainer`` trains with FSDP, else directly.

    Why: the root unit holds the embeddings, final norm and head; they are whole only during its forward, and a
    backward of its output is what FSDP finishes (reduce-scatters, gradients in place) at the end. A module that
    calls the model itself (generation, GRPO's forwards) does it through here.
    """
    if trainer is None or not is_fsdp(trainer):
        return call()
    module.forward = call  # what the root unit's forward runs (an instance attribute, removed after)
    try:
        return trainer.strategy.model()
    finally:
        del module.forward


def is_fsdp(trainer: L.Trainer) -> bool:
    """Whether ``trainer`` shards the model with FSDP (decided by ``trainer.strategy``); Lightning's own
    ``FSDPStrategy`` (``strategy: fsdp``) is refused, naming the key: it has no wrap policy for a QLoRA student, and
    FSDP would stop later on flat parameters of mixed dtypes."""
    strategy = trainer.strategy
    if isinstance(strategy, FSDPStrategy) and not isinstance(strategy, QLoRAFSDPStrategy):
        raise UserError(
            f"trainer.strategy: {type(strategy).__name__} cannot shard a QLoRA student (no wrap policy for its decoder "
            "layers and LoRA leaves); use {class_path: stat_pl.fsdp.QLoRAFSDPStrategy} (docs/fsdp.md)"
        )
    return isinstance(strategy, QLoRAFSDPStrategy)


def trainable_names(module: torch.nn.Module) -> set[str]:
    """Names of ``module``'s trainable parameters as in a state dict (FSDP's and checkpointing's wrappers left out)."""
    return {_clean(name) for name, p in module.named_parameters() if p.requires_grad}


def gathered_trainable_state(
    root: torch.nn.Module, module: torch.nn.Module, rank0_only: bool
) -> dict[str, torch.Tensor]:
    """``module``'s trainable weights, whole, from the FSDP ``root`` that wraps it: a collective (every rank calls it);
    with ``rank0_only`` the other ranks get ``{}``. From a GPU they come to the CPU (FSDP's offload, a unit at a time);
    on a CPU, FSDP's offload crashed the process (a segmentation fault in torch 2.13), so it is off there."""
    from torch.distributed.fsdp import FullStateDictConfig, StateDictType

    trainable = trainable_names(module)
    on_gpu = next(root.parameters()).device.type != "cpu"
    config = FullStateDictConfig(offload_to_cpu=on_gpu, rank0_only=rank0_only)
    with FullyShardedDataParallel.state_dict_type(root, StateDictType.FULL_STATE_DICT, config):
        full = root.state_dict()
    return {k: v for k, v in full.items() if k in trainable}


def check_adapter_keys(saved: set[str], trainable: set[str], known: set[str] | None = None) -> None:
    """Every trainable weight in the checkpoint, and nothing the model lacks (``known``: its state dict's names,
    default the trainable ones): a checkpoint of another model or LoRA config is refused, naming the keys."""
    unexpected, missing = saved - (trainable if known is None else known), trainable - saved
    if unexpected or missing:
        raise KeyError(
            f"checkpoint does not fit this model's adapter: weights it lacks {sorted(unexpected)[:5]}, "
            f"adapter weights missing from it {sorted(missing)[:5]}; was it made for another model or LoRA config?"
        )


def _decoder_layer_classes(student: torch.nn.Module) -> set[type[torch.nn.Module]]:
    """The classes the model names as never to be split (its decoder layers), found among its modules."""
    names = set(getattr(student, "_no_split_modules", None) or student.get_base_model()._no_split_modules)
    return {type(m) for m in student.modules() if type(m).__name__ in names}


def _clean(name: str) -> str:
    return name.replace(FSDP_PREFIX, "").replace(_CHECKPOINT_PREFIX, "")
