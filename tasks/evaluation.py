"""Evaluate stage: score one candidate system on held-out questions (see tasks.metrics for definitions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.answering import Answer, AnswerSource
from tasks.metrics import (
    JUDGE_METRICS,
    answer_support,
    bootstrap_ci,
    exact_match,
    f1,
    ragas_judge_scores,
    ragas_scores,
    retrieval_scores,
)
from tasks.settings import EvaluationConfig

QUALITY_METRICS = ("exact_match", "f1", "groundedness", "hallucination_rate", "string_similarity", "rouge", "bleu",
                   "semantic_similarity", "context_precision", "context_recall", *JUDGE_METRICS)
RETRIEVAL_METRICS = ("recall_at_k", "precision_at_k", "mrr", "ndcg_at_k")
NO_JUDGE = "absent: no judge endpoint configured"
NO_CONTEXT = "absent: some questions have no retrieved passages to be faithful to (closed book)"


@dataclass
class CandidateReport:
    name: str
    metrics: dict[str, float]
    per_question: pd.DataFrame
    absent: dict[str, str] = field(default_factory=dict)  # metric -> why it was not computed


def _per_question(answers: list[Answer], qa: pd.DataFrame, doc_text: dict[str, str], retrieval: bool, k: int,
                  threshold: float) -> pd.DataFrame:
    rows = []
    for ans, row in zip(answers, qa.itertuples(index=False), strict=True):
        golds = list(row.answer)
        support = answer_support(ans.text, [h.text for h in ans.passages] + [doc_text[row.doc_id]])
        record = {
            "qa_id": row.qa_id, "question": row.question, "gold": " | ".join(golds), "prediction": ans.text,
            "gold_doc_id": row.doc_id, "retrieved_doc_ids": ",".join(h.doc_id for h in ans.passages),
            "exact_match": exact_match(ans.text, golds), "f1": f1(ans.text, golds),
            "groundedness": support,
            "hallucination_rate": None if support is None else float(support < threshold),
            "latency_ms": ans.latency_ms, "retrieval_ms": ans.retrieval_ms, "ttft_ms": ans.ttft_ms,
            "finish_reason": ans.finish_reason, "compute_seconds": ans.compute_seconds,
            "prompt_tokens": ans.prompt_tokens, "new_tokens": ans.new_tokens,
            "tokens": ans.prompt_tokens + ans.new_tokens, "api_cost_usd": ans.api_cost_usd,
        }
        if retrieval:
            record.update(retrieval_scores([h.doc_id for h in ans.passages], row.doc_id, k))
        rows.append(record)
    return pd.DataFrame(rows)


def cost_per_1k_queries(table: pd.DataFrame, price_per_hour: float) -> float:
    """1000 × (mean compute seconds × hourly price / 3600 + mean endpoint token cost); see tasks.metrics."""
    compute = table["compute_seconds"].mean() * price_per_hour / 3600
    return float(1000 * (compute + table["api_cost_usd"].mean()))


def summarise(table: pd.DataFrame, cfg: EvaluationConfig, seed: int) -> dict[str, float]:
    """Means with bootstrap intervals for quality metrics; latency and TTFT percentiles; tokens; cost."""
    metrics: dict[str, float] = {}
    for name in QUALITY_METRICS + RETRIEVAL_METRICS:
        if name not in table or table[name].isna().all():
            continue
        values = table[name].dropna().astype(float)
        metrics[name] = float(values.mean())
        if name in QUALITY_METRICS:
            low, high = bootstrap_ci(values.tolist(), cfg.bootstrap_samples, seed, cfg.confidence_level)
            metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = low, high
    metrics["latency_p50_ms"] = float(np.percentile(table["latency_ms"], 50))
    metrics["latency_p95_ms"] = float(np.percentile(table["latency_ms"], 95))
    ttft = table["ttft_ms"].dropna().astype(float)
    if not ttft.empty:
        metrics["ttft_p50_ms"] = float(np.percentile(ttft, 50))
        metrics["ttft_p95_ms"] = float(np.percentile(ttft, 95))
    if table["retrieval_ms"].gt(0).any():
        metrics["retrieval_p50_ms"] = float(np.percentile(table["retrieval_ms"], 50))
    metrics["tokens_per_query"] = float(table["tokens"].mean())
    metrics["cost_per_1k_queries"] = cost_per_1k_queries(table, cfg.price_per_hour)
    metrics["num_questions"] = float(len(table))
    return metrics


def absent_metrics(cfg: EvaluationConfig, table: pd.DataFrame) -> dict[str, str]:
    """Judge metrics that were not computed, and why (reported, never filled with a guess)."""
    if cfg.judge is None:
        return dict.fromkeys(JUDGE_METRICS, NO_JUDGE)
    return {"faithfulness": NO_CONTEXT} if "faithfulness" not in table else {}


def evaluate_candidate(name: str, answerer: AnswerSource, qa: pd.DataFrame, doc_text: dict[str, str],
                       cfg: EvaluationConfig, embedding_dir: Path, seed: int) -> CandidateReport:
    """Answer every question with `answerer` and score the answers."""
    answers = answerer.answer(qa["question"].tolist())
    retrieval = answerer.retriever is not None
    table = _per_question(answers, qa, doc_text, retrieval, answerer.top_k, cfg.support_threshold)
    rows = [{
        "user_input": q.question, "response": a.text, "reference": q.answer[0],
        "retrieved_contexts": [h.text for h in a.passages], "reference_contexts": [doc_text[q.doc_id]],
    } for a, q in zip(answers, qa.itertuples(index=False), strict=True)]
    if cfg.ragas:
        for metric, values in ragas_scores(rows, embedding_dir).items():
            table[metric] = values
    if cfg.judge is not None:
        for metric, values in ragas_judge_scores(rows, cfg.judge, embedding_dir).items():
            table[metric] = values
    return CandidateReport(name, summarise(table, cfg, seed), table, absent_metrics(cfg, table))


COMPARISON_COLUMNS = ("exact_match", "f1", "semantic_similarity", "groundedness", "hallucination_rate",
                      *JUDGE_METRICS, "recall_at_k", "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms",
                      "tokens_per_query", "cost_per_1k_queries")


def comparison_table(reports: list[CandidateReport]) -> pd.DataFrame:
    """One row per candidate; an absent metric's cell says why it is absent."""
    rows = []
    for r in reports:
        row: dict[str, object] = {"candidate": r.name}
        for c in COMPARISON_COLUMNS:
            row[c] = r.absent[c] if c in r.absent else r.metrics.get(c, float("nan"))
            if f"{c}_ci_low" in r.metrics:
                row[f"{c}_ci"] = f"[{r.metrics[f'{c}_ci_low']:.2f}, {r.metrics[f'{c}_ci_high']:.2f}]"
        rows.append(row)
    return pd.DataFrame(rows)
