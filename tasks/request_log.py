"""Every gateway request as an MLflow trace, and feedback as assessments on it.

MLflow's own tracing, so the requests show in the MLflow UI's Traces view of the config's
experiment, filterable by the tags `request_id`, `variant`, `model_version` and `shadow`. The
gateway builds a `RequestRecord` when it answers (a small JSON-able value) and hands it to
tasks.request_writer, which writes it off the response path, exactly once, and never drops it.
The request id the gateway returns is the record's own id (tag `request_id`), not the trace id,
so a write that has to be retried keeps the id the user already holds.
"""

from __future__ import annotations

import math
import uuid
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import AssessmentSource
from mlflow.exceptions import MlflowException

from tasks.answering import Answer
from tasks.metrics import answer_support

RATING, CORRECT_ANSWER, REQUEST_ID = "user_rating", "correct_answer", "request_id"
COLUMNS = ["request_id", "timestamp_ms", "variant", "model_version", "shadow", "question", "answer", "sources",
           "latency_ms", "groundedness", "hallucinated", "cost_usd", "rating", "correct_answer"]


@dataclass(frozen=True)
class Served:
    """Who answered: the variant, the registered version behind it, and its candidate."""

    variant: str
    version: str
    candidate: str


@dataclass(frozen=True)
class RequestRecord:
    """One answered request as it will be written: the root span of its trace."""

    request_id: str
    experiment_id: str
    name: str
    start_ns: int
    end_ns: int
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> RequestRecord:
        return cls(**raw)


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_cost(answer: Answer, price_per_hour: float) -> float:
    """Compute time at the hourly price plus any endpoint token cost (as cost_per_1k_queries, per query)."""
    return answer.compute_seconds * price_per_hour / 3600 + answer.api_cost_usd


def answer_record(experiment_id: str, served: Served, answer: Answer, user_id: str | None, start_ns: int,
                  end_ns: int, price_per_hour: float, support_threshold: float, shadow: bool = False,
                  request_id: str | None = None) -> RequestRecord:
    """The record of one answered request (groundedness against the passages it was given, latency, cost)."""
    passages = [h.text for h in answer.passages]
    grounded = answer_support(answer.text, passages) if passages else None
    rid = request_id or new_request_id()
    return RequestRecord(
        request_id=rid, experiment_id=experiment_id, name=f"ask[{served.variant}]", start_ns=start_ns, end_ns=end_ns,
        inputs={"question": answer.question, "user_id": user_id},
        outputs={"answer": answer.text, "sources": list(answer.sources)},
        tags={REQUEST_ID: rid, "variant": served.variant, "model_version": served.version,
              "candidate": served.candidate, "shadow": str(shadow).lower()},
        attributes={"latency_ms": (end_ns - start_ns) / 1e6, "prompt_tokens": answer.prompt_tokens,
                    "new_tokens": answer.new_tokens, "cost_usd": request_cost(answer, price_per_hour),
                    "groundedness": grounded,
                    "hallucinated": None if grounded is None else float(grounded < support_threshold)})


def write_record(record: RequestRecord) -> str:
    """Write one record as a trace and return its trace id. Export must be synchronous in this process
    (tasks.request_writer sees to it), so the trace is in the store, or not, when this returns."""
    span = mlflow.start_span_no_context(name=record.name, span_type="CHAIN", experiment_id=record.experiment_id,
                                        start_time_ns=record.start_ns, inputs=record.inputs, tags=record.tags,
                                        attributes=record.attributes)
    span.set_outputs(record.outputs)
    span.end(end_time_ns=record.end_ns)
    return span.trace_id


def is_complete(trace_id: str, request_id: str) -> bool:
    """Whether the store holds the trace with its spans and its tags. MLflow logs a failed write and carries
    on, and it writes a trace in two steps (spans first, then the trace's info with the tags), so spans alone
    do not prove the record is there."""
    try:
        trace = MlflowClient().get_trace(trace_id)
    except MlflowException:
        return False
    return trace is not None and bool(trace.data.spans) and trace.info.tags.get(REQUEST_ID) == request_id


def discard_trace(experiment_id: str, trace_id: str) -> None:
    """Delete a partly written trace before its record is written again."""
    with suppress(MlflowException):  # nothing was written
        MlflowClient().delete_traces(experiment_id, trace_ids=[trace_id])


def find_trace(experiment_id: str, request_id: str) -> str | None:
    """The trace id of a recorded request, if the store holds it."""
    found = mlflow.search_traces(locations=[experiment_id], filter_string=f"tag.{REQUEST_ID} = '{request_id}'",
                                 max_results=1, return_type="list")
    return found[0].info.trace_id if found else None


class UnknownRequest(LookupError):
    """Feedback names a request the record does not hold."""


def record_feedback(experiment_id: str, request_id: str, rating: float, correct_answer: str | None,
                    user_id: str | None) -> None:
    """Attach a rating (0..1) and optionally the correct answer to the request's trace."""
    trace_id = find_trace(experiment_id, request_id)
    if trace_id is None:
        raise UnknownRequest(request_id)
    source = AssessmentSource(source_type="HUMAN", source_id=user_id or "anonymous")
    mlflow.log_feedback(trace_id=trace_id, name=RATING, value=float(rating), source=source)
    if correct_answer:
        mlflow.log_expectation(trace_id=trace_id, name=CORRECT_ANSWER, value=correct_answer, source=source)


def _assessment(trace, name: str):
    found = [a for a in trace.info.assessments or [] if a.name == name]
    return found[-1] if found else None


def load_requests(experiment_id: str, since_ms: int | None = None, max_results: int = 100_000) -> pd.DataFrame:
    """The recorded requests (tasks.ab_report's input): one row per trace, feedback joined.

    A trace without the request tags is left out: it is either not a gateway request or one still being
    written (its spans are in the store a moment before its tags); the next read sees it whole."""
    where = f"trace.timestamp_ms > {since_ms}" if since_ms else None
    traces = mlflow.search_traces(locations=[experiment_id], filter_string=where, max_results=max_results,
                                  return_type="list", include_spans=True)
    rows, seen = [], set()
    for trace in traces:  # pages are read while the gateway writes: a trace may come twice
        request_id, variant = trace.info.tags.get(REQUEST_ID), trace.info.tags.get("variant")
        if request_id is None or variant is None or request_id in seen:
            continue
        seen.add(request_id)
        root = trace.data.spans[0]
        attributes, tags = root.attributes, trace.info.tags
        rating, correct = _assessment(trace, RATING), _assessment(trace, CORRECT_ANSWER)
        rows.append({
            "request_id": request_id, "timestamp_ms": trace.info.request_time,
            "variant": variant, "model_version": tags.get("model_version"),
            "shadow": tags.get("shadow") == "true", "question": (root.inputs or {}).get("question"),
            "answer": (root.outputs or {}).get("answer"), "sources": (root.outputs or {}).get("sources") or [],
            "latency_ms": attributes.get("latency_ms", math.nan),
            "groundedness": _number(attributes.get("groundedness")),
            "hallucinated": _number(attributes.get("hallucinated")),
            "cost_usd": _number(attributes.get("cost_usd")),
            "rating": _number(rating.value if rating else None),
            "correct_answer": correct.value if correct else None,
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def _number(value) -> float:
    return math.nan if value is None else float(value)
