"""Finetune stage: LoRA supervised finetuning of the SLM, closed-book or RAFT-style.

- closed_book: prompt = question alone, target = answer (the `finetuned` candidate).
- raft: prompt = question + `raft.top_k` retrieved passages, the gold passage forced in with
  probability `raft.gold_probability` and only distractors otherwise, target = answer (the
  `hybrid` candidate; Zhang et al. 2024).
The loss covers the answer tokens only (and only they are projected to the vocabulary); batches
group similar lengths and are padded to their own longest sequence.
The held-out loss is measured after every epoch (and at the last step); the adapter with the
lowest one is kept, and `early_stopping` ends a run that stopped improving. Checkpoints hold
everything a run needs to continue bit-for-bit (weights, optimizer, scheduler, RNG states and
the position in the data), so a killed run resumes to the same adapter as an uninterrupted one.
An adapter is reused when the same data, base model, index and config were trained before.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd

from tasks.indexing import Retriever
from tasks.metrics import normalize_answer
from tasks.prompts import build_messages, render_prompt
from tasks.settings import FinetuneConfig, GenerationConfig, LoraConfig

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

Mode = Literal["closed_book", "raft"]
Encoded = tuple[list[int], list[int]]
IGNORE = -100
CHECKPOINT_PREFIX = "step-"
# Config keys that change where or how often things are written, never the trained weights.
RUNTIME_ONLY_KEYS = {"output_root", "threads", "checkpoint_every_steps", "resume", "gpu"}
PROMPT_KEYS = {"system_prompt", "context_instruction"}  # the generation settings that shape training prompts


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    has_gold: bool


@dataclass(frozen=True)
class Runtime:
    """Where a run trains: CPU in float32, or CUDA with an autocast dtype and the GPU batch size."""

    device: str
    dtype: str
    batch_size: int


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


@dataclass
class FinetuneResult:
    mode: str
    adapter_dir: str
    train_examples: int
    steps: int
    train_losses: list[float] = field(default_factory=list)
    eval_loss: float = float("nan")
    perplexity: float = float("nan")
    train_tokens: int = 0
    seconds: float = 0.0
    tokens_per_second: float = 0.0
    gold_rate: float = float("nan")
    reused: bool = False
    eval_steps: list[int] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    best_step: int = 0
    stopped_early: bool = False
    resumed_from_step: int = 0
    model_load_seconds: float = float("nan")
    device: str = "cpu"
    batch_size: int = 0

    @property
    def final_train_loss(self) -> float:
        tail = self.train_losses[-max(1, len(self.train_losses) // 10):]
        return sum(tail) / len(tail) if tail else float("nan")


def _chunks_by_doc(retriever: Retriever) -> dict[str, list[str]]:
    """Chunk texts per document, in index order, from the index version's chunk table."""
    chunks = retriever.chunk_table()
    by_doc: dict[str, list[str]] = {}
    for doc_id, text in zip(chunks["doc_id"], chunks["text"], strict=True):
        by_doc.setdefault(doc_id, []).append(text)
    return by_doc


def _gold_chunk(texts: list[str], answers: list[str]) -> str | None:
    """The gold document's first chunk that contains an accepted answer (else its first chunk)."""
    wanted = [normalize_answer(a) for a in answers]
    for text in texts:
        if any(w and w in normalize_answer(text) for w in wanted):
            return text
    return texts[0] if texts else None


def raft_passages(question_hits: list, gold: str | None, gold_doc: str, k: int, include_gold: bool,
                  rng: random.Random) -> list[str]:
    """k passages: retrieved distractors (not from the gold doc), plus the gold passage if included."""
    distractors = [h.text for h in question_hits if h.doc_id != gold_doc]
    passages = ([gold] if include_gold and gold else []) + distractors
    passages = passages[:k]
    rng.shuffle(passages)
    return passages


def build_examples(qa: pd.DataFrame, mode: Mode, tokenizer: PreTrainedTokenizerBase, gen_cfg: GenerationConfig,
                   cfg: FinetuneConfig, retriever: Retriever | None, seed: int) -> list[Example]:
    """Training/eval examples in the shared prompt format; the first accepted answer is the target."""
    rng = random.Random(seed)
    hits: list[list] = [[] for _ in range(len(qa))]
    doc_chunks: dict[str, list[str]] = {}
    if mode == "raft":
        if retriever is None:
            raise ValueError("raft mode needs a retriever (build the index first)")
        hits = retriever.search(qa["question"].tolist(), cfg.raft.top_k + 2)
        doc_chunks = _chunks_by_doc(retriever)
    examples = []
    for row, q_hits in zip(qa.itertuples(index=False), hits, strict=True):
        passages, has_gold = None, False
        if mode == "raft":
            has_gold = rng.random() < cfg.raft.gold_probability
            gold = _gold_chunk(doc_chunks.get(row.doc_id, []), list(row.answer))
            passages = raft_passages(q_hits, gold, row.doc_id, cfg.raft.top_k, has_gold, rng)
        prompt = render_prompt(tokenizer, build_messages(row.question, passages, gen_cfg))
        examples.append(Example(prompt, row.answer[0], has_gold))
    return examples


def encode_example(example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Encoded:
    """input_ids and labels; labels mask the prompt so the loss covers the answer (and EOS) only."""
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example.answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids[: max_length // 2]
    prompt_ids = prompt_ids[-(max_length - len(answer_ids)):]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def collate(encoded: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its own longest sequence."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


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


def length_grouped_batches(lengths: list[int], batch_size: int, pool_batches: int,
                           rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length: sort within random pools of `pool_batches` batches, shuffle batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def select_runtime(cfg: FinetuneConfig) -> Runtime:
    """CUDA with the `gpu` settings when available and enabled; otherwise CPU float32 with `batch_size`."""
    import torch

    if cfg.gpu.enabled and torch.cuda.is_available():
        return Runtime("cuda", cfg.gpu.dtype, cfg.gpu.batch_size)
    return Runtime("cpu", "float32", cfg.batch_size)


def autocast(runtime: Runtime) -> AbstractContextManager:
    """Mixed precision for the forward pass on CUDA; nothing on CPU."""
    import torch

    if runtime.device == "cpu" or runtime.dtype == "float32":
        return nullcontext()
    return torch.autocast(runtime.device, dtype=getattr(torch, runtime.dtype))


def heldout_loss(model: torch.nn.Module, encoded: list[Encoded], batch_size: int, pad_id: int,
                 runtime: Runtime) -> float:
    """Token-weighted mean answer loss over `encoded` (NaN when empty); leaves the model in train mode."""
    import torch

    total, tokens = 0.0, 0
    model.eval()
    with torch.inference_mode(), autocast(runtime):
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(runtime.device) for k, v in collate(encoded[start:start + batch_size], pad_id).items()}
            loss, n = answer_loss(model, batch)
            total += float(loss) * n
            tokens += n
    model.train()
    return total / tokens if tokens else float("nan")


def adapter_key(mode: Mode, base_model_dir: str, fingerprint: str, index_version: str | None,
                cfg: FinetuneConfig, gen_cfg: GenerationConfig, seed: int, runtime: Runtime) -> str:
    """Names an adapter by everything that shapes its weights (not by where or how often it is saved)."""
    payload = json.dumps({"mode": mode, "base": base_model_dir, "fp": fingerprint, "index": index_version,
                          "cfg": cfg.model_dump(mode="json", exclude=RUNTIME_ONLY_KEYS),
                          "gen": gen_cfg.model_dump(mode="json", include=PROMPT_KEYS), "seed": seed,
                          "runtime": asdict(runtime)},
                         sort_keys=True)
    return f"{mode}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def prepare_model(base_model_dir: str, lora_cfg: LoraConfig, runtime: Runtime,
                  seed: int) -> tuple[PeftModel, float]:
    """The base model with fresh LoRA layers (initialised from `seed`), and the base model's load seconds."""
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
    return get_peft_model(model, lora).to(runtime.device), load_seconds


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
    """Write a checkpoint atomically (temp dir + rename), then drop the older ones."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory))
    target = directory / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    try:
        save_file(trainable_tensors(model), str(staging / "adapter.safetensors"))
        if best is not None:
            save_file(best, str(staging / "best_adapter.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "order_rng": order_rng.getstate()}, staging / "training_state.pt")
        (staging / "state.json").write_text(json.dumps(asdict(state)))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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
        for stale in checkpoint_dir.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if not cfg.resume:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
        restored = load_checkpoint(checkpoint_dir, model, optimizer, scheduler, order_rng)
        if restored is not None:
            state, best = restored
            state.resumed_from_step = state.step
    lengths = [len(ids) for ids, _ in train_enc]
    model.train()
    bar = tqdm(total=total_steps, initial=state.step, desc=desc, unit="step", disable=not progress)
    while state.step < total_steps and not state.stopped_early:
        if state.batches is None:
            state.batches = length_grouped_batches(lengths, runtime.batch_size, cfg.length_group_pool, order_rng)
            state.batch_index = 0
        started = time.perf_counter()
        cpu_batch = collate([train_enc[i] for i in state.batches[state.batch_index]], pad_id)
        batch = {k: v.to(runtime.device) for k, v in cpu_batch.items()}
        with autocast(runtime):
            loss, _ = answer_loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        state.losses.append(float(loss.detach()))
        state.seconds += time.perf_counter() - started
        state.tokens += int(cpu_batch["attention_mask"].sum())
        state.step += 1
        state.batch_index += 1
        epoch_done = state.batch_index == len(state.batches)
        if epoch_done:
            state.epoch += 1
            state.batches = None
        if (epoch_done or state.step == total_steps) and _record_eval(
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


def _save_adapter(model: PeftModel, result: FinetuneResult, out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        (staging / "result.json").write_text(json.dumps(asdict(result), indent=2))
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def finetune(mode: Mode, base_model_dir: str, train_qa: pd.DataFrame, eval_qa: pd.DataFrame, fingerprint: str,
             cfg: FinetuneConfig, gen_cfg: GenerationConfig, seed: int,
             retriever: Retriever | None = None, progress: bool = True,
             on_step: Callable[[TrainState], None] | None = None) -> FinetuneResult:
    """Train a LoRA adapter (or reuse an identical earlier one, or resume an interrupted one) under cfg.output_root."""
    import torch
    from transformers import AutoTokenizer

    runtime = select_runtime(cfg)
    index_version = retriever.version if (mode == "raft" and retriever) else None
    key = adapter_key(mode, base_model_dir, fingerprint, index_version, cfg, gen_cfg, seed, runtime)
    out_dir = Path(cfg.output_root) / key
    if (out_dir / "result.json").is_file():
        result = FinetuneResult(**json.loads((out_dir / "result.json").read_text()))
        result.reused = True
        return result

    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cap = cfg.raft.max_train_examples if mode == "raft" and cfg.raft.max_train_examples else cfg.max_train_examples
    if cap is not None:
        train_qa = train_qa.sample(n=min(cap, len(train_qa)), random_state=seed).sort_index()
    train_examples = build_examples(train_qa, mode, tokenizer, gen_cfg, cfg, retriever, seed)
    eval_examples = build_examples(eval_qa, mode, tokenizer, gen_cfg, cfg, retriever, seed + 1)
    train_enc = [encode_example(e, tokenizer, cfg.max_length) for e in train_examples]
    eval_enc = [encode_example(e, tokenizer, cfg.max_length) for e in eval_examples]

    model, load_seconds = prepare_model(base_model_dir, cfg.lora, runtime, seed)
    checkpoint_dir = Path(cfg.output_root) / ".checkpoints" / key
    state = train_lora(model, train_enc, eval_enc, cfg, runtime, seed, tokenizer.pad_token_id, checkpoint_dir,
                       progress, f"finetune[{mode}]", on_step)
    best = state.best_loss if math.isfinite(state.best_loss) else float("nan")
    result = FinetuneResult(
        mode=mode, adapter_dir=str(out_dir), train_examples=len(train_enc), steps=state.step,
        train_losses=state.losses, eval_loss=best, perplexity=math.exp(best) if math.isfinite(best) else float("nan"),
        train_tokens=state.tokens, seconds=state.seconds,
        tokens_per_second=state.tokens / state.seconds if state.seconds else 0.0,
        gold_rate=(sum(e.has_gold for e in train_examples) / len(train_examples)) if mode == "raft" else float("nan"),
        eval_steps=state.eval_steps, eval_losses=state.eval_losses, best_step=state.best_step,
        stopped_early=state.stopped_early, resumed_from_step=state.resumed_from_step,
        model_load_seconds=load_seconds, device=runtime.device, batch_size=runtime.batch_size,
    )
    _save_adapter(model, result, out_dir)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    with suppress(OSError):  # other runs' checkpoints may still be there
        checkpoint_dir.parent.rmdir()
    return result
