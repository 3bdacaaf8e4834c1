"""CPU training with the frozen base weights in bfloat16: the LoRA weights and their optimizer stay float32,
every batch is padded to a few shapes (oneDNN keeps a bfloat16 kernel per shape), padding changes no loss, and
the dtype and padding name the adapter."""

import pytest
import torch

from tasks import finetuning, training
from tasks.cpu_features import native_bf16
from tasks.finetune_data import collate
from tasks.finetune_settings import FinetuneConfig, LoraConfig
from tasks.settings import ConfigError, load_config
from tests.test_finetuning import GEN, IDX
from tests.test_memory_budget import _gradients, _rows

LORA = LoraConfig(r=4, alpha=8, dropout=0.0)


def test_auto_dtype_resolves_at_load_to_what_the_cpu_multiplies_natively(tmp_path):
    assert FinetuneConfig().dtype == ("bfloat16" if native_bf16() else "float32")
    assert FinetuneConfig(dtype="float32").dtype == "float32"
    config = tmp_path / "bad.yaml"
    config.write_text("finetune: {dtype: float16}\n")
    with pytest.raises(ConfigError, match="finetune.dtype"):
        load_config(str(config))


def test_only_bfloat16_cpu_training_pads():
    assert training.select_runtime(FinetuneConfig(dtype="bfloat16", pad_to_multiple_of=32, gpu={"enabled": False},
                                                  batch_size=4)) == training.Runtime("cpu", "bfloat16", 4, 32)
    assert training.select_runtime(FinetuneConfig(dtype="float32", gpu={"enabled": False},
                                                  batch_size=4)) == training.Runtime("cpu", "float32", 4)


def test_padding_to_a_multiple_changes_neither_the_loss_nor_the_gradient(tiny_model_dir):
    model, _ = training.prepare_model(tiny_model_dir, LORA, training.Runtime("cpu", "float32", 4), seed=0)
    model.train()
    losses, grads = [], []
    for multiple in (1, 64):
        batch = collate(_rows(), 0, multiple)
        assert batch["input_ids"].shape[1] == (40 if multiple == 1 else 64)
        loss, _ = training.answer_loss(model, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append(_gradients(model))
    assert torch.allclose(losses[0], losses[1], atol=1e-6)
    for name, grad in grads[0].items():
        assert torch.allclose(grad, grads[1][name], atol=1e-6), name


def test_bfloat16_training_keeps_lora_in_float32_pads_every_batch_and_learns(tiny_model_dir):
    runtime = training.Runtime("cpu", "bfloat16", 4, 16)
    model, _ = training.prepare_model(tiny_model_dir, LORA, runtime, seed=0)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trainable == {torch.float32}
    widths = []
    embed = model.get_base_model().get_input_embeddings()
    embed.register_forward_pre_hook(lambda _m, args: widths.append(args[0].shape[1]))
    cfg = FinetuneConfig(max_steps=12, batch_size=4, learning_rate=3e-2, warmup_ratio=0.0, memory_budget_gb=None,
                         lora=LORA)
    state = training.train_lora(model, _rows(), _rows(), cfg, runtime, seed=0, pad_id=0, progress=False)
    assert widths and all(w % 16 == 0 for w in widths)
    assert sum(state.losses[-3:]) < 0.7 * sum(state.losses[:3])
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


def test_the_adapter_key_names_the_dtype_and_the_padding_only_where_it_pads(tiny_model_dir):
    def key(cfg: FinetuneConfig) -> str:
        cfg = cfg.model_copy(update={"gpu": cfg.gpu.model_copy(update={"enabled": False})})
        return finetuning.adapter_key("raft", tiny_model_dir, "fp", IDX, cfg, GEN, 13, training.select_runtime(cfg))

    float32 = key(FinetuneConfig(dtype="float32"))
    assert key(FinetuneConfig(dtype="float32", pad_to_multiple_of=8)) == float32  # float32 does not pad
    bfloat16 = key(FinetuneConfig(dtype="bfloat16"))
    assert bfloat16 != float32
    assert key(FinetuneConfig(dtype="bfloat16", pad_to_multiple_of=8)) != bfloat16
