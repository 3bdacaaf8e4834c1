"""OpenAI-compatible chat-completions endpoints: a larger LLM as the RAG generator, or the ragas judge.

Requests go through the `openai` client with the configured timeout and retries (exponential
backoff on timeouts, connection errors, 408/409/429 and 5xx; it honours Retry-After). Failures
surface as EndpointError naming the URL, the model and what went wrong.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import openai

from tasks.answering import Answer, Answerer, AnswerSource, cut_at_stop, retrieve
from tasks.indexing import Retriever
from tasks.prompts import build_messages, clean_answer
from tasks.settings import EndpointConfig, GenerationConfig

NO_KEY = "EMPTY"  # placeholder bearer token for servers that need none (the openai client insists on one)


class EndpointError(RuntimeError):
    """A request to an OpenAI-compatible endpoint failed; the message names the URL and the failure."""


def _api_key(cfg: EndpointConfig) -> str:
    if cfg.api_key_env is None:
        return NO_KEY
    key = os.environ.get(cfg.api_key_env)
    if not key:
        raise EndpointError(f"endpoint {cfg.base_url}: environment variable {cfg.api_key_env} "
                            "(api_key_env) is not set")
    return key


def openai_client(cfg: EndpointConfig) -> openai.OpenAI:
    """A synchronous client with the configured timeout and retries."""
    return openai.OpenAI(base_url=cfg.base_url, api_key=_api_key(cfg), timeout=cfg.timeout_s,
                         max_retries=cfg.max_retries)


def async_openai_client(cfg: EndpointConfig) -> openai.AsyncOpenAI:
    """An asynchronous client (what ragas's judge drives) with the configured timeout and retries."""
    return openai.AsyncOpenAI(base_url=cfg.base_url, api_key=_api_key(cfg), timeout=cfg.timeout_s,
                              max_retries=cfg.max_retries)


def describe_failure(cfg: EndpointConfig, err: openai.OpenAIError) -> str:
    """One line naming the URL, the model and the failure, and whether it was retried."""
    url = f"{cfg.base_url.rstrip('/')}/chat/completions"
    retried = f"after {cfg.max_retries} retries"
    if isinstance(err, openai.APITimeoutError):
        what = f"timed out (timeout_s={cfg.timeout_s}) {retried}"
    elif isinstance(err, openai.APIConnectionError):
        what = f"could not connect {retried}: {err.__cause__ or err}"
    elif isinstance(err, openai.APIStatusError):
        retryable = err.status_code in (408, 409, 429) or err.status_code >= 500
        what = f"HTTP {err.status_code} {retried if retryable else '(not retryable)'}: {err.message}"
    else:
        what = f"{type(err).__name__}: {err}"
    return f"chat completion request to {url} (model {cfg.model}) failed: {what}"


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    finished_at: float  # time.perf_counter() when the response arrived

    def cost(self, cfg: EndpointConfig) -> float:
        return (self.prompt_tokens * cfg.price_per_1k_input_tokens
                + self.completion_tokens * cfg.price_per_1k_output_tokens) / 1000


class EndpointClient:
    """Greedy (temperature 0) chat completions with usage accounting."""

    def __init__(self, cfg: EndpointConfig):
        self.cfg = cfg
        self.client = openai_client(cfg)

    def complete(self, messages: list[dict[str, str]], max_tokens: int, stop: list[str]) -> Completion:
        try:
            response = self.client.chat.completions.create(
                model=self.cfg.model, messages=messages, max_tokens=max_tokens, temperature=0.0, stop=stop or None)
        except openai.OpenAIError as err:
            raise EndpointError(describe_failure(self.cfg, err)) from err
        finished_at = time.perf_counter()
        if not response.choices:
            raise EndpointError(f"{self.cfg.base_url}: response without choices (model {self.cfg.model})")
        choice, usage = response.choices[0], response.usage
        if usage is None and (self.cfg.price_per_1k_input_tokens or self.cfg.price_per_1k_output_tokens):
            raise EndpointError(f"{self.cfg.base_url}: response without token usage (model {self.cfg.model}), "
                                "so its configured token prices cannot be applied")
        return Completion(choice.message.content or "", usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, choice.finish_reason or "", finished_at)


class EndpointAnswerer:
    """Answerer-compatible: same retrieval, same prompt messages, an endpoint generates.

    Requests of a batch run `concurrency` at a time; latency follows tasks.metrics (batch start
    to this question's response). Stop strings are sent and also applied locally, since not
    every server honours them.
    """

    def __init__(self, endpoint: EndpointConfig, gen_cfg: GenerationConfig, retriever: Retriever | None = None,
                 top_k: int = 3):
        self.endpoint = endpoint
        self.client = EndpointClient(endpoint)
        self.gen_cfg = gen_cfg
        self.retriever = retriever
        self.top_k = top_k

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
        return [Answer(q, clean_answer(cut_at_stop(c.text, self.gen_cfg.stop)), hs,
                       latency_ms=(c.finished_at - t0) * 1000, compute_seconds=share,
                       prompt_tokens=c.prompt_tokens, new_tokens=c.completion_tokens,
                       retrieval_ms=retrieval_s * 1000, ttft_ms=None, finish_reason=c.finish_reason,
                       api_cost_usd=c.cost(self.endpoint))
                for q, hs, c in zip(chunk, hits, completions, strict=True)]


def answer_source(candidate: str, gen_cfg: GenerationConfig, model_dir: str, adapter_dir: str | None,
                  retriever: Retriever | None, top_k: int) -> AnswerSource:
    """The system that answers for `candidate`, in evaluation and when served: the configured endpoint
    generates for `rag` when `generation.endpoint` is set, the local SLM otherwise."""
    if candidate == "rag" and gen_cfg.endpoint is not None:
        return EndpointAnswerer(gen_cfg.endpoint, gen_cfg, retriever=retriever, top_k=top_k)
    return Answerer(model_dir, gen_cfg, adapter_dir=adapter_dir, retriever=retriever, top_k=top_k)
