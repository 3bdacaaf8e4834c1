"""The LoRA training loop: answer-only loss, held-out evaluation, early stopping and exact-resume checkpoints.

The held-out loss is measured after every epoch (and at the last step); the adapter with the
lowest one is kept, and `early_stopping` ends a run that stopped improving. Checkpoints hold
everything a run needs to continue bit-for-bit (weights, optimizer, scheduler, RNG states and
the position in the data), so a killed run resumes to the same adapter as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tasks.atomic import atomic_directory, clear_staging
from tasks.finetune_data import IGNORE, Encoded, collate, length_grouped_batches, padded_width
from tasks.finetune_settings import FinetuneConfig, LoraConfig
from tasks.memory_budget import MemoryPlan, plan_memory

if TYPE_CHECKING:
    import torch
    from peft import PeftModel

CHECKPOINT_PREFIX = "step-"


@dataclass(frozen=True)
class Runtime:
    """Where a run trains: CPU with the frozen base weights in float32 or bfloat16 (LoRA weights, gradients and
    optimizer always float32), or CUDA with an autocast dtype and the GPU batch size."""

    device: str
    dtype: str
    batch_size: int
    pad_to_multiple_of: int = 1  # sequence lengths rounded up to this in every batch

    def identity(self) -> dict[str, object]:
        """What of the runtime shapes an adapter's weights; padding only where it pads, so that adapters
        trained before the setting existed keep their keys."""
        fields = asdict(self)
        if self.pad_to_multiple_of == 1:
            del fields["pad_to_multiple_of"]
        return fields


@dataclass
class TrainState:
    """Everything besides tensors that a checkpoint restores to continue a run exactly."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0
    batches: list[list[int]] | None = None
    losses: list[float] = field(default_factory=list)
    tokens: int = 0
    seconds: float = 0.0
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    best_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False
    resumed_from_step: int = 0
    micro_batch_tokens: int = 0  # padded tokens per micro-batch under the memory budget (0: whole batches)
    checkpointing: bool = False


def select_runtime(cfg: FinetuneConfig) -> Runtime:
    """CUDA with the `gpu` settings when available and enabled; otherwise the CPU in `dtype` with `batch_size`,
    bfloat16 batches padded to `pad_to_multiple_of` (oneDNN builds and keeps bfloat16 kernels per shape: with a
    shape per sequence length, memory grew step after step)."""
    import torch

    if cfg.gpu.enabled and torch.cuda.is_available():
        return Runtime("cuda", cfg.gpu.dtype, cfg.gpu.batch_size)
    if cfg.dtype == "bfloat16":
        return Runtime("cpu", "bfloat16", cfg.batch_size, cfg.pad_to_multiple_of)
    return Runtime("cpu", "float32", cfg.batch_size)


def autocast(runtime: Runtime) -> AbstractContextManager:
    """Mixed precision for the forward pass on CUDA; nothing on CPU."""
    import torch

    if runtime.device == "cpu" or runtime.dtype == "float32":
        return nullcontext()
    return torch.autocast(runtime.device, dtype=getattr(torch, runtime.dtype))


def answer_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Mean next-token loss over answer positions, projecting only those positions to the vocabulary.

    The prompt's logits are never used, so skipping them saves the largest matmul of a small model.
    The batch must be right-padded (as `collate` makes it): under causal attention a real token
    never sees the padding after it, so no padding mask is passed, which lets SDPA take its causal
    fast path (probed: same loss and gradients, ~10% faster, less memory).
    Returns the loss tensor and the number of answer tokens it averages over.
    """
    import torch
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=batch["input_ids"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = base.get_output_embeddings()(hidden[:, :-1][keep]).float()
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:  # Gemma-style soft cap, as the model's own forward applies it
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, labels[keep]), int(keep.sum())


def memory_plan(model: torch.nn.Module, train_enc: list[Encoded], cfg: FinetuneConfig, runtime: Runtime,
                pad_id: int) -> MemoryPlan | None:
    """The plan that keeps a CPU run within `finetune.memory_budget_gb` (tasks.memory_budget), which switches
    activation checkpointing on if it needs it; None (whole batches) on a GPU or without a budget.

    The probe forward runs in train mode like the steps, under a saved and restored RNG state, so planning
    changes no dropout mask of the run."""
    import torch

    if runtime.device != "cpu" or cfg.memory_budget_gb is None or not train_enc:
        return None
    longest = max(train_enc, key=lambda e: len(e[0]))
    multiple = runtime.pad_to_multiple_of
    rng = torch.get_rng_state()
    model.train()
    try:
        plan = plan_memory(model, answer_loss, collate([longest], pad_id, multiple), cfg.memory_budget_gb,
                           runtime.batch_size, padded_width(len(longest[0]), multiple))
    finally:
        torch.set_rng_state(rng)
    return plan


def accumulate_gradients(model: torch.nn.Module, rows: list[Encoded], plan: MemoryPlan | None, pad_id: int,
                         runtime: Runtime) -> float:
    """Forward and backward of one optimizer batch, in the plan's micro-batches; returns the batch's mean answer
    loss. Each micro-batch's loss is weighted by its share of the batch's answer tokens, so the accumulated
    gradient is the whole batch's."""
    answer_tokens = sum(sum(label != IGNORE for label in labels[1:]) for _, labels in rows)
    multiple = runtime.pad_to_multiple_of
    parts = plan.micro_batches([padded_width(len(ids), multiple) for ids, _ in rows]) if plan else [slice(None)]
    total = 0.0
    for part in parts:
        batch = {k: v.to(runtime.device) for k, v in collate(rows[part], pad_id, multiple).items()}
        with autocast(runtime):
            loss, n = answer_loss(model, batch)
        (loss * (n / answer_tokens)).backward()
        total += float(loss.detach()) * n
        del batch, loss
        if plan is not None:
            plan.keep_within()
    return total / answer_tokens


def heldout_loss(model: torch.nn.Module, encoded: list[Encoded], batch_size: int, pad_id: int,
                 runtime: Runtime) -> float:
    """Token-weighted mean answer loss over `encoded` (NaN when empty); leaves the model in train mode."""
    import torch

    total, tokens = 0.0, 0
    model.eval()
    with torch.inference_mode(), autocast(runtime):
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(runtime.device) for k, v in collate(encoded[start:start + batch_size], pad_id,
                                                                  runtime.pad_to_multiple_of).items()}
            loss, n = answer_loss(model, batch)
            total += float(loss) * n
            tokens += n
    model.train()
    return total / tokens if tokens else float("nan")


def prepare_model(base_model_dir: str, lora_cfg: LoraConfig, runtime: Runtime,
                  seed: int) -> tuple[PeftModel, float]:
    """The base model with fresh LoRA layers (initialised from `seed`), and the base model's load seconds. On a
    bfloat16 CPU runtime the frozen weights are cast to bfloat16; peft casts each LoRA layer's input to the
    adapter's float32, so the trained weights, their gradients and the optimizer state stay float32."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    load_seconds = time.perf_counter() - started
    torch.manual_seed(seed)
    lora = PeftLoraConfig(task_type=TaskType.CAUSAL_LM, r=lora_cfg.r, lora_alpha=lora_cfg.alpha,
                          lora_dropout=lora_cfg.dropout, target_modules=lora_cfg.target_modules)
    model = get_peft_model(model, lora).to(runtime.device)
    if runtime.device == "cpu" and runtime.dtype == "bfloat16":
        for param in model.parameters():
            if not param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
    return model, load_seconds


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the trainable (LoRA) parameters, by name."""
    return {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad}


def _assign_trainable(model: torch.nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    import torch

    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if params.keys() != tensors.keys():
        raise ValueError("checkpoint tensors do not match the model's trainable parameters")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])


def checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints under `directory`, oldest first (a partial one is never renamed into place)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))


def save_checkpoint(directory: Path, state: TrainState, model: torch.nn.Module, optimizer, scheduler,
                    order_rng: random.Random, best: dict[str, torch.Tensor] | None) -> Path:
    """Write a checkpoint atomically, then drop the older ones."""
    import torch
    from safetensors.torch import save_file

    target = directory / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    with atomic_directory(target) as staging:
        save_file(trainable_tensors(model), str(staging / "adapter.safetensors"))
        if best is not None:
            save_file(best, str(staging / "best_adapter.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "order_rng": order_rng.getstate()}, staging / "training_state.pt")
        (staging / "state.json").write_text(json.dumps(asdict(state)))
    for old in checkpoints(directory)[:-1]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(directory: Path, model: torch.nn.Module, optimizer, scheduler,
                    order_rng: random.Random) -> tuple[TrainState, dict[str, torch.Tensor] | None] | None:
    """Restore the latest checkpoint into the given objects; None when there is none."""
    import torch
    from safetensors.torch import load_file

    found = checkpoints(directory)
    if not found:
        return None
    latest = found[-1]
    _assign_trainable(model, load_file(str(latest / "adapter.safetensors")))
    best_file = latest / "best_adapter.safetensors"
    best = load_file(str(best_file)) if best_file.is_file() else None
    saved = torch.load(latest / "training_state.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    order_rng.setstate(saved["order_rng"])
    return TrainState(**json.loads((latest / "state.json").read_text())), best


def _record_eval(state: TrainState, loss: float, cfg: FinetuneConfig) -> bool:
    """Add a held-out loss; True when it is the best so far. Sets `stopped_early` when patience runs out."""
    state.eval_steps.append(state.step)
    state.eval_losses.append(loss)
    if math.isnan(loss):
        return False
    improved = loss < state.best_loss - cfg.early_stopping.min_delta
    is_best = loss < state.best_loss
    if is_best:
        state.best_loss, state.best_step = loss, state.step
    state.bad_evals = 0 if improved else state.bad_evals + 1
    patience = cfg.early_stopping.patience
    state.stopped_early = patience is not None and state.bad_evals >= patience
    return is_best


def train_lora(model: torch.nn.Module, train_enc: list[Encoded], eval_enc: list[Encoded], cfg: FinetuneConfig,
               runtime: Runtime, seed: int, pad_id: int, checkpoint_dir: Path | None = None,
               progress: bool = True, desc: str = "finetune",
               on_step: Callable[[TrainState], None] | None = None) -> TrainState:
    """The training loop; on return the model holds the best adapter (lowest held-out loss).

    `on_step` is called after every optimizer step (and its checkpoint, if one was due).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    params = [p for p in model.parameters() if p.requires_grad]
    total_steps = cfg.max_steps or math.ceil(len(train_enc) / runtime.batch_size) * cfg.epochs
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * cfg.warmup_ratio), total_steps)
    order_rng = random.Random(seed)
    state, best = TrainState(), None
    if checkpoint_dir is not None:
        clear_staging(checkpoint_dir, CHECKPOINT_PREFIX)
        if not cfg.resume:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        restored = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, order_rng)
        if restored is not None:
            state, best = restored
            state.resumed_from_step = state.step
    lengths = [len(ids) for ids, _ in train_enc]
    plan = memory_plan(model, train_enc, cfg, runtime, pad_id)
    if plan is not None:
        state.micro_batch_tokens, state.checkpointing = plan.token_budget, plan.checkpointing
    model.train()
    bar = tqdm(total=total_steps, initial=state.step, desc=desc, unit="step", disable=not progress)
    while state.step < total_steps and not state.stopped_early:
        if state.batches is None:
            state.batches = length_grouped_batches(lengths, runtime.batch_size, cfg.length_group_pool, order_rng)
            state.batch_index = 0
        started = time.perf_counter()
        rows = [train_enc[i] for i in state.batches[state.batch_index]]
        loss = accumulate_gradients(model, rows, plan, pad_id, runtime)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        state.losses.append(loss)
        state.seconds += time.perf_counter() - started
        state.tokens += sum(len(ids) for ids, _ in rows)
        state.step += 1
        state.batch_index += 1
        epoch_done = state.batch_index == len(state.batches)
        if epoch_done:
            state.epoch += 1
            state.batches = None
        every = cfg.eval_every_steps
        due = epoch_done or state.step == total_steps or bool(every and state.step % every == 0)
        if due and _record_eval(
                state, heldout_loss(model, eval_enc, runtime.batch_size, pad_id, runtime), cfg):
            best = trainable_tensors(model)
        finished = state.step == total_steps or state.stopped_early
        if checkpoint_dir is not None and cfg.checkpoint_every_steps and not finished \
                and state.step % cfg.checkpoint_every_steps == 0:
            save_checkpoint(checkpoint_dir, state, model, optimizer, scheduler, order_rng, best)
        bar.set_postfix(loss=f"{state.losses[-1]:.3f}", tok_s=f"{state.tokens / max(state.seconds, 1e-9):.0f}",
                        epoch=state.epoch)
        bar.update()
        if on_step is not None:
            on_step(state)
    bar.close()
    if best is not None:
        _assign_trainable(model, best)
    return state
