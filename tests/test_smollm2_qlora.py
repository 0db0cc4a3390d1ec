"""The real model: QLoRA (NF4) fit of SmolLM2-135M-Instruct on real MATH rows, on CPU.

Precision is what ``auto`` picks on this CPU (bf16 where it is native, float32 where it would be emulated: 14 steps
took ~10 minutes in emulated bf16 on an AVX2 CPU), and the reload uses the same compute dtype.
"""

import functools

import lightning as L
import pytest
import torch

from stat_pl.data.sft_datamodule import SFTDataModule
from stat_pl.models import StudentConfig, torch_dtype
from stat_pl.modules.sft import SFTModule
from stat_pl.precision import resolve_precision
from stat_pl.records import RecordSource

pytestmark = pytest.mark.slow


class LossHistory(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_qlora_overfits_real_math_rows_and_the_adapter_reloads_with_plain_peft(smollm2_dir, shared_data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    precision = resolve_precision("cpu")
    module = SFTModule(
        StudentConfig(str(smollm2_dir), quantization="nf4"),
        warmup_ratio=0.0,
        optimizer=functools.partial(torch.optim.AdamW, lr=2e-3, weight_decay=0.1),
    )
    data = SFTDataModule(
        str(smollm2_dir),
        train=[RecordSource(str(shared_data / "math/train.jsonl"), limit=2)],
        batch_size=2,
        samples_per_epoch=2,
        max_length=256,
    )
    history = LossHistory()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=14,
        precision=precision.lightning,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[history],
    )
    trainer.fit(module, data)
    assert module.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.__class__.__name__ == "Linear4bit"
    first, last = history.losses[0], sum(history.losses[-3:]) / 3
    assert last < 0.5 * first, history.losses  # one small batch, overfit

    base = AutoModelForCausalLM.from_pretrained(
        smollm2_dir,
        device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype(precision.dtype),
            bnb_4bit_quant_storage=torch_dtype(precision.dtype),
        ),
    )
    for layer in base.modules():  # same 4-bit kernel as the trained module (not bnb's packed inference one)
        if hasattr(layer, "support_avx512bf16_for_cpu"):
            layer.support_avx512bf16_for_cpu = False
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    batch = next(iter(data.train_dataloader()))
    module.model.eval()
    with torch.no_grad():
        trained = module(batch["input_ids"], batch["attention_mask"]).float()
        plain = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    assert torch.allclose(trained, plain, atol=1e-2), (trained - plain).abs().max()
