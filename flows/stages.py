"""Prefect tasks, one per stage: each calls its tasks/ module and records an MLflow child run.

They take already-loaded objects (no parameter validation or result caching by Prefect: our
caches are content-keyed in tasks/), so the composite flow and the per-stage flows share them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.report import comparison_figure, latency_figure, loss_figure
from tasks import data_loading, evaluation, finetuning, indexing, promotion, validation
from tasks.answering import AnswerSource
from tasks.champion import Decision, decide
from tasks.data_loading import Dataset
from tasks.endpoint import answer_source
from tasks.models import embedding_model_dir
from tasks.settings import PipelineConfig
from tasks.tracking import log_figure, log_table

CANDIDATE_MODES = {"base": None, "finetuned": "closed_book", "rag": None, "hybrid": "raft"}
RETRIEVING = {"rag", "hybrid"}


@dataclass
class CandidateOutcome:
    report: evaluation.CandidateReport
    run_id: str
    bundle: promotion.CandidateBundle


@contextmanager
def child_run(name: str, parent_run_id: str | None) -> Iterator[mlflow.ActiveRun]:
    """A run nested under the pipeline's parent run, or a top-level run for a stage used alone."""
    if parent_run_id is None:
        with mlflow.start_run(run_name=name) as run:
            yield run
    else:
        with mlflow.start_run(run_name=name, parent_run_id=parent_run_id, nested=True) as run:
            yield run


@task(name="load-data", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def load_data(cfg: PipelineConfig) -> Dataset:
    dataset = data_loading.load_dataset(cfg.data)
    get_run_logger().info("loaded %s: %d documents, %d QA pairs, fingerprint %s", dataset.source,
                          len(dataset.documents), len(dataset.qa), dataset.fingerprint)
    return dataset


def log_data_version(dataset: Dataset) -> None:
    """mlflow.log_input for both tables, named by the content fingerprint."""
    for table, df in (("documents", dataset.documents), ("qa", dataset.qa)):
        frame = df.assign(answer=df["answer"].map(json.dumps)) if "answer" in df else df
        mlflow.log_input(mlflow.data.from_pandas(frame, source=dataset.source, name=f"{table}@{dataset.fingerprint}"),
                         context=table)
    mlflow.set_tag("data_fingerprint", dataset.fingerprint)


@task(name="validate", cache_policy=NO_CACHE)
def validate(dataset: Dataset, cfg: PipelineConfig, parent_run_id: str | None) -> validation.ValidationReport:
    """Run the Great Expectations suites; log the result; raise DataValidationError on failure."""
    report = validation.validate_dataset(dataset.documents, dataset.qa, cfg.validation, dataset.source)
    with child_run("validate", parent_run_id):
        mlflow.set_tag("data_fingerprint", dataset.fingerprint)
        mlflow.log_metrics({"validation_success": float(report.success), "failed_expectations": len(report.failures)})
        mlflow.log_dict(report.results, "validation/result.json")
        mlflow.log_text(report.to_markdown(), "validation/report.md")
    if not report.success:
        get_run_logger().error("data validation failed:\n%s", report.to_markdown())
    validation.ensure_valid(report)
    return report


@task(name="build-index", cache_policy=NO_CACHE)
def build_index(dataset: Dataset, cfg: PipelineConfig, parent_run_id: str | None) -> indexing.IndexBuild:
    build = indexing.build_index(dataset.documents, dataset.fingerprint, cfg.index,
                                 recall_queries=dataset.split("validation")["question"].tolist())
    retriever = indexing.Retriever(build.path, cfg.index)
    ks = sorted({*cfg.index.eval_k, cfg.index.top_k})
    quality = {f"{prefix}_{name}": value
               for prefix, split in (("val", "validation"), ("test", "test"))
               for name, value in indexing.evaluate_retrieval(retriever, dataset.split(split), ks).items()}
    counts = {"num_chunks": build.num_chunks, "embedded_chunks": build.embedded,
              "reused_vectors": build.reused_vectors, "removed_chunks": build.removed, "build_seconds": build.seconds}
    if build.ann_recall is not None:
        counts[f"ann_recall_at_{cfg.index.faiss.recall_k}"] = build.ann_recall
    with child_run("index", parent_run_id):
        mlflow.set_tags({"index_version": build.version, "data_fingerprint": dataset.fingerprint,
                         "reused": str(build.reused), "faiss_type": build.faiss_type})
        mlflow.log_params({"chunking": cfg.index.chunking.strategy, "max_tokens": cfg.index.chunking.max_tokens,
                           "overlap_tokens": cfg.index.chunking.overlap_tokens, "faiss_type": build.faiss_type,
                           "top_k": cfg.index.top_k, "embedding_model": retriever.manifest["embedding_model"]})
        mlflow.log_metrics({**quality, **counts})
        mlflow.log_dict(retriever.manifest, "index/manifest.json")
    k = cfg.index.top_k
    get_run_logger().info(
        "index %s (%s, %s): %d chunks, %d embedded, %d reused, %d removed; validation recall@%d %.3f, ndcg@%d %.3f",
        build.version, "reused" if build.reused else "built", build.faiss_type, build.num_chunks, build.embedded,
        build.reused_vectors, build.removed, k, quality.get(f"val_recall_at_{k}", float("nan")), k,
        quality.get(f"val_ndcg_at_{k}", float("nan")))
    return build


@task(name="finetune", cache_policy=NO_CACHE)
def finetune(mode: finetuning.Mode, dataset: Dataset, cfg: PipelineConfig, base_model_dir: str,
             index: indexing.IndexBuild | None, parent_run_id: str | None) -> tuple[finetuning.FinetuneResult, str]:
    retriever = indexing.Retriever(index.path, cfg.index) if index is not None else None
    with child_run(f"finetune-{mode}", parent_run_id) as run:
        result = finetuning.finetune(mode, base_model_dir, dataset.split("train"), dataset.split("validation"),
                                     dataset.fingerprint, cfg.finetune, cfg.generation, cfg.seed, retriever)
        mlflow.set_tags({"mode": mode, "adapter": Path(result.adapter_dir).name, "reused": str(result.reused),
                         "data_fingerprint": dataset.fingerprint, "base_model": cfg.base_model.describe(),
                         "device": result.device, "stopped_early": str(result.stopped_early),
                         "resumed_from_step": str(result.resumed_from_step)})
        ft = cfg.finetune
        mlflow.log_params({"mode": mode, "lora_r": ft.lora.r, "lora_alpha": ft.lora.alpha,
                           "epochs": ft.epochs, "max_steps": ft.max_steps,
                           "batch_size": result.batch_size, "learning_rate": ft.learning_rate,
                           "raft_top_k": ft.raft.top_k, "raft_gold_probability": ft.raft.gold_probability,
                           "early_stopping_patience": ft.early_stopping.patience,
                           "early_stopping_min_delta": ft.early_stopping.min_delta,
                           "checkpoint_every_steps": ft.checkpoint_every_steps})
        for step, loss in enumerate(result.train_losses, start=1):
            mlflow.log_metric("train_loss", loss, step=step)
        for step, loss in zip(result.eval_steps, result.eval_losses, strict=True):
            if not math.isnan(loss):
                mlflow.log_metrics({"epoch_eval_loss": loss, "epoch_perplexity": math.exp(loss)}, step=step)
        # eval_loss/perplexity: the kept (best) adapter's held-out values.
        mlflow.log_metrics({k: v for k, v in {
            "eval_loss": result.eval_loss, "perplexity": result.perplexity, "train_seconds": result.seconds,
            "tokens_per_second": result.tokens_per_second, "train_examples": result.train_examples,
            "model_load_seconds": result.model_load_seconds, "best_step": result.best_step,
            "raft_gold_rate": result.gold_rate}.items() if not math.isnan(v)})
        mlflow.log_artifacts(result.adapter_dir, "adapter")
        if result.train_losses:
            log_figure(loss_figure(result), "plots/loss_curve.png")
    get_run_logger().info(
        "finetune[%s] %s on %s: %d steps, %.0f tokens/s, best eval loss %.3f (step %d), perplexity %.2f%s; "
        "base model loaded in %.2f s", mode, "reused" if result.reused else "trained", result.device, result.steps,
        result.tokens_per_second, result.eval_loss, result.best_step, result.perplexity,
        ", stopped early" if result.stopped_early else "", result.model_load_seconds)
    return result, run.info.run_id


def candidate_answerer(name: str, cfg: PipelineConfig, base_model_dir: str, adapter_dir: str | None,
                       index: indexing.IndexBuild | None) -> AnswerSource:
    retriever = indexing.Retriever(index.path, cfg.index) if name in RETRIEVING else None
    return answer_source(name, cfg.generation, base_model_dir, adapter_dir, retriever, cfg.index.top_k)


@task(name="evaluate-candidate", cache_policy=NO_CACHE)
def evaluate_candidate(name: str, dataset: Dataset, cfg: PipelineConfig, base_model_dir: str,
                       adapter: tuple[finetuning.FinetuneResult, str] | None, index: indexing.IndexBuild | None,
                       parent_run_id: str | None) -> CandidateOutcome:
    adapter_dir = adapter[0].adapter_dir if adapter else None
    test = dataset.split("test", cfg.data.max_questions_per_split.get("test"))
    answerer = candidate_answerer(name, cfg, base_model_dir, adapter_dir, index)
    with child_run(f"candidate-{name}", parent_run_id) as run:
        report = evaluation.evaluate_candidate(name, answerer, test, dataset.doc_text(), cfg.evaluation,
                                               embedding_model_dir(cfg.index), cfg.seed)
        lineage = {"data_fingerprint": dataset.fingerprint, "base_model": cfg.base_model.describe(),
                   "index_version": index.version if (index and name in RETRIEVING) else "none",
                   "adapter_run": adapter[1] if adapter else "none", "candidate_run_id": run.info.run_id,
                   "test_set": evaluation_set_id(dataset, test)}
        mlflow.set_tags({"candidate": name, **lineage})
        mlflow.log_params({"candidate": name, "retrieval": name in RETRIEVING, "adapter": bool(adapter_dir),
                           "max_new_tokens": cfg.generation.max_new_tokens})
        mlflow.log_metrics(report.metrics)
        if report.absent:
            mlflow.log_dict(report.absent, "absent_metrics.json")
        log_table(report.per_question, f"per_question_{name}.csv")
    bundle = promotion.CandidateBundle(name, adapter_dir, str(index.path) if (index and name in RETRIEVING) else None,
                                       lineage)
    get_run_logger().info("candidate %s: EM %.3f F1 %.3f p50 %.0f ms", name, report.metrics["exact_match"],
                          report.metrics["f1"], report.metrics["latency_p50_ms"])
    return CandidateOutcome(report, run.info.run_id, bundle)


def evaluation_set_id(dataset: Dataset, test: pd.DataFrame) -> str:
    """Names the exact evaluation set: same id means scores are directly comparable."""
    digest = hashlib.sha256("\n".join(sorted(test["qa_id"])).encode()).hexdigest()[:12]
    return f"{dataset.fingerprint}:{len(test)}:{digest}"


def log_comparison(outcomes: list[CandidateOutcome]) -> pd.DataFrame:
    """Comparison table, chart with intervals and latency distributions on the active (parent) run."""
    reports = [o.report for o in outcomes]
    table = evaluation.comparison_table(reports)
    log_table(table, "comparison.csv")
    mlflow.log_text(table.to_markdown(index=False, floatfmt=".3f"), "comparison.md")
    log_figure(comparison_figure(reports), "plots/comparison.png")
    log_figure(latency_figure(reports), "plots/latency.png")
    return table


def _champion_metrics(cfg: PipelineConfig, outcome: CandidateOutcome,
                      dataset: Dataset) -> tuple[dict[str, float] | None, pd.DataFrame | None, str]:
    """The current champion's metrics and per-question scores on this run's evaluation set, and how
    they were obtained (the per-question scores feed the paired significance test)."""
    champion = promotion.current_champion(cfg.champion.model_name)
    if champion is None:
        return None, None, "no champion"
    if champion.tags.get("test_set") == outcome.bundle.lineage["test_set"]:
        return (promotion.champion_run_metrics(champion), promotion.champion_run_per_question(champion),
                "stored metrics (same evaluation set)")
    # Different evaluation set: re-score the served champion on today's questions.
    model = mlflow.pyfunc.load_model(f"models:/{cfg.champion.model_name}@{promotion.CHAMPION}")
    test = dataset.split("test", cfg.data.max_questions_per_split.get("test"))
    report = evaluation.evaluate_candidate("champion", model.unwrap_python_model().answerer, test,
                                           dataset.doc_text(), cfg.evaluation, embedding_model_dir(cfg.index), cfg.seed)
    return report.metrics, report.per_question, "re-scored on this evaluation set"


@task(name="promote", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE)
def promote(outcomes: list[CandidateOutcome], dataset: Dataset, cfg: PipelineConfig,
            parent_run_id: str | None) -> Decision:
    by_name = {o.report.name: o for o in outcomes}
    with child_run("promote", parent_run_id):
        preliminary = decide({n: o.report.metrics for n, o in by_name.items()}, cfg.champion, None)
        champion_metrics, champion_per_question, scored_on = None, None, "no challenger"
        if preliminary.challenger is not None:
            champion_metrics, champion_per_question, scored_on = _champion_metrics(
                cfg, by_name[preliminary.challenger], dataset)
        mlflow.set_tag("champion_scored_on", scored_on)
        decision = decide({n: o.report.metrics for n, o in by_name.items()}, cfg.champion, champion_metrics,
                          per_question={n: o.report.per_question for n, o in by_name.items()},
                          champion_per_question=champion_per_question, seed=cfg.seed)
        mlflow.log_text(decision.to_markdown(cfg.champion), "decision.md")
        mlflow.log_dict(asdict(decision), "decision.json")
        mlflow.log_metric("promoted", float(decision.promote))
        if decision.challenger is not None:
            version = promotion.log_and_register(by_name[decision.challenger].bundle, cfg, decision.promote)
            mlflow.set_tags({"challenger": decision.challenger, "model_version": version.version})
    logger = get_run_logger()
    for reason in decision.reasons:
        logger.info("champion policy: %s", reason)
    return decision
