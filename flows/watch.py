"""The data-change trigger: a light polling flow, deployed with a short interval beside the nightly cron.

Why polling and not a Prefect automation: an automation reacts to events, and a directory of
JSONL files (or a SQuAD file, or a datasets folder) emits none; something would have to poll it
to produce them. This flow is that poll and the decision together: each run computes the data's
content fingerprint, compares it with what the last retraining loaded (MLflow) and with what its
previous check saw (a Prefect variable), starts the retraining deployment only when the data changed,
and says which in its log, so the Prefect UI shows every check.
"""

from __future__ import annotations

import re

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.variables import Variable

from flows.pipeline import DEFAULT_CONFIG, prepare
from tasks import data_watch

RETRAIN_DEPLOYMENT = "retrain/nightly-retrain"


def _variable_name(experiment: str) -> str:
    return "ragtune_last_seen_" + re.sub(r"[^a-z0-9_]", "_", experiment.lower())


@flow(name="watch-data", log_prints=True)
def watch_flow(config: str = DEFAULT_CONFIG, overrides: list[str] | None = None, data: str | None = None,
               deployment: str = RETRAIN_DEPLOYMENT) -> bool:
    """Start the retraining deployment if the data changed since the last retraining.

    Args:
        config: YAML config (see configs/); the retraining it starts runs with the same one.
        overrides: Config overrides such as `finetune.epochs=2`, passed on to the retraining.
        data: Data path, if not the config's `data.path`.
        deployment: The retraining deployment to start, as `flow-name/deployment-name`.
    """
    cfg = prepare(config, overrides, data)
    logger = get_run_logger()
    current = data_watch.current_fingerprint(cfg)
    variable = _variable_name(cfg.mlflow.experiment)
    start, why = data_watch.change_verdict(current, data_watch.last_retrained_fingerprint(cfg),
                                           Variable.get(variable, default=None))
    logger.info(why)
    if start:
        run = run_deployment(deployment, parameters={"config": config, "overrides": list(overrides or []),
                                                     "data": data}, timeout=0, as_subflow=False)
        logger.info("started %s: flow run %s", deployment, run.name)
    Variable.set(variable, current, overwrite=True)  # after a start, so a failed start is retried next check
    return start
