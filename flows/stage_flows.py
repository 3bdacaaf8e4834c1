"""One Prefect flow per stage, for running a stage alone (manual triggers, index refresh).

Each loads and validates the data first (a stage never runs on unvalidated data); index and
adapters come from their content-keyed caches when the data and config are unchanged.
"""

from __future__ import annotations

import mlflow
from prefect import flow
from tasks.validation import ValidationReport

from flows import stages
from flows.retrain import prepare
from tasks.champion import Decision
from tasks.finetuning import FinetuneResult
from tasks.indexing import IndexBuild
from tasks.models import resolve_model_dir


@flow(name="validate")
def validate_flow(config: str = "configs/default.yaml", overrides: list[str] | None = None,
                  data: str | None = None) -> ValidationReport:
    cfg = prepare(config, overrides, data)
    dataset = stages.load_data(cfg)
    return stages.validate(dataset, cfg, None)


@flow(name="index")
def index_flow(config: str = "configs/default.yaml", overrides: list[str] | None = None,
               data: str | None = None) -> IndexBuild:
    cfg = prepare(config, overrides, data)
    dataset = stages.load_data(cfg)
    stages.validate(dataset, cfg, None)
    return stages.build_index(dataset, cfg, None)


@flow(name="finetune")
def finetune_flow(mode: str = "closed_book", config: str = "configs/default.yaml",
                  overrides: list[str] | None = None, data: str | None = None) -> FinetuneResult:
    cfg = prepare(config, overrides, data)
    dataset = stages.load_data(cfg)
    stages.validate(dataset, cfg, None)
    index = stages.build_index(dataset, cfg, None) if mode == "raft" else None
    result, _ = stages.finetune(mode, dataset, cfg, resolve_model_dir(cfg.base_model, cfg.model_cache), index, None)
    return result


@flow(name="evaluate")
def evaluate_flow(config: str = "configs/default.yaml", overrides: list[str] | None = None,
                  data: str | None = None, promote: bool = False) -> list[dict] | Decision:
    """Evaluate the configured candidates (training adapters only if not cached); optionally promote."""
    cfg = prepare(config, overrides, data)
    with mlflow.start_run(run_name="evaluate") as parent:
        dataset = stages.load_data(cfg)
        stages.log_data_version(dataset)
        stages.validate(dataset, cfg, parent.info.run_id)
        base = resolve_model_dir(cfg.base_model, cfg.model_cache)
        index = stages.build_index(dataset, cfg, parent.info.run_id)
        adapters = {name: stages.finetune(stages.CANDIDATE_MODES[name], dataset, cfg, base, index, parent.info.run_id)
                    for name in ("finetuned", "hybrid") if name in cfg.evaluation.candidates}
        outcomes = [stages.evaluate_candidate(n, dataset, cfg, base, adapters.get(n), index, parent.info.run_id)
                    for n in cfg.evaluation.candidates]
        table = stages.log_comparison(outcomes)
        if promote:
            return stages.promote(outcomes, dataset, cfg, parent.info.run_id)
    return table.to_dict(orient="records")
