"""The data-change trigger's question: has the data source changed since the pipeline last retrained on it?

The fingerprint is the pipeline's own (tasks.data_loading: content, order-independent), so a
touched file with the same content is no change. What was last trained on is read from MLflow:
the latest parent run of the `retrain` flow carries the fingerprint it loaded (tag
`data_fingerprint`), from the moment it starts.
"""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient

from tasks.data_loading import load_dataset
from tasks.settings import PipelineConfig
from tasks.tracking import FLOW_TAG


def current_fingerprint(cfg: PipelineConfig) -> str:
    """The configured data source's content fingerprint, as the pipeline would compute it."""
    return load_dataset(cfg.data).fingerprint


def last_retrained_fingerprint(cfg: PipelineConfig) -> str | None:
    """The data fingerprint of the latest `retrain` run in this config's experiment (running ones count)."""
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        return None
    runs = MlflowClient().search_runs([experiment.experiment_id], f"tags.`{FLOW_TAG}` = 'retrain'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].data.tags.get("data_fingerprint") if runs else None


def change_verdict(current: str, last_retrained: str | None, last_seen: str | None) -> tuple[bool, str]:
    """Whether to start a retraining, and why. `last_seen` is the fingerprint of the trigger's previous check:
    a retraining it started but that has not begun logging yet is not started twice. The very first check,
    with nothing retrained, records a baseline and starts nothing (the nightly run or a person trains first)."""
    if last_retrained is None and last_seen is None:
        return False, (f"first check, nothing retrained yet: fingerprint {current} is the baseline; a change "
                       "from it starts a retraining")
    if current == last_retrained:
        return False, f"data unchanged: the last retraining loaded fingerprint {current}"
    if current == last_seen:
        return False, f"data unchanged since the last check (fingerprint {current})"
    return True, f"data changed: fingerprint {current}, last retrained on {last_retrained or 'nothing yet'}"
