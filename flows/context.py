"""What one pipeline run hands to each of its stages, instead of threading it through every call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from functools import cached_property

import mlflow

from tasks import run_owner
from tasks.artifact_store import ArtifactStore, configured_store
from tasks.data_loading import Dataset
from tasks.models import resolve_model_dir
from tasks.settings import PipelineConfig


@dataclass
class RunContext:
    cfg: PipelineConfig
    dataset: Dataset
    parent_run_id: str  # the pipeline's MLflow run; each stage logs into a child run of it
    tracking_uri: str = field(default_factory=mlflow.get_tracking_uri)  # a stage may run in another process

    def __getstate__(self) -> dict:
        """What another process (a Dask worker) gets: not this machine's resolved paths, which it resolves itself."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def for_workers(self, threads: int) -> RunContext:
        """This context for stages running side by side: each uses `threads` torch threads (runtime only: the
        trained weights and the scores do not depend on it)."""
        cfg = self.cfg.model_copy(update={"finetune": self.cfg.finetune.model_copy(update={"threads": threads}),
                                          "index": self.cfg.index.model_copy(update={"threads": threads})})
        return RunContext(cfg, self.dataset, self.parent_run_id, self.tracking_uri)

    @cached_property
    def base_model_dir(self) -> str:
        """The base model's local directory (a packaged GGUF is converted once, on first use)."""
        return resolve_model_dir(self.cfg.base_model, self.cfg.model_cache)

    @cached_property
    def store(self) -> ArtifactStore | None:
        """Where index versions and adapters are shared with other machines (`scale.store`), if anywhere."""
        return configured_store(self.cfg.scale.store)

    @contextmanager
    def child_run(self, name: str) -> Iterator[mlflow.ActiveRun]:
        if mlflow.get_tracking_uri() != self.tracking_uri:  # a fresh worker process
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.tracking_uri)
        experiment_id = mlflow.get_run(self.parent_run_id).info.experiment_id
        with mlflow.start_run(run_name=name, parent_run_id=self.parent_run_id, nested=True,
                              experiment_id=experiment_id, tags=run_owner.owner_tags()) as run:
            yield run
