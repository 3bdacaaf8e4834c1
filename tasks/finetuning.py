"""Finetune stage: LoRA supervised finetuning of the SLM, closed-book or RAFT-style.

- closed_book: prompt = question alone, target = answer (the `finetuned` candidate).
- raft: prompt = question + `raft.top_k` retrieved passages, the gold passage forced in with
  probability `raft.gold_probability` and only distractors otherwise, target = answer (the
  `hybrid` candidate; Zhang et al. 2024).
The loss covers the answer tokens only (and only they are projected to the vocabulary); batches
group similar lengths and are padded to their own longest sequence.
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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from tasks.indexing import Retriever
from tasks.metrics import normalize_answer
from tasks.prompts import build_messages, render_prompt
from tasks.settings import FinetuneConfig, GenerationConfig

Mode = Literal["closed_book", "raft"]
IGNORE = -100


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    has_gold: bool


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

    @property
    def final_train_loss(self) -> float:
        tail = self.train_losses[-max(1, len(self.train_losses) // 10):]
        return sum(tail) / len(tail) if tail else float("nan")


def _gold_chunk(chunks: pd.DataFrame, doc_id: str, answers: list[str]) -> str | None:
    texts = chunks.loc[chunks["doc_id"] == doc_id, "text"].tolist()
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


def build_examples(qa: pd.DataFrame, mode: Mode, tokenizer, gen_cfg: GenerationConfig, cfg: FinetuneConfig,
                   retriever: Retriever | None, seed: int) -> list[Example]:
    """Training/eval examples in the shared prompt format; the first accepted answer is the target."""
    rng = random.Random(seed)
    hits: list[list] = [[] for _ in range(len(qa))]
    if mode == "raft":
        if retriever is None:
            raise ValueError("raft mode needs a retriever (build the index first)")
        hits = retriever.search(qa["question"].tolist(), cfg.raft.top_k + 2)
    examples = []
    for row, q_hits in zip(qa.itertuples(index=False), hits, strict=True):
        passages, has_gold = None, False
        if mode == "raft":
            has_gold = rng.random() < cfg.raft.gold_probability
            gold = _gold_chunk(retriever.chunks, row.doc_id, list(row.answer))
            passages = raft_passages(q_hits, gold, row.doc_id, cfg.raft.top_k, has_gold, rng)
        prompt = render_prompt(tokenizer, build_messages(row.question, passages, gen_cfg))
        examples.append(Example(prompt, row.answer[0], has_gold))
    return examples


def encode_example(example: Example, tokenizer, max_length: int) -> tuple[list[int], list[int]]:
    """input_ids and labels; labels mask the prompt so the loss covers the answer (and EOS) only."""
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(example.answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids[: max_length // 2]
    prompt_ids = prompt_ids[-(max_length - len(answer_ids)):]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int):
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


def answer_loss(model, batch) -> tuple[object, int]:
    """Mean next-token loss over answer positions, projecting only those positions to the vocabulary.

    The prompt's logits are never used, so skipping them saves the largest matmul of a small model.
    Returns the loss tensor and the number of answer tokens it averages over.
    """
    import torch.nn.functional as F

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE
    logits = base.get_output_embeddings()(hidden[:, :-1][keep])
    return F.cross_entropy(logits.float(), labels[keep]), int(keep.sum())


def length_grouped_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length: sort within random pools of 16 batches, then shuffle batches."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    pool = batch_size * 16
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _eval_loss(model, encoded, batch_size: int, pad_id: int) -> float:
    import torch

    total, tokens = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            loss, n = answer_loss(model, collate(encoded[start:start + batch_size], pad_id))
            total += float(loss) * n
            tokens += n
    model.train()
    return total / tokens if tokens else float("nan")


def adapter_key(mode: Mode, base_model_dir: str, fingerprint: str, index_version: str | None,
                cfg: FinetuneConfig, gen_cfg: GenerationConfig, seed: int) -> str:
    payload = json.dumps({"mode": mode, "base": base_model_dir, "fp": fingerprint, "index": index_version,
                          "cfg": cfg.model_dump(mode="json"), "gen": gen_cfg.model_dump(mode="json"), "seed": seed},
                         sort_keys=True)
    return f"{mode}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def finetune(mode: Mode, base_model_dir: str, train_qa: pd.DataFrame, eval_qa: pd.DataFrame, fingerprint: str,
             cfg: FinetuneConfig, gen_cfg: GenerationConfig, seed: int,
             retriever: Retriever | None = None, progress: bool = True) -> FinetuneResult:
    """Train a LoRA adapter (or reuse an identical earlier one) and save it under cfg.output_root."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

    index_version = retriever.version if (mode == "raft" and retriever) else None
    key = adapter_key(mode, base_model_dir, fingerprint, index_version, cfg, gen_cfg, seed)
    out_dir = Path(cfg.output_root) / key
    if (out_dir / "result.json").is_file():
        result = FinetuneResult(**json.loads((out_dir / "result.json").read_text()))
        result.reused = True
        return result

    torch.manual_seed(seed)
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

    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                      lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules)
    model = get_peft_model(model, lora)
    model.train()
    steps_per_epoch = math.ceil(len(train_enc) / cfg.batch_size)
    total_steps = cfg.max_steps or steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * cfg.warmup_ratio), total_steps)
    order_rng = random.Random(seed)
    losses, tokens, step = [], 0, 0
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc=f"finetune[{mode}]", disable=not progress)
    lengths = [len(ids) for ids, _ in train_enc]
    while step < total_steps:
        for indices in length_grouped_batches(lengths, cfg.batch_size, order_rng):
            if step >= total_steps:
                break
            batch = collate([train_enc[i] for i in indices], tokenizer.pad_token_id)
            loss, _ = answer_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            tokens += int(batch["attention_mask"].sum())
            losses.append(float(loss.detach()))
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{tokens / elapsed:.0f}")
            bar.update()
    bar.close()
    seconds = time.perf_counter() - start
    eval_loss = _eval_loss(model, eval_enc, cfg.batch_size, tokenizer.pad_token_id)
    result = FinetuneResult(
        mode=mode, adapter_dir=str(out_dir), train_examples=len(train_enc), steps=step, train_losses=losses,
        eval_loss=eval_loss, perplexity=float("nan") if math.isnan(eval_loss) else math.exp(eval_loss),
        train_tokens=tokens, seconds=seconds, tokens_per_second=tokens / seconds if seconds else 0.0,
        gold_rate=(sum(e.has_gold for e in train_examples) / len(train_examples)) if mode == "raft" else float("nan"),
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        (staging / "result.json").write_text(json.dumps(asdict(result), indent=2))
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result
