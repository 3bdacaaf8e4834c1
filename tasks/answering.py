"""A candidate system: an SLM (optionally with a LoRA adapter) and optional retrieval.

The same class answers questions in evaluation, in the registered MLflow model and in
`ragtune ask`, so what is measured is what is served.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tasks.indexing import Hit, Retriever
from tasks.models import load_causal_lm
from tasks.prompts import build_messages, clean_answer, render_prompt
from tasks.settings import GenerationConfig


@dataclass
class Answer:
    question: str
    text: str
    passages: list[Hit] = field(default_factory=list)
    latency_ms: float = 0.0
    compute_seconds: float = 0.0
    prompt_tokens: int = 0
    new_tokens: int = 0

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(h.doc_id for h in self.passages))


class Answerer:
    """Greedy, batched (left-padded) generation with the shared prompt format.

    Latency: each question's latency is the wall time of the batch it was answered in,
    retrieval included (what a caller in that batch waited). compute_seconds is that time
    divided by the batch size (the machine time the question cost).
    """

    def __init__(self, model_dir: str, gen_cfg: GenerationConfig, adapter_dir: str | Path | None = None,
                 retriever: Retriever | None = None, top_k: int = 3):
        self.tokenizer, self.model = load_causal_lm(model_dir, adapter_dir)
        self.tokenizer.padding_side = "left"
        self.gen_cfg = gen_cfg
        self.retriever = retriever
        self.top_k = top_k

    def _generate(self, prompts: list[str]) -> tuple[list[str], list[int], list[int]]:
        import torch

        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = self.model.generate(
                **batch, max_new_tokens=self.gen_cfg.max_new_tokens, do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
            )
        new = out[:, batch["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        new_tokens = (new != self.tokenizer.pad_token_id).sum(dim=1).tolist()
        return texts, prompt_tokens, new_tokens

    def answer(self, questions: list[str], batch_size: int | None = None) -> list[Answer]:
        batch_size = batch_size or self.gen_cfg.batch_size
        answers: list[Answer] = []
        for start in range(0, len(questions), batch_size):
            chunk = questions[start:start + batch_size]
            t0 = time.perf_counter()
            hits = self.retriever.search(chunk, self.top_k) if self.retriever else [[] for _ in chunk]
            prompts = [
                render_prompt(self.tokenizer, build_messages(q, [h.text for h in hs] if self.retriever else None,
                                                             self.gen_cfg))
                for q, hs in zip(chunk, hits, strict=True)
            ]
            texts, prompt_tokens, new_tokens = self._generate(prompts)
            elapsed = time.perf_counter() - t0
            for q, hs, text, pt, nt in zip(chunk, hits, texts, prompt_tokens, new_tokens, strict=True):
                answers.append(Answer(q, clean_answer(text), hs, elapsed * 1000, elapsed / len(chunk), pt, nt))
        return answers
