"""Finetuning data: training examples in the shared prompt format, their encoding and batching.

- closed_book: prompt = question alone, target = answer (the `finetuned` candidate).
- raft: prompt = question + `raft.top_k` retrieved passages, the gold passage forced in with
  probability `raft.gold_probability` and only distractors otherwise, target = answer (the
  `hybrid` candidate; Zhang et al. 2024).
Labels mask the prompt, so the loss covers the answer tokens only; batches group similar
lengths and are padded to their own longest sequence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd

from tasks.candidates import ADAPTER_MODES, Mode
from tasks.prompts import answer_token_ids, build_messages, render_prompt
from tasks.retrieval import Retriever
from tasks.settings import FinetuneConfig, GenerationConfig
from tasks.text import normalize_answer

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

Encoded = tuple[list[int], list[int]]
IGNORE = -100


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    has_gold: bool


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
    with_passages = ADAPTER_MODES[mode].with_passages
    if with_passages:
        if retriever is None:
            raise ValueError(f"{mode} mode needs a retriever (build the index first)")
        hits = retriever.search(qa["question"].tolist(), cfg.raft.top_k + 2)
        doc_chunks = _chunks_by_doc(retriever)
    examples = []
    for row, q_hits in zip(qa.itertuples(index=False), hits, strict=True):
        passages, has_gold = None, False
        if with_passages:
            has_gold = rng.random() < cfg.raft.gold_probability
            gold = _gold_chunk(doc_chunks.get(row.doc_id, []), list(row.answer))
            passages = raft_passages(q_hits, gold, row.doc_id, cfg.raft.top_k, has_gold, rng)
        prompt = render_prompt(tokenizer, build_messages(row.question, passages, gen_cfg))
        examples.append(Example(prompt, row.answer[0], has_gold))
    return examples


def encode_example(example: Example, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Encoded:
    """input_ids and labels; labels mask the prompt so the loss covers the answer (and EOS) only.

    The prompt is rendered by tasks.prompts.render_prompt (user text already neutralised, the template's
    control tokens kept); the answer is user text too and is neutralised by answer_token_ids.
    """
    prompt_ids = tokenizer(example.prompt, add_special_tokens=False)["input_ids"]
    answer_ids = answer_token_ids(tokenizer, example.answer)
    answer_ids = answer_ids[: max_length // 2]
    prompt_ids = prompt_ids[-(max_length - len(answer_ids)):]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def padded_width(length: int, multiple: int) -> int:
    """`length` rounded up to a multiple of `multiple`."""
    return -(-length // multiple) * multiple


def collate(encoded: list[Encoded], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad a batch to its own longest sequence, rounded up to a multiple of `multiple`."""
    import torch

    width = padded_width(max(len(ids) for ids, _ in encoded), multiple)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, labs) in enumerate(encoded):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(labs)] = torch.tensor(labs)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


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
