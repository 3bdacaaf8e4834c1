"""Evaluate stage: score one candidate system on held-out questions (see tasks.metrics for definitions)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.answering import Answerer
from tasks.metrics import (
    answer_support,
    bootstrap_ci,
    exact_match,
    f1,
    ragas_scores,
    retrieval_scores,
)
from tasks.settings import EvaluationConfig

QUALITY_METRICS = ("exact_match", "f1", "groundedness", "hallucination_rate", "string_similarity", "rouge", "bleu",
                   "semantic_similarity", "context_precision", "context_recall")
RETRIEVAL_METRICS = ("recall_at_k", "precision_at_k", "mrr")


@dataclass
class CandidateReport:
    name: str
    metrics: dict[str, float]
    per_question: pd.DataFrame


def _per_question(answers, qa: pd.DataFrame, doc_text: dict[str, str], retrieval: bool, k: int,
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
            "latency_ms": ans.latency_ms, "compute_seconds": ans.compute_seconds,
            "tokens": ans.prompt_tokens + ans.new_tokens,
        }
        if retrieval:
            record.update(retrieval_scores([h.doc_id for h in ans.passages], row.doc_id, k))
        rows.append(record)
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame, cfg: EvaluationConfig, seed: int) -> dict[str, float]:
    """Means with bootstrap 95% intervals for quality metrics; latency percentiles; cost."""
    metrics: dict[str, float] = {}
    for name in QUALITY_METRICS + RETRIEVAL_METRICS:
        if name not in table or table[name].isna().all():
            continue
        values = table[name].dropna().astype(float)
        metrics[name] = float(values.mean())
        if name in QUALITY_METRICS:
            low, high = bootstrap_ci(values.tolist(), cfg.bootstrap_samples, seed)
            metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = low, high
    metrics["latency_p50_ms"] = float(np.percentile(table["latency_ms"], 50))
    metrics["latency_p95_ms"] = float(np.percentile(table["latency_ms"], 95))
    metrics["tokens_per_query"] = float(table["tokens"].mean())
    metrics["cost_per_1k_queries"] = float(table["compute_seconds"].mean() * 1000 * cfg.price_per_hour / 3600)
    metrics["num_questions"] = float(len(table))
    return metrics


def evaluate_candidate(name: str, answerer: Answerer, qa: pd.DataFrame, doc_text: dict[str, str],
                       cfg: EvaluationConfig, embedding_dir: Path, seed: int) -> CandidateReport:
    """Answer every question with `answerer` and score the answers."""
    answers = answerer.answer(qa["question"].tolist())
    retrieval = answerer.retriever is not None
    table = _per_question(answers, qa, doc_text, retrieval, answerer.top_k, cfg.support_threshold)
    if cfg.ragas:
        rows = [{
            "user_input": q.question, "response": a.text, "reference": q.answer[0],
            "retrieved_contexts": [h.text for h in a.passages], "reference_contexts": [doc_text[q.doc_id]],
        } for a, q in zip(answers, qa.itertuples(index=False), strict=True)]
        for metric, values in ragas_scores(rows, embedding_dir).items():
            table[metric] = values
    return CandidateReport(name, summarise(table, cfg, seed), table)


def comparison_table(reports: list[CandidateReport]) -> pd.DataFrame:
    columns = ["exact_match", "f1", "semantic_similarity", "groundedness", "hallucination_rate", "recall_at_k",
               "latency_p50_ms", "latency_p95_ms", "tokens_per_query", "cost_per_1k_queries"]
    rows = []
    for r in reports:
        row = {"candidate": r.name}
        for c in columns:
            row[c] = r.metrics.get(c, float("nan"))
            if f"{c}_ci_low" in r.metrics:
                row[f"{c}_ci"] = f"[{r.metrics[f'{c}_ci_low']:.2f}, {r.metrics[f'{c}_ci_high']:.2f}]"
        rows.append(row)
    return pd.DataFrame(rows)
