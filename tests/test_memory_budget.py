"""Training within finetune.memory_budget_gb: the measured plan, micro-batches and activation checkpointing
change how much memory a step holds, never the gradient it computes."""

import gc
import weakref

import pytest
import torch

from tasks import finetuning, memory_budget, training
from tasks.finetune_data import IGNORE, collate
from tasks.finetune_settings import FinetuneConfig, LoraConfig
from tasks.heap import reset_peak_resident
from tasks.memory_budget import (
    BACKWARD_OVERHEAD,
    GIB,
    MemoryBudgetError,
    MemoryPlan,
    plan_memory,
    saved_activation_bytes,
    step_peak_bytes,
    weights_bytes,
)
from tasks.settings import GenerationConfig
from tests.test_finetuning import QA6

CPU = training.Runtime("cpu", "float32", 4)
LORA = LoraConfig(r=4, alpha=8, dropout=0.0)


def _rows() -> list[tuple[list[int], list[int]]]:
    """Four examples of different lengths and answer lengths, longest first (as batches are cut)."""
    rows = []
    for length, answer in ((40, 5), (31, 2), (22, 4), (9, 1)):
        ids = [(7 * i + length) % 300 + 20 for i in range(length)]
        rows.append((ids, [IGNORE] * (length - answer) + ids[-answer:]))
    return rows


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return grads


@pytest.fixture
def lora_model(tiny_model_dir):
    model, _ = training.prepare_model(tiny_model_dir, LORA, CPU, seed=0)
    return model.train()


def test_micro_batches_stay_within_the_token_budget_and_take_at_least_one_row():
    plan = MemoryPlan(budget_gb=1, weights_gb=0.1, bytes_per_token=1, token_budget=100, checkpointing=False)
    assert plan.micro_batches([40, 30, 20, 10]) == [slice(0, 2), slice(2, 4)]
    assert plan.micro_batches([120, 10]) == [slice(0, 1), slice(1, 2)]
    assert plan.micro_batches([10] * 5) == [slice(0, 5)]


@pytest.mark.parametrize("checkpointing", [False, True])
def test_micro_batches_accumulate_the_whole_batch_gradient(lora_model, checkpointing):
    rows = _rows()
    whole_loss = training.accumulate_gradients(lora_model, rows, None, 0, CPU)
    whole = _gradients(lora_model)
    if checkpointing:
        lora_model.get_base_model().activation_checkpointing_enable()
    one_row = MemoryPlan(budget_gb=1, weights_gb=0, bytes_per_token=1, token_budget=40, checkpointing=checkpointing)
    assert len(one_row.micro_batches([len(ids) for ids, _ in rows])) == 4
    micro_loss = training.accumulate_gradients(lora_model, rows, one_row, 0, CPU)
    micro = _gradients(lora_model)
    assert micro_loss == pytest.approx(whole_loss, rel=1e-5)
    assert whole.keys() == micro.keys() and whole
    for name in whole:
        assert torch.allclose(micro[name], whole[name], rtol=1e-4, atol=1e-7), name
    assert any(g.abs().sum() > 0 for g in whole.values())


def test_probe_counts_saved_activations_in_proportion_to_tokens(lora_model):
    rows = _rows()
    one = saved_activation_bytes(lora_model, training.answer_loss, collate(rows[:1], 0))
    two = saved_activation_bytes(lora_model, training.answer_loss, collate([rows[0], rows[0]], 0))
    assert one > 0
    assert two == pytest.approx(2 * one, rel=0.1)
    frozen = sum(p.numel() * p.element_size() for p in lora_model.parameters() if not p.requires_grad)
    assert weights_bytes(lora_model) > frozen  # weights, plus gradient and Adam state of the LoRA parameters


def test_plan_checkpoints_only_when_one_example_does_not_fit_and_names_the_key_when_nothing_fits(lora_model,
                                                                                              monkeypatch):
    """The plan's arithmetic, on the path of a kernel that cannot measure a step's peak (not Linux): checkpointing
    is then planned from the live-tensor estimate."""
    monkeypatch.setattr(memory_budget, "reset_peak_resident", lambda: False)
    probe = collate(_rows()[:1], 0)
    length = probe["input_ids"].shape[1]
    per_token = saved_activation_bytes(lora_model, training.answer_loss, probe) * BACKWARD_OVERHEAD / length
    weights = weights_bytes(lora_model)

    roomy = plan_memory(lora_model, training.answer_loss, probe, 1.0, batch_size=4, max_length=length)
    assert not roomy.checkpointing and roomy.token_budget == 4 * length

    two_rows = (weights + per_token * length * 2.5) / GIB
    tight = plan_memory(lora_model, training.answer_loss, probe, two_rows, batch_size=4, max_length=length)
    assert not tight.checkpointing and 2 * length <= tight.token_budget < 3 * length

    most_of_a_row = (weights + per_token * length * 0.7) / GIB  # 2 layers: one recomputed holds about half
    recompute = plan_memory(lora_model, training.answer_loss, probe, most_of_a_row, batch_size=4, max_length=length)
    assert recompute.checkpointing and recompute.token_budget >= length

    with pytest.raises(MemoryBudgetError, match=r"finetune\.memory_budget_gb.*finetune\.max_length"):
        plan_memory(lora_model, training.answer_loss, probe, weights / 2 / GIB, batch_size=4, max_length=length)


LONG = 512  # tokens per example of the layered model below: long enough that activations dwarf the allocator's noise


@pytest.fixture(scope="module")
def layered_model_dir(tmp_path_factory) -> str:
    """A 16-layer Llama (hidden 256) with random weights: activations of a few hundred MiB per example."""
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("layered-llama")
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=400, hidden_size=256, intermediate_size=768, num_hidden_layers=16,
                                 num_attention_heads=8, num_key_value_heads=4,
                                 max_position_embeddings=LONG)).save_pretrained(out)
    return str(out)


def _long_rows(count: int) -> list[tuple[list[int], list[int]]]:
    rows = []
    for r in range(count):
        ids = [(7 * i + r) % 380 + 20 for i in range(LONG)]
        rows.append((ids, [IGNORE] * (LONG - 16) + ids[-16:]))
    return rows


def _measures_peaks() -> bool:
    return reset_peak_resident()


@pytest.mark.skipif(not _measures_peaks(), reason="the kernel cannot reset this process's peak resident size")
def test_a_checkpointed_plan_sizes_micro_batches_that_really_fit_the_budget(layered_model_dir):
    """With checkpointing the allocator keeps the pages of every recomputed layer (a step here holds several times
    its live tensors), so a plan from the live-tensor estimate put all four examples in one micro-batch, whose
    step went far over the budget. The plan now measures a checkpointed step: its micro-batch fits."""
    model, _ = training.prepare_model(layered_model_dir, LORA, CPU, seed=0)
    model.train()
    rows = _long_rows(4)
    probe = collate(rows[:1], 0)
    one_row = saved_activation_bytes(model, training.answer_loss, probe) * BACKWARD_OVERHEAD
    budget_gb = (weights_bytes(model) + 0.95 * one_row) / GIB  # one example does not fit without checkpointing
    plan = plan_memory(model, training.answer_loss, probe, budget_gb, batch_size=4, max_length=LONG)
    assert plan.checkpointing and plan.token_budget >= LONG
    first = plan.micro_batches([LONG] * 4)[0]
    room = budget_gb * GIB - weights_bytes(model)
    assert step_peak_bytes(model, training.answer_loss, collate(rows[first], 0)) <= room
    loss = training.accumulate_gradients(model, rows, plan, 0, CPU)
    assert loss > 0 and any(p.grad is not None for p in model.parameters())


@pytest.mark.skipif(not _measures_peaks(), reason="the kernel cannot reset this process's peak resident size")
def test_a_measured_step_grows_with_its_tokens_no_faster_than_in_proportion(layered_model_dir):
    """The plan scales the probe's measured step to a micro-batch's tokens: that must not underestimate."""
    model, _ = training.prepare_model(layered_model_dir, LORA, CPU, seed=0)
    model.train()
    memory_budget.set_checkpointing(model, True)
    rows = _long_rows(4)
    one, four = (step_peak_bytes(model, training.answer_loss, collate(rows[:n], 0)) for n in (1, 4))
    assert 2 * one <= four <= 4.5 * one
    assert all(p.grad is None for p in model.parameters())


def test_training_under_a_tight_budget_learns_what_whole_batches_learn(tiny_model_dir, tmp_path):
    base = {"batch_size": 6, "learning_rate": 3e-2, "warmup_ratio": 0.0, "epochs": 2,
            "lora": LORA.model_dump()}
    results = {}
    for name, budget in (("whole", None), ("tight", 1e-3)):
        cfg = FinetuneConfig.model_validate({**base, "memory_budget_gb": budget, "output_root": tmp_path / name})
        results[name] = finetuning.finetune("closed_book", tiny_model_dir, QA6, QA6, "fp", cfg, GenerationConfig(), 0,
                                            progress=False)
    whole, tight = results["whole"], results["tight"]
    assert whole.micro_batch_tokens == 0 and tight.micro_batch_tokens > 0
    assert tight.train_losses == pytest.approx(whole.train_losses, rel=1e-3)
    assert tight.eval_loss == pytest.approx(whole.eval_loss, rel=1e-3)


def test_probe_leaves_nothing_alive(tiny_model_dir):
    """The probe's graph is dropped with the model: an op's output packed as is would hold the graph (and through
    it the weights) in a reference cycle that the garbage collector cannot see."""
    model, _ = training.prepare_model(tiny_model_dir, LORA, CPU, seed=0)
    plan_memory(model.train(), training.answer_loss, collate(_rows()[:1], 0), 1.0, batch_size=4, max_length=40)
    alive = weakref.ref(model.get_base_model().get_output_embeddings().weight)
    del model
    gc.collect()
    assert alive() is None
