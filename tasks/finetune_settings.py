"""Configuration of the finetune stage (LoRA, RAFT, early stopping, memory budget, GPU); part of the pipeline
config (tasks.settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from tasks.candidates import Mode
from tasks.config_base import Strict
from tasks.cpu_features import auto_dtype

# Training memory by dtype when `memory_budget_gb: auto`: bfloat16 holds half the weights and ~18% fewer
# activation bytes per token, and reaches float32's speed at a smaller budget (README, Memory).
AUTO_MEMORY_BUDGET_GB = {"bfloat16": 1.25, "float32": 2.0}


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class RaftConfig(Strict):
    top_k: int = Field(2, ge=1, description="Passages in each training prompt.")
    gold_probability: float = Field(0.8, ge=0, le=1, description="Share of prompts with the gold passage forced in.")
    max_train_examples: int | None = Field(
        None, ge=1, description="Cap on RAFT training questions (its prompts are ~4x longer than closed-book ones)."
    )


class EarlyStoppingConfig(Strict):
    patience: int | None = Field(
        None, ge=1, description="Stop after this many held-out evaluations without improvement (None: never)."
    )
    min_delta: float = Field(
        0.0, ge=0, description="Eval-loss decrease that counts as an improvement for patience."
    )


class GpuConfig(Strict):
    """Used only when CUDA is available; the CPU path ignores it."""

    enabled: bool = Field(True, description="Train on the GPU when torch.cuda.is_available().")
    dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="Autocast dtype of the forward pass (weights and optimizer stay float32)."
    )
    batch_size: int = Field(32, ge=1, description="Batch size on the GPU (replaces batch_size).")


class FinetuneConfig(Strict):
    lora: LoraConfig = LoraConfig()
    raft: RaftConfig = RaftConfig()
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    batch_size: int = Field(8, ge=1, description="Examples per optimizer step (on CPU split into micro-batches "
                            "that fit memory_budget_gb; the gradient is the whole batch's).")
    memory_budget_gb: Annotated[float, Field(gt=0)] | Literal["auto"] | None = Field(
        "auto", description="CPU training memory: the model's weights, the LoRA optimizer state and the "
        "activations of one micro-batch (tasks.memory_budget measures them). Batches are cut into micro-batches "
        "with gradient accumulation to fit, with activation checkpointing only if one example does not fit "
        "otherwise; the process adds ~1.3 GB of libraries. auto: 1.25 when training in bfloat16, 2.0 in float32 "
        "(resolved at load; each keeps `make demo` near or under 3 GB at >= 0.8x the throughput of whole "
        "batches, README, Memory); None: whole batches."
    )
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="CPU training: the frozen base weights in this dtype; the LoRA weights, their "
        "gradients and the optimizer state stay float32. bfloat16 trains faster in half the weight memory "
        "on CPUs with bf16 instructions (AVX512_BF16, AMX) at a slightly higher held-out loss (README, "
        "Memory); elsewhere torch emulates it, slower than float32. auto: bfloat16 where the CPU has bf16 "
        "instructions, else float32 (resolved at load). The GPU path uses gpu.dtype.")
    pad_to_multiple_of: int = Field(
        64, ge=1, description="bfloat16 CPU training only: sequence lengths in a batch are padded up to a "
        "multiple of this. oneDNN builds and keeps bfloat16 kernels per shape, and with a shape per length the "
        "process grew step after step (README, Memory); 1: no padding.")
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    max_length: int = Field(512, ge=16)
    max_train_examples: int | None = Field(None, ge=1)
    length_group_pool: int = Field(
        16, ge=1, description="Batches are cut from random pools of this many batches sorted by length "
        "(less padding; 1 sorts within a batch only)."
    )
    eval_every_steps: int | None = Field(
        None, ge=1, description="Also measure the held-out loss every this many optimizer steps (the tuner prunes "
        "on it); None: after every epoch and at the last step only.")
    early_stopping: EarlyStoppingConfig = Field(
        EarlyStoppingConfig(), description="Held-out eval loss is measured after every epoch (and at the "
        "last step); the adapter with the lowest one is kept."
    )
    checkpoint_every_steps: int | None = Field(
        None, ge=1, description="Write a resumable checkpoint (adapter, optimizer, scheduler, RNG states, "
        "data position) every N optimizer steps; None: never."
    )
    resume: bool = Field(True, description="Continue an identical interrupted run from its last checkpoint.")
    gpu: GpuConfig = GpuConfig()
    threads: int | None = Field(None, ge=1, description="torch threads; default: all cores.")
    output_root: Path = Path("artifacts/adapters")
    by_mode: dict[Mode, dict[str, Any]] = Field(
        default_factory=dict, description="Settings of one adapter mode over the ones above, e.g. "
        "`by_mode: {raft: {learning_rate: 6.0e-4, lora: {r: 32}}}` (written by `ragtune tune`, which tunes each "
        "candidate's adapter on its own).")

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto(cls, data: Any) -> Any:
        """`dtype: auto` by the CPU, then `memory_budget_gb: auto` by the dtype."""
        if not isinstance(data, dict):
            return data
        dtype = data.get("dtype", "auto")
        if dtype == "auto":
            dtype = auto_dtype()
        budget = data.get("memory_budget_gb", "auto")
        return {**data, "dtype": dtype,
                "memory_budget_gb": AUTO_MEMORY_BUDGET_GB.get(dtype, budget) if budget == "auto" else budget}

    @model_validator(mode="after")
    def _check_by_mode(self) -> FinetuneConfig:
        for mode in self.by_mode:
            try:
                self.for_mode(mode)
            except ValidationError as err:
                problems = "; ".join(f"finetune.by_mode.{mode}.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                     for e in err.errors())
                raise ValueError(problems) from None
        return self

    def examples_cap(self, with_passages: bool) -> int | None:
        """Training questions at most: `raft.max_train_examples` for adapters trained on passages when set, else
        `max_train_examples`."""
        return self.raft.max_train_examples if with_passages and self.raft.max_train_examples \
            else self.max_train_examples

    def for_mode(self, mode: str) -> FinetuneConfig:
        """The settings adapter mode `mode` trains with: these, with its `by_mode` entry merged over them."""
        override = self.by_mode.get(mode)
        if not override:
            return self
        if "by_mode" in override:
            raise ValueError(f"finetune.by_mode.{mode} cannot hold by_mode")
        return FinetuneConfig.model_validate(_merged(self.model_dump(exclude={"by_mode"}), override))


def _merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, section by section (a nested dict updates, anything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
