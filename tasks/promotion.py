"""Promote stage: log the challenger as a pyfunc, register it, and move the aliases.

Every run's challenger is registered and gets the alias `challenger`; `champion` moves to it
only when the policy's decision says so (tasks.champion). Version tags carry the lineage.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

import tasks
from tasks.serving import ADAPTER_ARTIFACT, CANDIDATE_ARTIFACT, CONFIG_ARTIFACT, INDEX_ARTIFACT, RagtuneModel
from tasks.settings import PipelineConfig, config_to_yaml

CHAMPION, CHALLENGER = "champion", "challenger"
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "peft", "faiss-cpu", "sentence-transformers", "pandas",
                    "pydantic", "pyyaml", "numpy")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "question")]),
    outputs=Schema([ColSpec("string", "answer"), ColSpec("string", "sources"), ColSpec("double", "latency_ms")]),
)


@dataclass(frozen=True)
class CandidateBundle:
    """What serving one candidate needs, besides the base model named in the config."""

    name: str
    adapter_dir: str | None
    index_dir: str | None
    lineage: dict[str, str]


def _requirements() -> list[str]:
    pins = []
    for name in SERVING_PACKAGES:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def current_champion(name: str) -> ModelVersion | None:
    try:
        return MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def champion_run_metrics(champion: ModelVersion) -> dict[str, float]:
    """The evaluation metrics recorded for the champion's candidate run."""
    run_id = champion.tags.get("candidate_run_id")
    return dict(MlflowClient().get_run(run_id).data.metrics) if run_id else {}


def champion_run_per_question(champion: ModelVersion) -> pd.DataFrame | None:
    """The per-question scores logged by the champion's candidate run (None if it has none)."""
    run_id, name = champion.tags.get("candidate_run_id"), champion.tags.get("candidate")
    if not (run_id and name):
        return None
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"tables/per_question_{name}.csv")
    except MlflowException:
        return None
    return pd.read_csv(path)


def log_and_register(bundle: CandidateBundle, cfg: PipelineConfig, promote: bool) -> ModelVersion:
    """Log the bundle as a pyfunc in the active run, register it, set `challenger` (and `champion`)."""
    serving_cfg = cfg.model_copy(update={"model_cache": Path(cfg.model_cache).resolve()})
    with tempfile.TemporaryDirectory() as tmp:
        config_path, candidate_path = Path(tmp) / "config.yaml", Path(tmp) / "candidate.json"
        config_path.write_text(config_to_yaml(serving_cfg))
        candidate_path.write_text(json.dumps({"name": bundle.name, **bundle.lineage}, indent=2))
        artifacts = {CONFIG_ARTIFACT: str(config_path), CANDIDATE_ARTIFACT: str(candidate_path)}
        if bundle.adapter_dir:
            artifacts[ADAPTER_ARTIFACT] = bundle.adapter_dir
        if bundle.index_dir:
            artifacts[INDEX_ARTIFACT] = bundle.index_dir
        info = mlflow.pyfunc.log_model(
            name="model", python_model=RagtuneModel(), artifacts=artifacts,
            code_paths=[str(Path(tasks.__file__).parent)], pip_requirements=_requirements(),
            signature=SIGNATURE,
            registered_model_name=cfg.champion.model_name,
        )
    client = MlflowClient()
    mv = client.get_model_version(cfg.champion.model_name, str(info.registered_model_version))
    for key, value in {"candidate": bundle.name, **bundle.lineage}.items():
        client.set_model_version_tag(mv.name, mv.version, key, value)
    client.set_registered_model_alias(mv.name, CHALLENGER, mv.version)
    if promote:
        client.set_registered_model_alias(mv.name, CHAMPION, mv.version)
    return client.get_model_version(mv.name, mv.version)
