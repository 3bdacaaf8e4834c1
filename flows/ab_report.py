"""The ab-report flow: turn the gateway's recorded requests into a decision, logged like the offline one."""

from __future__ import annotations

import time

import mlflow
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows.pipeline import DEFAULT_CONFIG, prepare
from tasks import ab_promotion, run_owner
from tasks.tracking import FLOW_TAG, log_record, run_link


@flow(name="ab-report", log_prints=True)
def ab_report_flow(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, since_hours: float = 168.0,
                   apply: bool = True) -> str:
    """Per variant: feedback score, online groundedness and hallucination rate, latency, cost, traffic, with
    intervals; a test between the variants; the `ab:` policy's decision, applied to the registry's aliases.

    Args:
        config: YAML config (see configs/): its registered model, experiment (the gateway's traces) and `ab:` policy.
        overrides: Config overrides, one `key.path=value` each, e.g. `ab.min_feedback_per_variant=50`.
        since_hours: Only requests of the last this many hours.
        apply: Move the aliases as decided (false: report only).
    """
    cfg = prepare(config, overrides, None)
    tags = {FLOW_TAG: "ab-report", **run_owner.owner_tags()}
    with mlflow.start_run(run_name=f"ab-report-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags) as run:
        outcome = ab_promotion.run_ab_report(cfg, since_hours, apply)
        log_record(ab_promotion.ab_outcome_record(outcome, cfg))
    markdown = outcome.decision.to_markdown(cfg.ab)
    create_markdown_artifact(key="ab-decision", description="A/B decision",
                             markdown=f"{markdown}\n- aliases: {outcome.moved}\n\nMLflow run `{run.info.run_id}`: "
                                      f"{run_link(run.info.run_id)}\n")
    logger = get_run_logger()
    for reason in outcome.decision.reasons:
        logger.info("ab policy: %s", reason)
    logger.info("%s; %s", outcome.decision.action, outcome.moved)
    return outcome.decision.action
