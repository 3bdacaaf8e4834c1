"""The OpenAI-compatible chat-completions client: a larger LLM as a generator (tasks.answering), or the
ragas judge (tasks.metrics).

Requests go through the `openai` client with the configured timeout and retries (exponential
backoff on timeouts, connection errors, 408/409/429 and 5xx; it honours Retry-After). Failures
surface as EndpointError naming the URL, the model and what went wrong.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import openai

from tasks.errors import UserError
from tasks.redaction import expand_references, has_masked_credentials, missing_references, redact
from tasks.settings import EndpointConfig

NO_KEY = "EMPTY"  # placeholder bearer token for servers that need none (the openai client insists on one)


class EndpointError(UserError, RuntimeError):
    """A request to an OpenAI-compatible endpoint failed; the message names the URL (credentials masked) and the
    failure."""

    def __init__(self, message: str):
        super().__init__(redact(message))


GENERATOR, JUDGE = "generation.endpoint", "evaluation.judge"  # the config keys an endpoint comes from


def _api_key(cfg: EndpointConfig, key: str) -> str:
    if cfg.api_key_env is None:
        return NO_KEY
    value = os.environ.get(cfg.api_key_env)
    if not value:
        raise EndpointError(f"{key}.api_key_env: environment variable {cfg.api_key_env} is not set (the key of "
                            f"endpoint {cfg.base_url})")
    return value


def _base_url(cfg: EndpointConfig, key: str) -> str:
    """The URL a client calls: `${NAME}` references in base_url expanded from the environment, here and now."""
    if has_masked_credentials(cfg.base_url):
        raise EndpointError(f"{key}.base_url: endpoint {cfg.base_url}: its credentials were masked when this "
                            "config was saved (a literal credential is never persisted); write them in base_url as "
                            "${VARIABLE} references to environment variables set where it runs, or give the key with "
                            "api_key_env")
    missing = missing_references(cfg.base_url)
    if missing:
        raise EndpointError(f"{key}.base_url: endpoint {cfg.base_url}: environment variable(s) "
                            f"{', '.join(missing)} named in it are not set")
    return expand_references(cfg.base_url)


def openai_client(cfg: EndpointConfig, key: str = GENERATOR) -> openai.OpenAI:
    """A synchronous client with the configured timeout and retries (`key`: the config key, for messages)."""
    return openai.OpenAI(base_url=_base_url(cfg, key), api_key=_api_key(cfg, key), timeout=cfg.timeout_s,
                         max_retries=cfg.max_retries)


def async_openai_client(cfg: EndpointConfig, key: str = JUDGE) -> openai.AsyncOpenAI:
    """An asynchronous client (what ragas's judge drives) with the configured timeout and retries."""
    return openai.AsyncOpenAI(base_url=_base_url(cfg, key), api_key=_api_key(cfg, key), timeout=cfg.timeout_s,
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
            raise EndpointError(f"{GENERATOR}: {describe_failure(self.cfg, err)}") from err
        finished_at = time.perf_counter()
        if not response.choices:
            raise EndpointError(f"{self.cfg.base_url}: response without choices (model {self.cfg.model})")
        choice, usage = response.choices[0], response.usage
        if usage is None and (self.cfg.price_per_1k_input_tokens or self.cfg.price_per_1k_output_tokens):
            raise EndpointError(f"{self.cfg.base_url}: response without token usage (model {self.cfg.model}), "
                                "so its configured token prices cannot be applied")
        return Completion(choice.message.content or "", usage.prompt_tokens if usage else 0,
                          usage.completion_tokens if usage else 0, choice.finish_reason or "", finished_at)
