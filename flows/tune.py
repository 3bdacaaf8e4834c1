"""The tune flow: load -> validate -> retrieval study -> one study per tuned candidate -> tuned config.

Every study reads the train and validation splits only and gets the same budget (`tune.budget_minutes`). The
candidate studies run on the retrieval study's best settings, so the hybrid adapter is tuned on the passages it
will read. One MLflow parent run per search with a child run per trial; the studies live in Optuna storage
(`tune.storage`), so running the same command again after a kill resumes each within what is left of its budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows import stages
from flows.context import RunContext
from flows.fanout import fanout
from flows.pipeline import DEFAULT_CONFIG, prepare
from tasks import candidate_tuning, candidates, run_owner, tuning, tuning_report
from tasks.records import RunRecord
from tasks.tracking import FLOW_TAG, log_data_version, log_record, run_link


@dataclass
class TuneResult:
    run_id: str
    studies: list[tuning_report.StudySummary]
    config_path: Path


def _trial_logger(ctx: RunContext, kind: str, study_name: str, metric: str):
    logger = get_run_logger()

    def log_trial(outcome: tuning.TrialOutcome) -> None:
        with ctx.child_run(f"{kind}-trial-{outcome.number}"):
            log_record(tuning_report.trial_record(outcome, study_name))
        what = " (the config's own settings)" if outcome.baseline else ""
        result = outcome.stopped or f"validation {metric} {outcome.value:.4f}"
        logger.info("%s trial %d%s: %s -> %s (%.1f s)", kind, outcome.number, what, " ".join(outcome.overrides),
                    result, outcome.seconds)

    return log_trial


def _summary(kind: str, study, metric: str, space: str) -> tuning_report.StudySummary:
    trials = tuning.outcomes(study)
    best = tuning_report.best_outcome(trials) if trials else None
    return tuning_report.StudySummary(kind, study.study_name, metric, trials, best,
                                      next((t for t in trials if t.baseline), None), tuning.spent(study)[1],
                                      space, tuning.stopped_count(study))


@task(name="retrieval-study", task_run_name="retrieval-study", cache_policy=NO_CACHE)
def retrieval_study(ctx: RunContext) -> tuning_report.StudySummary:
    """Run or resume the retrieval study (a child run per trial)."""
    data = tuning.tuning_data(ctx.dataset, ctx.cfg)
    metric = f"{ctx.cfg.tune.metric}@k"
    name = tuning.study_name(ctx.cfg, data)
    study = tuning.run_retrieval_study(ctx.cfg, data, on_trial=_trial_logger(ctx, "retrieval", name, metric))
    return _summary("retrieval", study, metric,
                    tuning.space_text(ctx.cfg.tune.retrieval, tuning.passage_budget(ctx.cfg),
                                      ctx.cfg.index.retrieval.rerank is not None))


@task(name="candidate-study", task_run_name="candidate-study[{name}]", cache_policy=NO_CACHE)
def candidate_study(ctx: RunContext, name: str) -> tuning_report.StudySummary:
    """Run or resume the study of one candidate's adapter (a child run per trial); keep the best trial's adapter."""
    data = tuning.tuning_data(ctx.dataset, ctx.cfg)
    study_name = candidate_tuning.candidate_study_name(ctx.cfg, data, name, ctx.base_model_dir)
    metric = "objective (champion policy)"
    study = candidate_tuning.run_candidate_study(ctx.cfg, data, name, ctx.base_model_dir,
                                                 _trial_logger(ctx, name, study_name, metric))
    summary = _summary(name, study, metric,
                       candidate_tuning.space_text(ctx.cfg.tune.finetune, candidates.get(name).adapter))
    candidate_tuning.drop_trial_adapters(study, summary.best)
    return summary


@flow(name="tune", log_prints=True)
def tune_flow(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, data: str | None = None,
              out: str | None = None) -> TuneResult:
    """Tune each candidate on the validation split within the `tune:` budget, one study at a time: the
    retrieval settings (chunking, search mode, fusion) for the retrieving candidates, then each candidate's
    adapter (learning rate, LoRA rank, epochs, training questions, RAFT gold passages); an interrupted search
    resumes. Writes the best settings as a config for `ragtune run`.

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
    tuning.check_shared_storage(cfg)
    with mlflow.start_run(run_name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
                          tags={FLOW_TAG: "tune", **run_owner.owner_tags()}) as parent:
        dataset = stages.load_data(cfg)
        cfg = stages.resolve_answer_type(cfg, dataset)
        log_data_version(dataset)
        validated = stages.validate(RunContext(cfg, dataset, parent.info.run_id))
        studies = []
        if any(candidates.get(n).retrieves for n in cfg.evaluation.candidates):
            studies.append(retrieval_study(RunContext(cfg, validated.dataset, parent.info.run_id)))
        retrieval_found = [o for s in studies for o in s.overrides]
        tuned = RunContext(tuning.configured(cfg, retrieval_found), validated.dataset, parent.info.run_id)
        with fanout(cfg.scale.dask) as parallel:  # the candidate studies are independent of each other
            wide = tuned.for_workers(cfg.scale.dask.threads_per_worker) if cfg.scale.dask.enabled else tuned
            futures = [parallel.submit(candidate_study, ctx=wide, name=name)
                       for name in candidate_tuning.tuned_candidates(cfg)]
            studies += [future.result() for future in futures]
        for summary in studies:  # here, in the parent run (a study may have run on a Dask worker)
            log_record(tuning_report.study_record(summary, tuning.load_study(summary.study, cfg)))
        kept = [o for o in applied if not o.startswith("tune.")]  # the search's own settings stay out of the result
        target = tuning_report.write_tuned_config(config, kept, studies,
                                                  cfg.tune.output or tuning_report.default_output(config))
        log_record(RunRecord(params={"tuned_config": str(target)}, texts={"tuned_config.yaml": target.read_text()}))
    result = TuneResult(parent.info.run_id, studies, target)
    create_markdown_artifact(key="tuning", description="Tuning: what each study searched and found",
                             markdown=tuning_report.summary_markdown(studies, target)
                             + f"\nMLflow run `{result.run_id}`: {run_link(result.run_id)}\n")
    return result
