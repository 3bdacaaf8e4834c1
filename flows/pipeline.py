"""The pipeline, written once: load -> validate -> index + finetune -> evaluate -> promote.

`run_pipeline` is the DAG. The composite `retrain` flow runs all of it; the stage flows (validate,
index, finetune, evaluate) run the same body and stop after their stage, so a stage never runs on
unvalidated data and every flow logs the same way: one MLflow parent run with a child run per stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import mlflow
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import server_guard, stages
from flows.context import RunContext
from flows.fanout import fanout
from tasks import candidates, changes, history, promotion, run_owner
from tasks.candidates import Mode
from tasks.champion import Decision
from tasks.errors import UserError
from tasks.finetuning import TrainedAdapter
from tasks.indexing import IndexBuild
from tasks.settings import PipelineConfig, load_config
from tasks.tracking import FLOW_TAG, log_data_version, log_record, pipeline_record, setup_tracking
from tasks.validation import ValidationReport

server_guard.install()

DEFAULT_CONFIG = "configs/default.yaml"
Stage = Literal["validate", "index", "finetune", "evaluate", "promote"]


@dataclass
class PipelineResult:
    run_id: str
    fingerprint: str
    validation: ValidationReport
    answer_type: str
    index: IndexBuild | None = None
    adapters: dict[Mode, TrainedAdapter] = field(default_factory=dict)
    comparison: list[dict] = field(default_factory=list)
    decision: Decision | None = None
    stages: list[changes.StageWork] = field(default_factory=list)  # what each stage recomputed or reused
    what_changed: str = ""  # the same in one line (tasks.changes)


def prepare(config: str, overrides: list[str] | None, data: str | None) -> PipelineConfig:
    """Load the config with CLI-style overrides (`data` is a shortcut for data.path=...); point MLflow at its store."""
    extra = [f"data.path={data}"] if data else []
    cfg = load_config(config, list(overrides or []) + extra)
    setup_tracking(cfg.mlflow)
    run_owner.end_orphaned_runs(mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id)
    return cfg


def run_pipeline(name: str, config: str, overrides: list[str] | None, data: str | None, until: Stage,
                 mode: Mode | None = None) -> PipelineResult:
    """Run the DAG up to and including `until` (`mode`: train only that adapter) under one MLflow parent run.

    An expected error (bad data, config, model source, ...) fails the flow run with its whole message as the
    run's `error` artifact in the Prefect UI; the MLflow parent run ends FAILED."""
    try:
        return _run_dag(name, config, overrides, data, until, mode)
    except UserError as err:
        create_markdown_artifact(key="error", description="Why this run stopped", markdown=f"```\n{err}\n```\n")
        raise


def _run_dag(name: str, config: str, overrides: list[str] | None, data: str | None, until: Stage,
             mode: Mode | None) -> PipelineResult:
    cfg = prepare(config, overrides, data)
    with mlflow.start_run(run_name=f"{name}-{time.strftime('%Y%m%d-%H%M%S')}",
                          tags={FLOW_TAG: name, **run_owner.owner_tags()}) as parent:
        dataset = stages.load_data(cfg)
        cfg = stages.resolve_answer_type(cfg, dataset)
        log_record(pipeline_record(cfg, config))
        log_data_version(dataset)
        validated = stages.validate(RunContext(cfg, dataset, parent.info.run_id))
        ctx = RunContext(cfg, validated.dataset, parent.info.run_id)  # without quarantined rows
        result = PipelineResult(parent.info.run_id, ctx.dataset.fingerprint, validated.report, cfg.data.answer_type)
        if until == "validate":
            return result

        if until == "index":
            result.index = stages.build_index(ctx)
            return result

        evaluate = until in ("evaluate", "promote")
        plan = candidates.plan(cfg.evaluation.candidates, evaluate, mode)
        result.index = stages.build_index(ctx) if plan.needs_index else None
        with fanout(cfg.scale.dask) as parallel:  # the finetunes and evaluations depend only on what they are given
            wide = ctx.for_workers(cfg.scale.dask.threads_per_worker) if cfg.scale.dask.enabled else ctx
            adapters = {m: parallel.submit(stages.finetune, ctx=wide, mode=m, index=result.index)
                        for m in plan.adapter_modes}
            evaluations = [parallel.submit(stages.evaluate_candidate, ctx=wide, name=c.name,
                                           adapter=adapters.get(c.adapter), index=result.index)
                           for c in plan.candidates] if evaluate else []
            result.adapters = {m: future.result() for m, future in adapters.items()}
            outcomes = [future.result() for future in evaluations]
        if not evaluate:
            return result

        table = stages.record_comparison(ctx, outcomes)
        result.comparison = table.to_dict(orient="records")
        registered = None
        if until == "promote":
            promoted = stages.promote(ctx, outcomes)
            result.decision = promoted.decision
            registered = promoted.registered
            log_record(promotion.pipeline_decision_record(promoted, cfg))
        result.stages = changes.stage_work(validated.reused, result.index, result.adapters,
                                           {o.report.name: o.reused_from is not None for o in outcomes})
        result.what_changed = changes.describe(result.stages, registered)
        log_record(changes.changes_record(result.stages, registered))
        if until == "promote":
            log_record(history.history_record(cfg))
        logger = get_run_logger()
        logger.info("comparison:\n%s", table.to_markdown(index=False, floatfmt=".3f"))
        logger.info(result.what_changed)
    return result


ARGS = """
    Args:
        config: YAML config (see configs/); relative paths are read from the project directory.
        overrides: Config overrides, one `key.path=value` each, e.g. `finetune.epochs=2`.
        data: Data path (directory, SQuAD .json or Hugging Face datasets dir), if not the config's `data.path`."""


def _with_args(extra: str = ""):
    """Append the shared parameter docs (Prefect shows them in the run form) to a flow's docstring."""
    def wrap(fn):
        fn.__doc__ = f"{fn.__doc__}\n{ARGS}{extra}\n"
        return fn
    return wrap


@flow(name="retrain", log_prints=True)
@_with_args()
def retrain_flow(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
                 data: str | None = None) -> PipelineResult:
    """Validate the data, rebuild the index, finetune, evaluate every candidate, select and register a champion."""
    return run_pipeline("retrain", config, overrides, data, until="promote")


@flow(name="validate", log_prints=True)
@_with_args()
def validate_flow(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
                  data: str | None = None) -> PipelineResult:
    """Validate the data with the Great Expectations suites."""
    return run_pipeline("validate", config, overrides, data, until="validate")


@flow(name="index", log_prints=True)
@_with_args()
def index_flow(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
               data: str | None = None) -> PipelineResult:
    """Validate, then build the index incrementally (or reuse it) and make it current."""
    return run_pipeline("index", config, overrides, data, until="index")


@flow(name="finetune", log_prints=True)
@_with_args("\n        mode: Adapter to train: closed_book (question -> answer) or raft (with retrieved passages).")
def finetune_flow(mode: Mode = "closed_book", config: str = DEFAULT_CONFIG, overrides: list[str] | None = None,
                  data: str | None = None) -> PipelineResult:
    """Validate, build the index if the mode trains on passages, then train (or reuse) one adapter."""
    return run_pipeline("finetune", config, overrides, data, until="finetune", mode=mode)


@flow(name="evaluate", log_prints=True)
@_with_args("\n        promote: Also apply the champion policy and register the challenger.")
def evaluate_flow(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, data: str | None = None,
                  promote: bool = False) -> PipelineResult:
    """Evaluate the configured candidates (training adapters only if not cached); optionally promote."""
    return run_pipeline("evaluate", config, overrides, data, until="promote" if promote else "evaluate")
