"""Fit LoRA training into `finetune.memory_budget_gb`: micro-batches with gradient accumulation, and activation
checkpointing only when a single example does not fit without it.

The activation memory per token is measured, not guessed: one forward pass on the longest training example
(its last `PROBE_TOKENS` tokens) with autograd's saved-tensor hooks counts every byte the backward pass would
keep (the model's own weights excluded), so the plan holds for any architecture and attention kernel. With
checkpointing the saved bytes say little: each layer's activations are recomputed and freed in turn, and the C
allocator keeps the pages of those short-lived tensors (glibc's heap; a checkpointed step held 3-8x its live
tensors here), so that plan is measured as the process's resident peak over one checkpointed forward and
backward of the probe. Each optimizer batch is then cut into micro-batches of at most `token_budget` padded
tokens; their losses are weighted by their share of the batch's answer tokens, so the accumulated gradient is
the full batch's. Between micro-batches, when the process holds more than it did at planning plus the
activation room (pages the C allocator kept from earlier micro-batches of other shapes), the free pages are
handed back: trimming after every micro-batch would hold the line too but re-faults those pages each time (159
instead of 174 tokens/s here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tasks.errors import UserError
from tasks.heap import peak_resident_bytes, reset_peak_resident, resident_bytes, trim_allocator

if TYPE_CHECKING:
    import torch

GIB = 2**30
# The backward pass holds, beyond the saved activations, the gradients of one layer's activations and the
# autograd buffers of the step: a step's measured peak was 1.4-1.6x the saved bytes (SmolLM2-135M, 60-360 tokens
# per row, 1-8 rows), so plans count the saved bytes 1.6 times.
BACKWARD_OVERHEAD = 1.6
ADAM_BYTES_PER_PARAM = 12  # gradient + two moments, float32
PROBE_TOKENS = 256  # the probe holds its activations: short enough to fit any budget that can train at all


class MemoryBudgetError(UserError, ValueError):
    """Even one example with activation checkpointing exceeds the budget."""


@dataclass(frozen=True)
class MemoryPlan:
    """How a run trains within its budget: padded tokens per micro-batch, and whether layers recompute."""

    budget_gb: float
    weights_gb: float
    bytes_per_token: float  # activation bytes per padded token of one forward, overhead included
    token_budget: int
    checkpointing: bool
    resident_limit: int = 0  # bytes: above this between micro-batches, freed pages go back to the system (0: never)

    def micro_batches(self, lengths: list[int]) -> list[slice]:
        """Consecutive slices of a batch (rows of these lengths, padded to their longest) within the token budget."""
        width = max(lengths)
        rows = max(1, self.token_budget // width)
        return [slice(start, min(start + rows, len(lengths))) for start in range(0, len(lengths), rows)]

    def keep_within(self) -> None:
        """Called between micro-batches: trim the allocator's free pages once the process exceeds its limit."""
        if self.resident_limit and resident_bytes() > self.resident_limit:
            trim_allocator()

    def describe(self) -> str:
        how = "activation checkpointing, " if self.checkpointing else ""
        return (f"memory budget {self.budget_gb:g} GB: weights {self.weights_gb:.2f} GB, {how}micro-batches of "
                f"at most {self.token_budget} padded tokens ({self.bytes_per_token / 2**20:.2f} MiB per token)")


def saved_activation_bytes(model: torch.nn.Module, loss_fn, batch: dict[str, torch.Tensor]) -> int:
    """Bytes autograd keeps for the backward pass of `loss_fn(model, batch)`, parameters excluded.

    Tensors are kept until the probe returns (so a freed one's address cannot be taken by another and be
    miscounted as the same), as detached views: an op's own output packed as is would hold its graph node in a
    reference cycle that no collector sees, and keep the model alive. The graph is dropped without a backward.
    """
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen:
            seen.add(ptr)
            total += storage.nbytes()
        return tensor.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss_fn(model, batch)
    return total


def weights_bytes(model: torch.nn.Module) -> int:
    """The parameters, plus gradient and Adam state for the trainable ones."""
    total = 0
    for p in model.parameters():
        total += p.numel() * p.element_size()
        if p.requires_grad:
            total += p.numel() * ADAM_BYTES_PER_PARAM
    return total


def set_checkpointing(model: torch.nn.Module, enabled: bool) -> None:
    """Switch activation checkpointing of the (LoRA-wrapped) model's layers on or off."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if enabled:
        base.activation_checkpointing_enable()
    else:
        base.activation_checkpointing_disable()


def step_peak_bytes(model: torch.nn.Module, loss_fn, batch: dict[str, torch.Tensor]) -> int | None:
    """Resident bytes one forward and backward of `batch` adds at its peak, as the kernel counts them; None where
    the kernel cannot say (not Linux). The gradients it leaves are dropped."""
    trim_allocator()
    before = resident_bytes()
    if not reset_peak_resident():
        return None
    loss, _ = loss_fn(model, batch)
    loss.backward()
    peak = peak_resident_bytes()
    del loss
    model.zero_grad(set_to_none=True)
    trim_allocator()
    return max(peak - before, 0)


def _checkpointed_bytes_per_token(model: torch.nn.Module, loss_fn, probe: dict[str, torch.Tensor],
                                  per_token: float) -> float:
    """Switches checkpointing on; bytes per token of a checkpointed step: the live-tensor estimate (one layer
    recomputed, every layer's input kept) or, where the kernel can measure it, the step's resident peak if
    larger (it is, several times, under glibc)."""
    config = getattr(model, "config", None)
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(getattr(config, "text_config", None),
                                                                      "num_hidden_layers", 1) or 1)
    estimate = per_token / layers + layers * (getattr(config, "hidden_size", 0) or 0) * 4
    set_checkpointing(model, True)
    measured = step_peak_bytes(model, loss_fn, probe)
    return estimate if measured is None else max(estimate, measured / int(probe["input_ids"].numel()))


def plan_memory(model: torch.nn.Module, loss_fn, probe: dict[str, torch.Tensor], budget_gb: float,
                batch_size: int, max_length: int) -> MemoryPlan:
    """The plan for `model` (LoRA layers attached) given one probe batch of the longest example.

    Without checkpointing when at least one full example fits; otherwise with it (left switched on in the model),
    where a forward keeps only each layer's input and the backward recomputes one layer at a time.
    """
    probe = {name: tensor[:, -PROBE_TOKENS:] for name, tensor in probe.items()}  # the answer is at the end
    tokens = int(probe["input_ids"].numel())
    per_token = saved_activation_bytes(model, loss_fn, probe) * BACKWARD_OVERHEAD / tokens
    trim_allocator()
    weights = weights_bytes(model)
    room = budget_gb * GIB - weights
    limit = resident_bytes() + max(int(room), 0)  # the weights are resident now: the probe read them all
    full = int(room // per_token) if room > 0 else 0
    if full >= max_length:
        return MemoryPlan(budget_gb, weights / GIB, per_token, min(full, batch_size * max_length), False, limit)
    per_token_ckpt = _checkpointed_bytes_per_token(model, loss_fn, probe, per_token)
    recomputed = int(room // per_token_ckpt) if room > 0 else 0
    if recomputed >= max_length:
        return MemoryPlan(budget_gb, weights / GIB, per_token_ckpt, min(recomputed, batch_size * max_length), True,
                          limit)
    set_checkpointing(model, False)
    need = (weights + per_token_ckpt * max_length) / GIB
    raise MemoryBudgetError(
        f"finetune.memory_budget_gb: {budget_gb:g} GB cannot hold this model's training (weights and optimizer "
        f"{weights / GIB:.2f} GB, one example of finetune.max_length {max_length} tokens needs "
        f"{per_token_ckpt * max_length / GIB:.2f} GB more even with activation checkpointing); raise "
        f"finetune.memory_budget_gb to at least {need:.1f} or lower finetune.max_length")
