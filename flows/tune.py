"""The tune flow: load -> validate -> retrieval study (validation split only) -> tuned config.

One MLflow parent run per search with a child run per trial; the study lives in Optuna storage
(`tune.storage`), so running the same command again after a kill resumes it within what is left
of the budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows import stages
from flows.context import RunContext
from flows.pipeline import DEFAULT_CONFIG, prepare
from tasks import run_owner, tuning, tuning_report
from tasks.tracking import FLOW_TAG, log_data_version, log_record, run_link


@dataclass
class TuneResult:
    run_id: str
    summary: tuning_report.StudySummary


@task(name="retrieval-study", task_run_name="retrieval-study", cache_policy=NO_CACHE)
def retrieval_study(ctx: RunContext, config: str, overrides: list[str]) -> TuneResult:
    """Run or resume the study (a child run per trial), then write the best settings as a config."""
    logger = get_run_logger()
    data = tuning.tuning_data(ctx.dataset, ctx.cfg)

    def log_trial(outcome: tuning.TrialOutcome) -> None:
        with ctx.child_run(f"trial-{outcome.number}"):
            log_record(tuning_report.trial_record(outcome, name))
        logger.info("trial %d%s: %s -> validation %s@k %.4f (%.1f s)", outcome.number,
                    " (the config's own settings)" if outcome.baseline else "", " ".join(outcome.overrides),
                    ctx.cfg.tune.metric, outcome.value, outcome.seconds)

    name = tuning.study_name(ctx.cfg, data)
    study = tuning.run_retrieval_study(ctx.cfg, data, on_trial=log_trial)
    trials = tuning.outcomes(study)
    best = tuning_report.best_outcome(trials)
    baseline = next((t for t in trials if t.baseline), None)
    kept = [o for o in overrides if not o.startswith("tune.")]  # the search's own settings stay out of the result
    target = tuning_report.write_tuned_config(config, kept, best, baseline, ctx.cfg.tune.metric, study.study_name,
                                              ctx.cfg.tune.output or tuning_report.default_output(config))
    summary = tuning_report.StudySummary(study.study_name, ctx.cfg.tune.metric, trials, best, baseline, target,
                                         tuning.spent(study)[1])
    log_record(tuning_report.study_record(summary, study))
    return TuneResult(ctx.parent_run_id, summary)


@flow(name="tune", log_prints=True)
def tune_flow(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, data: str | None = None,
              out: str | None = None) -> TuneResult:
    """Search the retrieval settings (chunking, search mode, fusion) on the validation split within the
    `tune:` budget, resuming an interrupted search, and write the best settings as a config.

    Args:
        config: YAML config (see configs/); relative paths are read from the project directory.
        overrides: Config overrides, one `key.path=value` each, e.g. `tune.budget_minutes=30`.
        data: Data path (directory, SQuAD .json or Hugging Face datasets dir), if not the config's `data.path`.
        out: Where to write the tuned config (default: `tune.output`, else <config>-tuned.yaml beside it).
    """
    applied = list(overrides or []) + ([f"data.path={data}"] if data else [])
    if out:
        applied.append(f"tune.output={out}")
    cfg = prepare(config, applied, None)
    with mlflow.start_run(run_name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
                          tags={FLOW_TAG: "tune", **run_owner.owner_tags()}) as parent:
        dataset = stages.load_data(cfg)
        cfg = stages.resolve_answer_type(cfg, dataset)
        log_data_version(dataset)
        validated = stages.validate(RunContext(cfg, dataset, parent.info.run_id))
        result = retrieval_study(RunContext(cfg, validated.dataset, parent.info.run_id), config, applied)
    create_markdown_artifact(key="tuning", description="Retrieval tuning: best settings and trials",
                             markdown=tuning_report.summary_markdown(result.summary)
                             + f"\nMLflow run `{result.run_id}`: {run_link(result.run_id)}\n")
    return result
