"""What one pipeline run hands to each of its stages, instead of threading it through every call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property

import mlflow

from tasks.data_loading import Dataset
from tasks.models import resolve_model_dir
from tasks.settings import PipelineConfig


@dataclass
class RunContext:
    cfg: PipelineConfig
    dataset: Dataset
    parent_run_id: str  # the pipeline's MLflow run; each stage logs into a child run of it

    @cached_property
    def base_model_dir(self) -> str:
        """The base model's local directory (a packaged GGUF is converted once, on first use)."""
        return resolve_model_dir(self.cfg.base_model, self.cfg.model_cache)

    @contextmanager
    def child_run(self, name: str) -> Iterator[mlflow.ActiveRun]:
        with mlflow.start_run(run_name=name, parent_run_id=self.parent_run_id, nested=True) as run:
            yield run
