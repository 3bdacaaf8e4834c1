"""MLflow conventions: the SQLite store under mlruns/, one experiment per project config, and
`log_record`, which writes a stage's RunRecord (tasks.records) to the active run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from tasks.data_loading import Dataset
from tasks.records import RunRecord
from tasks.redaction import redact, redact_value
from tasks.settings import MlflowConfig, PipelineConfig, config_to_yaml

# Read once at import: mlflow.set_tracking_uri() itself exports MLFLOW_TRACKING_URI, so a later
# read could not tell the user's server from the store of this process's previous run.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")
EXPERIMENT_KIND_TAG, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
MODEL_TRAINING_VIEW = "machine_learning"  # the UI's workflowType for training runs (not GenAI traces)
DUPLICATE_KEY = ("UniqueViolation", "UNIQUE constraint failed", "Duplicate entry")  # PostgreSQL, SQLite, MySQL
FLOW_TAG = "ragtune.flow"  # on every pipeline parent run: which flow logged it (retrain, evaluate, ...)


def setup_tracking(cfg: MlflowConfig) -> str:
    """Point MLflow at the configured store (MLFLOW_TRACKING_URI wins) and select the experiment."""
    uri = USER_TRACKING_URI or cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if mlflow.get_experiment_by_name(cfg.experiment) is None:
        location = None if "://" in uri and not uri.startswith("sqlite") else Path(cfg.artifact_location).resolve()
        try:
            mlflow.create_experiment(cfg.experiment, artifact_location=location.as_uri() if location else None,
                                     tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except MlflowException as err:  # another run created it in the meantime
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    if EXPERIMENT_KIND_TAG not in mlflow.set_experiment(cfg.experiment).tags:  # made by an older ragtune
        mlflow.set_experiment_tag(EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return uri


def ui_link(path: str, port: int = 5000) -> str:
    """A page of the MLflow UI, in its model-training view (MLflow 3 opens experiments on its GenAI overview)."""
    uri = mlflow.get_tracking_uri()
    base = redact(uri.rstrip("/")) if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    return f"{base}/#/{path}?workflowType={MODEL_TRAINING_VIEW}"


def run_link(run_id: str) -> str:
    """Where a person opens an MLflow run: the tracking server's UI, or `ragtune ui` for a local store."""
    link = ui_link(f"experiments/{mlflow.get_run(run_id).info.experiment_id}/runs/{run_id}")
    return link if mlflow.get_tracking_uri().startswith(("http://", "https://")) else f"{link} (after `ragtune ui`)"


def pipeline_record(cfg: PipelineConfig, config: str) -> RunRecord:
    """The parent run's settings: what a reader filters runs by, and the whole resolved config."""
    return RunRecord(params={"config": config, "data_path": str(cfg.data.path), "base_model": cfg.base_model.describe(),
                             "seed": cfg.seed, "top_k": cfg.index.top_k,
                             "candidates": ",".join(cfg.evaluation.candidates), "split_by": cfg.data.split_by},
                     texts={"config.yaml": config_to_yaml(cfg)})


def log_data_version(dataset: Dataset) -> None:
    """mlflow.log_input for both tables, named by the content fingerprint."""
    import json
    import warnings

    for table, df in (("documents", dataset.documents), ("qa", dataset.qa)):
        frame = df.assign(answer=df["answer"].map(json.dumps)) if "answer" in df else df
        with warnings.catch_warnings():  # MLflow registers two identical local-path sources and says so each time
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            data = mlflow.data.from_pandas(frame, source=dataset.source, name=f"{table}@{dataset.fingerprint}")
        try:
            mlflow.log_input(data, context=table)
        except MlflowException as err:  # another run created the same dataset between the server's check and insert
            if not any(clash in str(err) for clash in DUPLICATE_KEY):
                raise
            mlflow.log_input(data, context=table)  # now it exists: this links it to the run
    mlflow.set_tag("data_fingerprint", dataset.fingerprint)


def log_table(df: pd.DataFrame, name: str) -> None:
    """A table as CSV (readable anywhere) under tables/."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        df.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="tables")


def log_figure(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, path)
    plt.close(fig)


def log_record(record: RunRecord) -> None:
    """Write everything a stage recorded to the active run; URL credentials in its text are masked (tasks.redaction)."""
    if record.tags:
        mlflow.set_tags(redact_value(record.tags))
    if record.params:
        mlflow.log_params(redact_value(record.params))
    for name, points in record.series.items():
        for step, value in points:
            mlflow.log_metric(name, value, step=step)
    if record.metrics:
        mlflow.log_metrics(record.metrics)
    for path, text in record.texts.items():
        mlflow.log_text(redact(text), path)
    for path, obj in record.dicts.items():
        mlflow.log_dict(redact_value(obj), path)
    for name, table in record.tables.items():
        log_table(table.map(redact_value), name)
    for path, make in record.figures.items():
        log_figure(make(), path)
    for path, directory in record.directories.items():
        mlflow.log_artifacts(directory, path)
