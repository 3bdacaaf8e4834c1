"""Evaluate stage: score one candidate system on held-out questions (see tasks.metrics for definitions).

`run_candidate` builds the system a candidate declares (tasks.candidates) from this run's adapter
and index, answers the test split with it and scores the answers; `evaluate_candidate` scores any
answerer (the registered champion's too, when it is re-scored on a new evaluation set).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.answer_types import DEFAULTS
from tasks.answering import Answer, AnswerSource, answerer_for
from tasks.artifact_store import ArtifactStore, local_copy
from tasks.candidates import Candidate, CandidateBundle
from tasks.data_loading import Dataset, fingerprint_qa
from tasks.exclusive import exclusive, lock_name
from tasks.finetuning import TrainedAdapter
from tasks.heap import return_freed_memory
from tasks.indexing import IndexBuild
from tasks.latency import measure_latency
from tasks.metrics import (
    JUDGE_METRICS,
    answer_support,
    bootstrap_ci,
    bootstrap_statistic,
    confusion_matrix,
    exact_match,
    f1,
    macro_f1,
    ragas_judge_scores,
    ragas_scores,
    retrieval_scores,
)
from tasks.models import embedding_model_dir
from tasks.records import RunRecord
from tasks.reranking import reranker_identity
from tasks.retrieval import Retriever
from tasks.settings import EvaluationConfig, PipelineConfig
from tasks.stage_cache import StageCache, stage_key

QUALITY_METRICS = ("exact_match", "f1", "accuracy", "groundedness", "hallucination_rate", "string_similarity",
                   "rouge", "bleu", "semantic_similarity", "context_precision", "context_recall", *JUDGE_METRICS)
RETRIEVAL_METRICS = ("recall_at_k", "precision_at_k", "mrr", "ndcg_at_k")
NO_JUDGE = "absent: no judge endpoint configured"
NO_CONTEXT = "absent: some questions have no retrieved passages to be faithful to (closed book)"


@dataclass
class CandidateReport:
    name: str
    metrics: dict[str, float]
    per_question: pd.DataFrame
    absent: dict[str, str] = field(default_factory=dict)  # metric -> why it was not computed
    confusion: pd.DataFrame | None = None  # label answers: gold rows x predicted columns


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
    metrics["batch_latency_p50_ms"] = float(np.percentile(table["latency_ms"], 50))
    metrics["batch_latency_p95_ms"] = float(np.percentile(table["latency_ms"], 95))
    ttft = table["ttft_ms"].dropna().astype(float)
    if not ttft.empty:
        metrics["batch_ttft_p50_ms"] = float(np.percentile(ttft, 50))
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


def _label_metrics(table: pd.DataFrame, labels: list[str], cfg: EvaluationConfig,
                   seed: int) -> tuple[dict[str, float], pd.DataFrame]:
    """accuracy per question (a column), macro-F1 with its bootstrap interval, and the confusion matrix."""
    table["accuracy"] = table["exact_match"]
    preds, golds = table["prediction"].tolist(), table["gold"].map(lambda g: g.split(" | ")[0]).tolist()
    low, high = bootstrap_statistic(len(table), lambda idx: macro_f1([preds[i] for i in idx], [golds[i] for i in idx]),
                                    cfg.bootstrap_samples, seed, cfg.confidence_level)
    return ({"macro_f1": macro_f1(preds, golds), "macro_f1_ci_low": low, "macro_f1_ci_high": high},
            confusion_matrix(preds, golds, labels))


def ragas_rows(answers: list[Answer], qa: pd.DataFrame, doc_text: dict[str, str]) -> list[dict]:
    """The rows ragas scores (tasks.metrics.ragas_scores): each answer with its question, reference answer,
    retrieved passages and gold document."""
    return [{"user_input": q.question, "response": a.text, "reference": q.answer[0],
             "retrieved_contexts": [h.text for h in a.passages], "reference_contexts": [doc_text[q.doc_id]]}
            for a, q in zip(answers, qa.itertuples(index=False), strict=True)]


def evaluate_candidate(name: str, answerer: AnswerSource, qa: pd.DataFrame, doc_text: dict[str, str],
                       cfg: EvaluationConfig, embedding_dir: Path, seed: int, answer_type: str = "span",
                       labels: list[str] | None = None) -> CandidateReport:
    """Answer every question with `answerer` (batched) and score the answers by their type; then measure
    latency under control (tasks.latency) on the first `latency_sample` questions."""
    answers = answerer.answer(qa["question"].tolist())
    retrieval = answerer.retriever is not None
    table = _per_question(answers, qa, doc_text, retrieval, answerer.top_k, cfg.support_threshold)
    extra, confusion = (_label_metrics(table, labels, cfg, seed) if answer_type == "label" and labels
                        else ({}, None))
    rows = ragas_rows(answers, qa, doc_text)
    if cfg.ragas:
        for metric, values in ragas_scores(rows, embedding_dir).items():
            table[metric] = values
    if cfg.judge is not None:
        for metric, values in ragas_judge_scores(rows, cfg.judge, embedding_dir).items():
            table[metric] = values
    latency = measure_latency(answerer, qa["question"].tolist()[:cfg.latency_sample], cfg.disturbed_cores)
    metrics = summarise(table, cfg, seed) | extra | latency.metrics()
    return CandidateReport(name, metrics, table, absent_metrics(cfg, table), confusion)


COMMON_COLUMNS = ("groundedness", "hallucination_rate", *JUDGE_METRICS, "recall_at_k", "latency_p50_ms",
                  "latency_p95_ms", "ttft_p50_ms", "tokens_per_query", "cost_per_1k_queries")


def comparison_columns(answer_type: str) -> tuple[str, ...]:
    """The comparison's columns: the type's two headline metrics first (tasks.answer_types)."""
    headline = DEFAULTS[answer_type].headline
    return (*headline, *(("semantic_similarity",) if answer_type != "label" else ()), *COMMON_COLUMNS)


def comparison_table(reports: list[CandidateReport], answer_type: str = "span") -> pd.DataFrame:
    """One row per candidate; an absent metric's cell says why it is absent."""
    rows = []
    for r in reports:
        row: dict[str, object] = {"candidate": r.name}
        for c in comparison_columns(answer_type):
            row[c] = r.absent[c] if c in r.absent else r.metrics.get(c, float("nan"))
            if f"{c}_ci_low" in r.metrics:
                row[f"{c}_ci"] = f"[{r.metrics[f'{c}_ci_low']:.2f}, {r.metrics[f'{c}_ci_high']:.2f}]"
        rows.append(row)
    return pd.DataFrame(rows)


@dataclass
class CandidateOutcome:
    """A candidate's evaluation in this run: its report, the MLflow run holding it, and what serving it needs."""

    report: CandidateReport
    run_id: str
    bundle: CandidateBundle
    reused_from: str | None = None  # the MLflow run that evaluated this very system on these questions


def _gold_documents(test: pd.DataFrame, doc_text: dict[str, str]) -> str:
    """Content hash of the documents the questions point at (groundedness and ragas read them)."""
    docs = "\n".join(f"{d}\t{doc_text[d]}" for d in sorted(set(test["doc_id"])))
    return hashlib.sha256(docs.encode()).hexdigest()[:12]


def evaluation_set_id(test: pd.DataFrame, doc_text: dict[str, str]) -> str:
    """Names the exact evaluation set, the questions with their answers and gold documents: the same id
    means scores are directly comparable, whatever else in the data changed."""
    return f"{fingerprint_qa(test)}:{len(test)}:{_gold_documents(test, doc_text)}"


def evaluation_questions(dataset: Dataset, cfg: PipelineConfig) -> pd.DataFrame:
    """The evaluation set: the test split, capped by data.max_questions_per_split.test."""
    return dataset.split("test", cfg.data.max_questions_per_split.get("test"))


def evaluation_key(candidate: Candidate, cfg: PipelineConfig, adapter_dir: str | None, index_version: str | None,
                   test: pd.DataFrame, doc_text: dict[str, str]) -> str:
    """What an evaluation reads: the system (candidate, base model, adapter and index by content, generation
    and retrieval settings), the questions, their gold documents (groundedness and ragas read them) and how
    answers are scored. Which other candidates run, or where anything is stored, is not part of it."""
    system = {k: v for k, v in asdict(candidate).items() if k != "description"}
    return stage_key(candidate=system, base_model=cfg.base_model.describe(),
                     adapter=Path(adapter_dir).name if adapter_dir else None, index=index_version,
                     retrieval={**cfg.index.model_dump(mode="json", exclude={"root", "threads"}),
                                **reranker_identity(cfg.index)} if candidate.retrieves else None,
                     generation=cfg.generation.model_dump(mode="json"),
                     scoring=cfg.evaluation.model_dump(mode="json", exclude={"candidates"}),
                     questions=evaluation_set_id(test, doc_text), seed=cfg.seed,
                     answer_type=cfg.data.answer_type, labels=cfg.data.labels)


def evaluate_system(candidate: Candidate, cfg: PipelineConfig, base_model_dir: str, adapter_dir: str | None,
                    index_dir: Path | None, test: pd.DataFrame, dataset: Dataset) -> CandidateReport:
    """Build the candidate's system, score it on the questions `test`, and release its model before the next
    stage loads another."""
    retriever = Retriever(index_dir, cfg.index) if index_dir is not None else None
    answerer = answerer_for(candidate, cfg, base_model_dir, adapter_dir, retriever)
    try:
        return evaluate_candidate(candidate.name, answerer, test, dataset.doc_text(), cfg.evaluation,
                                  embedding_model_dir(cfg.index), cfg.seed, cfg.data.answer_type, cfg.data.labels)
    finally:
        del answerer, retriever
        return_freed_memory()


def run_candidate(candidate: Candidate, dataset: Dataset, cfg: PipelineConfig, base_model_dir: str,
                  adapter: TrainedAdapter | None, index: IndexBuild | None, run_id: str,
                  store: ArtifactStore | None = None) -> CandidateOutcome:
    """Evaluate `candidate` as this run built it (`adapter` for its adapter mode, `index` if it retrieves), or
    reuse the evaluation of an earlier run whose system, questions and scoring were the same."""
    if (candidate.adapter is not None) != (adapter is not None):
        raise ValueError(f"candidate {candidate.name} needs the {candidate.adapter or 'no'} adapter")
    index_dir = local_copy(index.path, cfg.index.root, "index", store) if (index and candidate.retrieves) else None
    adapter_dir = str(local_copy(adapter.adapter_dir, cfg.finetune.output_root, "adapters", store)) if adapter else None
    test = evaluation_questions(dataset, cfg)
    cache = StageCache(cfg.cache_root, "evaluate")
    key = evaluation_key(candidate, cfg, adapter_dir, index.version if index_dir is not None else None, test,
                         dataset.doc_text())
    reused_from = None
    with exclusive(lock_name("evaluation", key), cache.directory / ".locks"):  # a concurrent run waits, then reuses
        if (stored := cache.get(key)) is not None:
            report, reused_from = stored
        else:
            report = evaluate_system(candidate, cfg, base_model_dir, adapter_dir, index_dir, test, dataset)
            cache.put(key, (report, run_id))
    lineage = {"data_fingerprint": dataset.fingerprint, "base_model": cfg.base_model.describe(),
               "index_version": index.version if index_dir is not None else "none",
               "adapter_run": adapter.run_id if adapter else "none", "candidate_run_id": run_id,
               "test_set": evaluation_set_id(test, dataset.doc_text())}
    bundle = CandidateBundle(candidate.name, adapter_dir, str(index_dir) if index_dir is not None else None, lineage)
    return CandidateOutcome(report, run_id, bundle, reused_from)


def candidate_record(outcome: CandidateOutcome, cfg: PipelineConfig) -> RunRecord:
    from tasks.report import confusion_figure

    report, bundle = outcome.report, outcome.bundle
    record = RunRecord(
        tags={"candidate": report.name, "answer_type": cfg.data.answer_type, **bundle.lineage,
              "reused": str(outcome.reused_from is not None), "reused_from_run": outcome.reused_from or "none"},
        params={"candidate": report.name, "retrieval": bundle.index_dir is not None,
                "adapter": bool(bundle.adapter_dir), "max_new_tokens": cfg.generation.max_new_tokens,
                "dtype": cfg.generation.dtype},
        metrics=report.metrics, tables={f"per_question_{report.name}.csv": report.per_question})
    if report.absent:
        record.dicts["absent_metrics.json"] = report.absent
    if report.confusion is not None:
        record.tables[f"confusion_{report.name}.csv"] = report.confusion.reset_index()
        record.figures[f"plots/confusion_{report.name}.png"] = lambda: confusion_figure(report.name, report.confusion)
    return record


def candidate_summary(outcome: CandidateOutcome, answer_type: str = "span") -> str:
    report, m = outcome.report, outcome.report.metrics
    scores = " ".join(f"{name} {m.get(name, float('nan')):.3f}" for name in DEFAULTS[answer_type].headline)
    how = f"reused the evaluation of run {outcome.reused_from}" if outcome.reused_from else "evaluated"
    return (f"candidate {report.name} ({how}): {scores}; p50 {m['latency_p50_ms']:.0f} ms "
            f"(one at a time{', disturbed' if m.get('latency_disturbed') else ''})")


def comparison_record(reports: list[CandidateReport], answer_type: str = "span") -> tuple[pd.DataFrame, RunRecord]:
    """The comparison table, its chart with intervals and the latency distributions, for the parent run, whose
    metrics carry each candidate's headline scores (`hybrid.f1`, ...) so the runs table shows them."""
    from tasks.report import comparison_figure, latency_figure

    table = comparison_table(reports, answer_type)
    chart = (*DEFAULTS[answer_type].headline, "semantic_similarity", "groundedness")
    shown = (*DEFAULTS[answer_type].headline, "latency_p95_ms", "cost_per_1k_queries")
    return table, RunRecord(
        metrics={f"{r.name}.{m}": r.metrics[m] for r in reports for m in shown if m in r.metrics},
        texts={"comparison.md": table.to_markdown(index=False, floatfmt=".3f")},
        tables={"comparison.csv": table},
        figures={"plots/comparison.png": lambda: comparison_figure(reports, chart),
                 "plots/latency.png": lambda: latency_figure(reports)})
