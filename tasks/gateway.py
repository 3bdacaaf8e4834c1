"""`ragtune gateway`: the registry's champion and challenger behind one HTTP endpoint, for A/B tests in production.

POST /ask {"question", "user_id"?} answers with the variant chosen by tasks.routing (split, sticky
per user; shadow; off) and returns the answer, its sources, the variant, the model version and a
request id; every answer is recorded exactly once (tasks.request_writer). POST /feedback {"request_id", "rating",
"correct_answer"?} attaches a rating to that record. GET /health says the process is up, GET /ready
that the champion is loaded. A watcher thread polls the registry's aliases: a moved alias is
loaded beside the serving model, which keeps answering until the new one is swapped in.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import mlflow
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

from tasks import request_log
from tasks.answering import Answer, AnswerSource
from tasks.promotion import alias_version
from tasks.registry import load_version
from tasks.request_log import Served
from tasks.request_writer import RequestWriter
from tasks.routing import choose_variant
from tasks.settings import PipelineConfig

ALIASES = ("champion", "challenger")
log = logging.getLogger("ragtune.gateway")


@dataclass
class LoadedModel:
    """One registered version, loaded; its lock serialises generation (one model, one question at a time)."""

    served: Served
    answerer: AnswerSource
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, question: str) -> Answer:
        with self.lock:
            return self.answerer.answer([question])[0]


def load_registered(model_name: str, version: str) -> LoadedModel:
    """A registered version, checked and built by the installed code (tasks.registry), as its answerer (which
    reports passages, tokens and cost)."""
    loaded = load_version(model_name, version=version)
    return LoadedModel(Served("", version, loaded.candidate), loaded.answerer)


class ModelSlots:
    """The champion and challenger as loaded now. `refresh` loads a moved alias first and swaps after, so a
    request always finds a ready model."""

    def __init__(self, model_name: str, loader: Callable[[str, str], LoadedModel] = load_registered):
        self.model_name, self.loader = model_name, loader
        self.loaded: dict[str, LoadedModel] = {}
        self._refreshing = threading.Lock()

    def refresh(self) -> list[str]:
        """Load what the aliases point at now; returns what changed, e.g. ['challenger: 3 -> 4']."""
        changed = []
        with self._refreshing:
            for alias in ALIASES:
                version, current = alias_version(self.model_name, alias), self.loaded.get(alias)
                if version == (current.served.version if current else None):
                    continue
                if version is None:
                    self.loaded.pop(alias, None)
                else:
                    same = next((m for m in self.loaded.values() if m.served.version == version), None)
                    fresh = same or self.loader(self.model_name, version)  # one copy of a version in memory
                    served = Served(alias, version, fresh.served.candidate)
                    self.loaded[alias] = LoadedModel(served, fresh.answerer, fresh.lock)  # requests see old or new
                changed.append(f"{alias}: {current.served.version if current else 'none'} -> {version or 'none'}")
        return changed

    def get(self, alias: str) -> LoadedModel | None:
        return self.loaded.get(alias)


class AskRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    user_id: str | None = Field(None, max_length=200, description="Keeps a user on one variant in split mode.")


class FeedbackRequest(BaseModel):
    request_id: str
    rating: float = Field(ge=0, le=1, description="1: good answer, 0: bad (a scale mapped onto 0..1 works too).")
    correct_answer: str | None = Field(None, max_length=4000)
    user_id: str | None = None


def _watch_aliases(slots: ModelSlots, every_s: float, stop: threading.Event) -> None:
    while not stop.wait(every_s):
        try:
            for change in slots.refresh():
                log.info("alias moved, now serving %s", change)
        except Exception:  # noqa: BLE001 - a registry hiccup must not stop the watcher; the old model serves on
            log.exception("alias refresh failed; still serving the loaded versions")


def create_app(cfg: PipelineConfig, slots: ModelSlots | None = None) -> FastAPI:
    """The gateway for the config's registered model and experiment (MLflow must already point at the store)."""
    slots = slots or ModelSlots(cfg.champion.model_name)
    experiment_id = mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id
    gateway, rng = cfg.gateway, random.Random()
    shadows = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
    stop = threading.Event()

    writer: list[RequestWriter] = []  # made at startup: it owns the outbox and writes what a killed gateway left

    def answer_and_record(model: LoadedModel, question: str, user_id: str | None, shadow: bool) -> tuple[Answer, str]:
        start = time.time_ns()
        answer = model.answer(question)
        record = request_log.answer_record(experiment_id, model.served, answer, user_id, start, time.time_ns(),
                                           gateway.price_per_hour, cfg.evaluation.support_threshold, shadow)
        writer[0].submit(record)
        return answer, record.request_id

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        writer.append(RequestWriter(gateway.outbox_dir, gateway.record_queue))
        slots.refresh()
        watcher = threading.Thread(target=_watch_aliases, args=(slots, gateway.alias_poll_seconds, stop),
                                   name="alias-watcher", daemon=True)
        watcher.start()
        yield
        stop.set()
        shadows.shutdown(wait=True)  # shadow answers already accepted are answered and recorded
        writer[0].close(gateway.shutdown_write_seconds)

    app = FastAPI(title="ragtune gateway", lifespan=lifespan)

    @app.post("/ask")
    def ask(request: AskRequest) -> dict:
        champion, challenger = slots.get("champion"), slots.get("challenger")
        if champion is None:
            raise HTTPException(503, "no champion is registered or loaded yet")
        distinct = challenger is not None and challenger.served.version != champion.served.version
        variant, shadow = choose_variant(gateway.mode, gateway.challenger_share, request.user_id, rng, distinct)
        model = challenger if variant == "challenger" else champion
        answer, request_id = answer_and_record(model, request.question, request.user_id, False)
        if shadow:
            shadows.submit(answer_and_record, challenger, request.question, request.user_id, True)
        return {"request_id": request_id, "answer": answer.text, "sources": answer.sources, "variant": variant,
                "model_version": model.served.version, "candidate": model.served.candidate,
                "latency_ms": answer.latency_ms}

    @app.post("/feedback")
    def feedback(request: FeedbackRequest) -> dict:
        writer[0].wait_written(request.request_id, gateway.feedback_wait_seconds)  # it may still be in the outbox
        try:
            request_log.record_feedback(experiment_id, request.request_id, request.rating, request.correct_answer,
                                        request.user_id)
        except request_log.UnknownRequest:
            raise HTTPException(404, f"no recorded request {request.request_id}") from None
        return {"request_id": request.request_id, "recorded": True}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> dict:
        if slots.get("champion") is None:
            raise HTTPException(503, "champion not loaded")
        return {alias: {"version": m.served.version, "candidate": m.served.candidate}
                for alias in ALIASES if (m := slots.get(alias)) is not None}

    return app
