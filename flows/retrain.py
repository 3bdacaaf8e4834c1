"""The composite retraining flow: load -> validate -> index + finetune -> evaluate -> promote."""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlflow
from prefect import flow, get_run_logger

from flows import stages
from tasks.champion import Decision
from tasks.models import resolve_model_dir
from tasks.settings import PipelineConfig, config_to_yaml, load_config
from tasks.tracking import setup_tracking


@dataclass
class PipelineResult:
    run_id: str
    fingerprint: str
    comparison: list[dict]
    decision: Decision


def prepare(config: str, overrides: list[str] | None, data: str | None) -> PipelineConfig:
    """Load the config with CLI-style overrides (`data` is a shortcut for data.path=...)."""
    extra = [f"data.path={data}"] if data else []
    cfg = load_config(config, list(overrides or []) + extra)
    setup_tracking(cfg.mlflow)
    return cfg


def _log_parent_params(cfg: PipelineConfig, config: str) -> None:
    mlflow.log_params({"config": config, "data_path": str(cfg.data.path), "base_model": cfg.base_model.describe(),
                       "seed": cfg.seed, "top_k": cfg.index.top_k, "candidates": ",".join(cfg.evaluation.candidates),
                       "split_by": cfg.data.split_by})
    mlflow.log_text(config_to_yaml(cfg), "config.yaml")


@flow(name="retrain", log_prints=True)
def retrain_flow(config: str = "configs/default.yaml", overrides: list[str] | None = None,
                 data: str | None = None) -> PipelineResult:
    """Validate the data, rebuild the index, finetune, evaluate every candidate, select and register a champion."""
    cfg = prepare(config, overrides, data)
    logger = get_run_logger()
    with mlflow.start_run(run_name=f"retrain-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        parent_id = parent.info.run_id
        _log_parent_params(cfg, config)
        dataset = stages.load_data(cfg)
        stages.log_data_version(dataset)
        stages.validate(dataset, cfg, parent_id)
        base_model_dir = resolve_model_dir(cfg.base_model, cfg.model_cache)
        wanted = set(cfg.evaluation.candidates)
        index = stages.build_index(dataset, cfg, parent_id) if wanted & stages.RETRIEVING else None
        adapters = {}
        for name in ("finetuned", "hybrid"):
            if name in wanted:
                mode = stages.CANDIDATE_MODES[name]
                adapters[name] = stages.finetune(mode, dataset, cfg, base_model_dir, index, parent_id)
        outcomes = [stages.evaluate_candidate(name, dataset, cfg, base_model_dir, adapters.get(name), index, parent_id)
                    for name in cfg.evaluation.candidates]
        table = stages.log_comparison(outcomes)
        decision = stages.promote(outcomes, dataset, cfg, parent_id)
        mlflow.set_tags({"champion_decision": "promoted" if decision.promote else "kept",
                         "challenger": decision.challenger or "none"})
        logger.info("comparison:\n%s", table.to_markdown(index=False, floatfmt=".3f"))
    return PipelineResult(parent_id, dataset.fingerprint, table.to_dict(orient="records"), decision)
