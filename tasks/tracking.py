"""MLflow conventions: the SQLite store under mlruns/, one experiment per project config,
and helpers that log tables, text and figures as artifacts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from tasks.settings import MlflowConfig

# Read once at import: mlflow.set_tracking_uri() itself exports MLFLOW_TRACKING_URI, so a later
# read could not tell the user's server from the store of this process's previous run.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def setup_tracking(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured store (MLFLOW_TRACKING_URI wins) and select the experiment."""
    uri = USER_TRACKING_URI or cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        location = None if "://" in uri and not uri.startswith("sqlite") else Path(cfg.artifact_location).resolve()
        mlflow.create_experiment(cfg.experiment, artifact_location=location.as_uri() if location else None)
    mlflow.set_experiment(cfg.experiment)
    return uri


def log_table(df: pd.DataFrame, name: str) -> None:
    """A table as CSV (readable anywhere) under tables/."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        df.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="tables")


def log_text(text: str, path: str) -> None:
    mlflow.log_text(text, path)


def log_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, path)
    plt.close(fig)
