"""Configuration of scale-out (`scale:` in the pipeline config): the shared artifact store other machines
fetch index versions and adapters from, and the Dask cluster that runs independent stages in parallel."""

from __future__ import annotations

from pydantic import Field

from tasks.config_base import Strict

AUTO = "auto"


class DaskConfig(Strict):
    enabled: bool = Field(False, description="Run the finetunes and the candidate evaluations as parallel Prefect "
                          "tasks through prefect-dask's DaskTaskRunner.")
    address: str | None = Field(None, description="A running Dask scheduler, e.g. tcp://10.0.0.5:8786; without "
                                "one, a LocalCluster of `workers` processes on this machine.")
    workers: int = Field(2, ge=1, description="LocalCluster worker processes (one task at a time each).")
    threads_per_worker: int = Field(1, ge=1, description="torch threads per worker; workers x threads should not "
                                    "exceed the machine's cores.")


class ScaleConfig(Strict):
    store: str | None = Field(
        AUTO, description="Where index versions and adapters are published and fetched by content key, so a worker "
        "that did not build them uses them: any MLflow artifact URI (a shared path, s3://bucket/prefix, "
        "mlflow-artifacts:/...). 'auto': the tracking server's served artifacts (mlflow-artifacts:/ragtune-store) "
        "when the tracking URI is an http(s) server, else none. null: local only.")
    dask: DaskConfig = DaskConfig()
