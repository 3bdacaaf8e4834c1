"""Every gateway request as an MLflow trace, and feedback as assessments on it.

MLflow's own tracing, so the requests show in the MLflow UI's Traces view of the config's
experiment, filterable by the tags `variant`, `model_version` and `shadow`. A trace is built after
the answer (with the request's real start and end times) and handed to MLflow's asynchronous
exporter: writing it is off the response path. `flush()` writes what is queued (graceful
shutdown); what a crash can lose is the exporter's queue, i.e. requests answered within the last
flush interval (measured in benchmarks/bench_gateway.py and tested in tests/test_gateway.py).
The trace id is the request id the gateway returns, and feedback finds its request by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow.entities import AssessmentSource
from mlflow.exceptions import MlflowException

from tasks.answering import Answer
from tasks.metrics import answer_support

RATING, CORRECT_ANSWER = "user_rating", "correct_answer"
COLUMNS = ["request_id", "timestamp_ms", "variant", "model_version", "shadow", "question", "answer", "sources",
           "latency_ms", "groundedness", "hallucinated", "cost_usd", "rating", "correct_answer"]


@dataclass(frozen=True)
class Served:
    """Who answered: the variant, the registered version behind it, and its candidate."""

    variant: str
    version: str
    candidate: str


def request_cost(answer: Answer, price_per_hour: float) -> float:
    """Compute time at the hourly price plus any endpoint token cost (as cost_per_1k_queries, per query)."""
    return answer.compute_seconds * price_per_hour / 3600 + answer.api_cost_usd


def record_answer(experiment_id: str, served: Served, answer: Answer, user_id: str | None, start_ns: int,
                  end_ns: int, price_per_hour: float, support_threshold: float, shadow: bool = False) -> str:
    """Record one answered request; returns its trace id (the gateway's request id)."""
    passages = [h.text for h in answer.passages]
    grounded = answer_support(answer.text, passages) if passages else None
    span = mlflow.start_span_no_context(
        name=f"ask[{served.variant}]", span_type="CHAIN", experiment_id=experiment_id, start_time_ns=start_ns,
        inputs={"question": answer.question, "user_id": user_id},
        tags={"variant": served.variant, "model_version": served.version, "candidate": served.candidate,
              "shadow": str(shadow).lower()},
        attributes={"latency_ms": (end_ns - start_ns) / 1e6, "prompt_tokens": answer.prompt_tokens,
                    "new_tokens": answer.new_tokens, "cost_usd": request_cost(answer, price_per_hour),
                    "groundedness": grounded, "hallucinated": None if grounded is None else
                    float(grounded < support_threshold)})
    span.set_outputs({"answer": answer.text, "sources": answer.sources})
    span.end(end_time_ns=end_ns)
    return span.trace_id


def flush() -> None:
    """Write every queued trace now."""
    mlflow.flush_trace_async_logging(terminate=False)


class UnknownRequest(LookupError):
    """Feedback names a request the record does not hold."""


def _known(request_id: str) -> bool:
    try:
        return mlflow.get_trace(request_id) is not None
    except MlflowException:
        return False


def record_feedback(request_id: str, rating: float, correct_answer: str | None, user_id: str | None) -> None:
    """Attach a rating (0..1) and optionally the correct answer to the request's trace."""
    if not _known(request_id):
        flush()  # the request may still be in the exporter's queue
        if not _known(request_id):
            raise UnknownRequest(request_id)
    source = AssessmentSource(source_type="HUMAN", source_id=user_id or "anonymous")
    mlflow.log_feedback(trace_id=request_id, name=RATING, value=float(rating), source=source)
    if correct_answer:
        mlflow.log_expectation(trace_id=request_id, name=CORRECT_ANSWER, value=correct_answer, source=source)


def _assessment(trace, name: str):
    found = [a for a in trace.info.assessments or [] if a.name == name]
    return found[-1] if found else None


def load_requests(experiment_id: str, since_ms: int | None = None, max_results: int = 100_000) -> pd.DataFrame:
    """The recorded requests (tasks.ab_report's input): one row per trace, feedback joined."""
    where = f"trace.timestamp_ms > {since_ms}" if since_ms else None
    traces = mlflow.search_traces(experiment_ids=[experiment_id], filter_string=where, max_results=max_results,
                                  return_type="list", include_spans=True, flush=True)
    rows = []
    for trace in traces:
        root = trace.data.spans[0]
        attributes, tags = root.attributes, trace.info.tags
        rating, correct = _assessment(trace, RATING), _assessment(trace, CORRECT_ANSWER)
        rows.append({
            "request_id": trace.info.trace_id, "timestamp_ms": trace.info.request_time,
            "variant": tags.get("variant"), "model_version": tags.get("model_version"),
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
