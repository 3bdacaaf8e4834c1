"""A candidate system answering questions: an SLM (optionally with a LoRA adapter merged in) or an
OpenAI-compatible endpoint, with optional retrieval; `answerer_for` builds the one a candidate declares.

The same objects answer questions in evaluation, in the registered MLflow model and in
`ragtune ask`, so what is measured is what is served. Latency, time to first token and
compute time are defined in tasks.metrics.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tasks.answer_types import canonical_label
from tasks.candidates import Candidate
from tasks.endpoint import EndpointClient
from tasks.label_scoring import label_scores
from tasks.models import load_causal_lm
from tasks.prefix_cache import PrefixCache, shared_prefix_ids
from tasks.prompts import build_messages, clean_answer, render_prompt
from tasks.retrieval import Hit, Retriever
from tasks.settings import EndpointConfig, GenerationConfig, PipelineConfig

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


@dataclass
class Answer:
    question: str
    text: str
    passages: list[Hit] = field(default_factory=list)
    latency_ms: float = 0.0
    compute_seconds: float = 0.0
    prompt_tokens: int = 0
    new_tokens: int = 0
    retrieval_ms: float = 0.0
    ttft_ms: float | None = None
    finish_reason: str = ""
    api_cost_usd: float = 0.0

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(h.doc_id for h in self.passages))


class AnswerSource(Protocol):
    """What evaluation and serving need from a candidate: an Answerer or an EndpointAnswerer."""

    retriever: Retriever | None
    top_k: int

    def answer(self, questions: list[str], batch_size: int | None = None) -> list[Answer]: ...


def retrieve(retriever: Retriever | None, questions: list[str], top_k: int) -> tuple[list[list[Hit]], float]:
    """Batched top-k passages per question (none without a retriever) and the wall time it took."""
    t0 = time.perf_counter()
    hits = retriever.search(questions, top_k) if retriever else [[] for _ in questions]
    return hits, time.perf_counter() - t0


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text before the earliest occurrence of any stop string."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


class FinishClock:
    """A stopping criterion that records, per row of a batch, when its sequence finished.

    Called by `generate` once per decoding step, right after the step's tokens are appended. A row
    finishes at its first EOS token, when its decoded text contains a stop string (this criterion
    then ends the row), or after `max_new_tokens`. It never ends a row otherwise.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, prompt_length: int, rows: int, eos_ids: set[int],
                 stop: Sequence[str], max_new_tokens: int):
        self.tokenizer, self.prompt_length, self.eos_ids = tokenizer, prompt_length, eos_ids
        self.stop, self.max_new_tokens = list(stop), max_new_tokens
        self.first_token_at: float | None = None
        self.finished_at: list[float | None] = [None] * rows
        self.lengths = [0] * rows  # generated tokens up to and including the one that finished the row
        self.reasons = [""] * rows

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs) -> torch.BoolTensor:
        import torch

        new = input_ids[:, self.prompt_length:]
        last = new[:, -1].tolist()  # also waits for the step to complete on an accelerator
        now = time.perf_counter()
        if self.first_token_at is None:
            self.first_token_at = now
        step = new.shape[1]
        for row, token in enumerate(last):
            if self.finished_at[row] is not None:
                continue
            if token in self.eos_ids:
                self._finish(row, now, step, "eos")
            elif self.stop and self._has_stop(new[row]):
                self._finish(row, now, step, "stop")
            elif step >= self.max_new_tokens:
                self._finish(row, now, step, "length")
        return torch.tensor([t is not None for t in self.finished_at], dtype=torch.bool, device=input_ids.device)

    def _has_stop(self, tokens: torch.Tensor) -> bool:
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return any(s in text for s in self.stop)

    def _finish(self, row: int, now: float, step: int, reason: str) -> None:
        self.finished_at[row], self.lengths[row], self.reasons[row] = now, step, reason

    def close(self, now: float, steps: int) -> None:
        """Rows `generate` ended without this criterion seeing them finish (it stopped on its own limits)."""
        for row, done in enumerate(self.finished_at):
            if done is None:
                self._finish(row, now, steps, "length")


CONTENT_FREE = ("N/A", "", "[MASK]")  # inputs that carry no content, for label calibration


class Answerer:
    """Greedy, batched (left-padded) generation with the shared prompt format; the model is loaded once.

    Each answer carries its own latency (batch start to its own sequence's end), its batch's
    retrieval time, its time to first token and its share of the batch's compute time.
    """

    def __init__(self, model_dir: str, gen_cfg: GenerationConfig, adapter_dir: str | Path | None = None,
                 retriever: Retriever | None = None, top_k: int = 3, answer_type: str = "span",
                 labels: list[str] | None = None):
        self.model_dir, self.adapter_dir = model_dir, adapter_dir
        self.tokenizer, self.model = load_causal_lm(model_dir, adapter_dir, gen_cfg.dtype)
        self.tokenizer.padding_side = "left"
        self.gen_cfg = gen_cfg
        self.retriever = retriever
        self.top_k = top_k
        self.answer_type = answer_type
        self.labels = labels if answer_type == "label" else None
        self._prior: torch.Tensor | None = None
        self._prefix: PrefixCache | None = None
        self.eos_ids = _eos_ids(self.tokenizer, self.model)

    def _prefix_cache(self, input_ids: torch.Tensor):
        """A copy of the shared prompt prefix's KV cache for a one-prompt batch that starts with it (else None)."""
        if input_ids.shape[0] != 1:
            return None
        if self._prefix is None:
            passages = self.top_k if self.retriever else None
            self._prefix = PrefixCache(self.model, shared_prefix_ids(self.tokenizer, self.gen_cfg, passages))
        return self._prefix.for_prompt(input_ids)

    def _generate(self, prompts: list[str]) -> tuple[list[str], list[int], FinishClock]:
        import torch
        from transformers import StoppingCriteriaList

        batch = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        batch = batch.to(self.model.device)
        prompt_length = batch["input_ids"].shape[1]
        clock = FinishClock(self.tokenizer, prompt_length, len(prompts), self.eos_ids, self.gen_cfg.stop,
                            self.gen_cfg.max_new_tokens)
        with torch.inference_mode():
            out = self.model.generate(
                **batch, cache=self._prefix_cache(batch["input_ids"]), max_new_tokens=self.gen_cfg.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=sorted(self.eos_ids) or None,
                stopping_criteria=StoppingCriteriaList([clock]),
            )
        new = out[:, prompt_length:]
        clock.close(time.perf_counter(), new.shape[1])
        texts = [cut_at_stop(self.tokenizer.decode(row[:n], skip_special_tokens=True), self.gen_cfg.stop)
                 for row, n in zip(new, clock.lengths, strict=True)]
        return texts, batch["attention_mask"].sum(dim=1).tolist(), clock

    def answer(self, questions: list[str], batch_size: int | None = None) -> list[Answer]:
        batch_size = batch_size or self.gen_cfg.batch_size
        answers: list[Answer] = []
        for start in range(0, len(questions), batch_size):
            answers += self._answer_batch(questions[start:start + batch_size])
        return answers

    def prompts(self, questions: list[str], hits: list[list[Hit]]) -> list[str]:
        """Each question's prompt as the model reads it, with its retrieved passages when this system retrieves."""
        return [render_prompt(self.tokenizer, build_messages(q, [h.text for h in hs] if self.retriever else None,
                                                             self.gen_cfg))
                for q, hs in zip(questions, hits, strict=True)]

    def _answer_batch(self, chunk: list[str]) -> list[Answer]:
        t0 = time.perf_counter()
        hits, retrieval_s = retrieve(self.retriever, chunk, self.top_k)
        prompts = self.prompts(chunk, hits)
        if self.labels:
            return self._choose_labels(chunk, hits, prompts, t0, retrieval_s)
        texts, prompt_tokens, clock = self._generate(prompts)
        share = (time.perf_counter() - t0) / len(chunk)
        ttft_ms = (clock.first_token_at - t0) * 1000
        return [Answer(q, clean_answer(text, self.answer_type), hs, latency_ms=(done - t0) * 1000,
                       compute_seconds=share,
                       prompt_tokens=pt, new_tokens=n, retrieval_ms=retrieval_s * 1000, ttft_ms=ttft_ms,
                       finish_reason=reason)
                for q, hs, text, pt, n, done, reason in zip(chunk, hits, texts, prompt_tokens, clock.lengths,
                                                            clock.finished_at, clock.reasons, strict=True)]

    def _label_prior(self) -> torch.Tensor:
        """log p(label | content-free prompt), averaged over content-free inputs (Zhao et al. 2021,
        "Calibrate before use"): subtracting it removes a small model's bias towards one label."""
        if self._prior is None:
            passages = (lambda text: [text] * self.top_k) if self.retriever else (lambda text: None)
            prompts = [render_prompt(self.tokenizer, build_messages(text, passages(text), self.gen_cfg))
                       for text in CONTENT_FREE]
            scores, _ = label_scores(self.model, self.tokenizer, prompts, self.labels)
            self._prior = scores.log_softmax(dim=1).exp().mean(dim=0).log()
        return self._prior

    def _choose_labels(self, chunk: list[str], hits: list[list[Hit]], prompts: list[str], t0: float,
                       retrieval_s: float) -> list[Answer]:
        """The most likely label per question (tasks.label_scoring); all finish when the batch is scored."""
        scores, prompt_tokens = label_scores(self.model, self.tokenizer, prompts, self.labels)
        if self.gen_cfg.label_calibration:
            scores = scores - self._label_prior()
        done = time.perf_counter()
        best = scores.argmax(dim=1).tolist()
        return [Answer(q, self.labels[b], hs, latency_ms=(done - t0) * 1000, compute_seconds=(done - t0) / len(chunk),
                       prompt_tokens=pt, retrieval_ms=retrieval_s * 1000, finish_reason="label")
                for q, hs, b, pt in zip(chunk, hits, best, prompt_tokens, strict=True)]


class EndpointAnswerer:
    """Answerer-compatible: same retrieval, same prompt messages, an endpoint generates.

    Requests of a batch run `concurrency` at a time; latency follows tasks.metrics (batch start
    to this question's response). Stop strings are sent and also applied locally, since not
    every server honours them.
    """

    def __init__(self, endpoint: EndpointConfig, gen_cfg: GenerationConfig, retriever: Retriever | None = None,
                 top_k: int = 3, answer_type: str = "span", labels: list[str] | None = None):
        self.endpoint = endpoint
        self.client = EndpointClient(endpoint)
        self.gen_cfg = gen_cfg
        self.retriever = retriever
        self.top_k = top_k
        self.answer_type = answer_type
        self.labels = labels if answer_type == "label" else None

    def answer(self, questions: list[str], batch_size: int | None = None) -> list[Answer]:
        batch_size = batch_size or self.gen_cfg.batch_size
        answers: list[Answer] = []
        with ThreadPoolExecutor(max_workers=self.endpoint.concurrency) as pool:
            for start in range(0, len(questions), batch_size):
                answers += self._answer_batch(questions[start:start + batch_size], pool)
        return answers

    def _answer_batch(self, chunk: list[str], pool: ThreadPoolExecutor) -> list[Answer]:
        t0 = time.perf_counter()
        hits, retrieval_s = retrieve(self.retriever, chunk, self.top_k)
        messages = [build_messages(q, [h.text for h in hs] if self.retriever else None, self.gen_cfg)
                    for q, hs in zip(chunk, hits, strict=True)]
        completions = list(pool.map(
            lambda m: self.client.complete(m, self.gen_cfg.max_new_tokens, self.gen_cfg.stop), messages))
        share = (time.perf_counter() - t0) / len(chunk)
        texts = [clean_answer(cut_at_stop(c.text, self.gen_cfg.stop), self.answer_type) for c in completions]
        if self.labels:  # an endpoint generates; its text counts as the label it names (else it stays wrong)
            texts = [canonical_label(text, self.labels) or text for text in texts]
        return [Answer(q, text, hs,
                       latency_ms=(c.finished_at - t0) * 1000, compute_seconds=share,
                       prompt_tokens=c.prompt_tokens, new_tokens=c.completion_tokens,
                       retrieval_ms=retrieval_s * 1000, ttft_ms=None, finish_reason=c.finish_reason,
                       api_cost_usd=c.cost(self.endpoint))
                for q, hs, c, text in zip(chunk, hits, completions, texts, strict=True)]


def _eos_ids(tokenizer: PreTrainedTokenizerBase, model: torch.nn.Module) -> set[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (chat models often end turns with another)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids |= set(configured) if isinstance(configured, list) else {configured}
    return ids


def answerer_for(candidate: Candidate, cfg: PipelineConfig, model_dir: str, adapter_dir: str | Path | None,
                 retriever: Retriever | None) -> AnswerSource:
    """The system that answers for `candidate` under a resolved config (tasks.answer_types), in evaluation
    and when served: `generation.endpoint` for a candidate declared `endpoint=True` when one is configured,
    the local SLM (with the adapter) otherwise."""
    if candidate.retrieves != (retriever is not None):
        raise ValueError(f"candidate {candidate.name} {'needs a' if candidate.retrieves else 'takes no'} retriever")
    kind = {"answer_type": cfg.data.answer_type, "labels": cfg.data.labels}
    if candidate.endpoint and cfg.generation.endpoint is not None:
        return EndpointAnswerer(cfg.generation.endpoint, cfg.generation, retriever, cfg.index.top_k, **kind)
    return Answerer(model_dir, cfg.generation, adapter_dir, retriever, cfg.index.top_k, **kind)
