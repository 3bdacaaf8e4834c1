"""Prefect tasks, one per stage: each calls its tasks/ function, logs the result to an MLflow child run
of the pipeline run and says in the Prefect log what happened. No stage logic lives here.

Caching is content-keyed inside tasks/ (index versions, adapters), so Prefect's own result caching
is off; no stage is retried by Prefect except loading, and `promote` never is (a retry could
register a second model version).
"""

from __future__ import annotations

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows import locks
from flows.context import RunContext
from tasks import (
    answer_types,
    candidates,
    data_loading,
    evaluation,
    exclusive,
    finetuning,
    indexing,
    promotion,
    quarantine,
    validation,
)
from tasks.candidates import Mode
from tasks.data_loading import Dataset
from tasks.errors import UserError
from tasks.evaluation import CandidateOutcome
from tasks.finetuning import TrainedAdapter
from tasks.indexing import IndexBuild
from tasks.models import token_counter
from tasks.quarantine import Validated
from tasks.settings import PipelineConfig
from tasks.tracking import log_record, run_link

exclusive.use(locks.shared_lock)  # here, so every process that runs a stage (a Dask worker too) shares the locks


def _retry_unless_bad_data(task, task_run, state) -> bool:
    """A read may fail for a passing reason (a network file system); data that breaks the contract will not mend."""
    try:
        state.result()
    except UserError:
        return False
    except Exception:  # noqa: BLE001 - any other failure is worth the configured retries
        return True
    return True


@task(name="load-data", task_run_name="load-data", retries=2, retry_delay_seconds=2,
      retry_condition_fn=_retry_unless_bad_data, cache_policy=NO_CACHE)
def load_data(cfg: PipelineConfig) -> Dataset:
    dataset = data_loading.load_dataset(cfg.data)
    logger = get_run_logger()
    logger.info("loaded %s: %d documents, %d QA pairs, fingerprint %s", dataset.source, len(dataset.documents),
                len(dataset.qa), dataset.fingerprint)
    for note in dataset.notes:
        logger.warning("%s: %s", dataset.source, note)
    return dataset


@task(name="answer-type", task_run_name="answer-type", cache_policy=NO_CACHE)
def resolve_answer_type(cfg: PipelineConfig, dataset: Dataset) -> PipelineConfig:
    """The config with the answer type decided (declared or inferred) and what follows from it filled in."""
    resolved, settings = answer_types.resolve(cfg, dataset.qa, dataset.documents,
                                              token_counter(cfg.base_model, cfg.model_cache))
    log_record(answer_types.answer_type_record(settings))
    get_run_logger().info("answer type %s (%s): %s", settings.answer_type,
                          "declared" if settings.declared else "inferred", settings.reason)
    return resolved


@task(name="validate", task_run_name="validate", cache_policy=NO_CACHE)
def validate(ctx: RunContext) -> Validated:
    """Run the Great Expectations suites (quarantining failing rows if configured); log the result;
    raise DataValidationError when the run must stop."""
    validated = quarantine.validate_cached(ctx.dataset, ctx.cfg)
    with ctx.child_run("validate"):
        log_record(quarantine.validated_record(validated))
    logger = get_run_logger()
    if validated.reused:
        logger.info("validation reused: this data was validated with these rules before")
    if (summary := quarantine.quarantine_summary(validated)) is not None:
        logger.warning(summary)
    validation.ensure_valid(validated.report)
    return validated


@task(name="index", task_run_name="index", cache_policy=NO_CACHE)
def build_index(ctx: RunContext) -> IndexBuild:
    data = ctx.dataset
    report = indexing.refresh_index(data.documents, ctx.cfg.index, data.split("validation"), data.split("test"),
                                    ctx.cfg.cache_root, ctx.store)
    with ctx.child_run("index"):
        log_record(indexing.index_record(report, ctx.cfg.index, data.fingerprint))
    get_run_logger().info(indexing.index_summary(report, ctx.cfg.index))
    return report.build


@task(name="finetune", task_run_name="finetune[{mode}]", cache_policy=NO_CACHE)
def finetune(ctx: RunContext, mode: Mode, index: IndexBuild | None) -> TrainedAdapter:
    with ctx.child_run(f"finetune-{mode}") as run:
        result = finetuning.train_adapter(mode, ctx.dataset, ctx.cfg, ctx.base_model_dir, index, ctx.store)
        log_record(finetuning.finetune_record(result, ctx.cfg.finetune.for_mode(mode), ctx.dataset.fingerprint,
                                              ctx.cfg.base_model.describe()))
    get_run_logger().info(finetuning.finetune_summary(result))
    return TrainedAdapter(result, run.info.run_id)


@task(name="evaluate", task_run_name="evaluate[{name}]", cache_policy=NO_CACHE)
def evaluate_candidate(ctx: RunContext, name: str, adapter: TrainedAdapter | None,
                       index: IndexBuild | None) -> CandidateOutcome:
    with ctx.child_run(f"candidate-{name}") as run:
        outcome = evaluation.run_candidate(candidates.get(name), ctx.dataset, ctx.cfg, ctx.base_model_dir, adapter,
                                           index, run.info.run_id, ctx.store)
        log_record(evaluation.candidate_record(outcome, ctx.cfg))
    get_run_logger().info(evaluation.candidate_summary(outcome, ctx.cfg.data.answer_type))
    return outcome


def record_comparison(ctx: RunContext, outcomes: list[CandidateOutcome]) -> pd.DataFrame:
    """The comparison table, chart and latency plot on the pipeline's (active) parent run, and the table as
    an artifact of the Prefect flow run with the MLflow run's link."""
    table, record = evaluation.comparison_record([o.report for o in outcomes], ctx.cfg.data.answer_type)
    log_record(record)
    create_markdown_artifact(key="comparison", description="Candidates on the test split",
                             markdown=f"{record.texts['comparison.md']}\n\nMLflow run `{ctx.parent_run_id}`: "
                                      f"{run_link(ctx.parent_run_id)}\n")
    return table


@task(name="promote", task_run_name="promote", cache_policy=NO_CACHE)
def promote(ctx: RunContext, outcomes: list[CandidateOutcome]) -> promotion.Promotion:
    with ctx.child_run("promote") as run:
        result = promotion.promote(outcomes, ctx.dataset, ctx.cfg)
        record = promotion.promotion_record(result, ctx.cfg)
        log_record(record)
    create_markdown_artifact(key="champion-decision", description="Champion decision",
                             markdown=f"{record.texts['decision.md']}\nMLflow run `{run.info.run_id}`: "
                                      f"{run_link(run.info.run_id)}\n")
    logger = get_run_logger()
    for reason in result.decision.reasons:
        logger.info("champion policy: %s", reason)
    return result
