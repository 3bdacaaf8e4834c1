"""The A/B stage: the gateway's recorded requests -> per-variant summary -> decision (tasks.ab_report) ->
the registry's aliases. promote moves `champion` to the challenger's version and remembers the version it
replaced (registered-model tag `previous_champion`, also set by offline promotions); rollback moves
`champion` back to that version and removes `challenger`, so the regressed version serves no one;
keep and not_enough_data move nothing."""

from __future__ import annotations

import time
from dataclasses import dataclass

import mlflow
import pandas as pd
from mlflow import MlflowClient

from tasks.ab_report import ABDecision, ab_record, compare_variants, decide_ab, variant_summary
from tasks.exclusive import exclusive, lock_name
from tasks.feedback_data import export_feedback
from tasks.promotion import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    alias_version,
    champion_run_metrics,
    current_champion,
)
from tasks.records import RunRecord
from tasks.request_log import COLUMNS, load_requests
from tasks.settings import PipelineConfig


@dataclass
class ABOutcome:
    decision: ABDecision
    requests: pd.DataFrame
    moved: str  # what happened to the aliases, in words
    feedback_rows: int = 0  # new QA rows written to data.feedback_path


def apply_ab_decision(decision: ABDecision, model_name: str) -> str:
    """Move the aliases as the decision says; returns what moved."""
    client = MlflowClient()
    champion, challenger = alias_version(model_name, CHAMPION), alias_version(model_name, CHALLENGER)
    if decision.action == "promote" and challenger not in (None, champion):
        client.set_registered_model_alias(model_name, CHAMPION, challenger)
        if champion is not None:
            client.set_registered_model_tag(model_name, PREVIOUS_CHAMPION, champion)
        return f"champion: version {champion} -> {challenger}"
    if decision.action == "rollback":
        previous = client.get_registered_model(model_name).tags.get(PREVIOUS_CHAMPION)
        if previous is None or previous == champion:
            return "no earlier champion to roll back to: nothing moved"
        client.set_registered_model_alias(model_name, CHAMPION, previous)
        if challenger is not None:
            client.delete_registered_model_alias(model_name, CHALLENGER)
        return f"champion rolled back: version {champion} -> {previous}; challenger alias removed"
    return "no alias moved"


def run_ab_report(cfg: PipelineConfig, since_hours: float, apply: bool) -> ABOutcome:
    """Summarise the requests of the last `since_hours`, decide, and (if `apply`) move the aliases."""
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    since_ms = int((time.time() - since_hours * 3600) * 1000)
    requests = load_requests(experiment.experiment_id, since_ms) if experiment else pd.DataFrame(columns=COLUMNS)
    summary = variant_summary(requests, cfg.ab, cfg.seed)
    comparison = compare_variants(requests, cfg.ab, cfg.seed)
    champion = current_champion(cfg.champion.model_name)
    decision = decide_ab(summary, comparison, cfg.ab, champion_run_metrics(champion) if champion else {})
    moved = "not applied (apply=false)"
    if apply:  # aliases move under the lock every promotion takes, reading them at that moment
        with exclusive(lock_name("registry", cfg.champion.model_name), cfg.cache_root / ".locks"):
            moved = apply_ab_decision(decision, cfg.champion.model_name)
    exported = export_feedback(requests, cfg.data.feedback_path) if cfg.data.feedback_path and not requests.empty else 0
    return ABOutcome(decision, requests, moved, exported)


def ab_outcome_record(outcome: ABOutcome, cfg: PipelineConfig) -> RunRecord:
    record = ab_record(outcome.decision.summary, outcome.decision.comparison, outcome.decision, cfg.ab)
    record.tags |= {"aliases": outcome.moved, "mlflow.note.content": outcome.decision.to_markdown(cfg.ab)}
    record.metrics |= {"ab_requests": float(len(outcome.requests)),
                       "feedback_rows_exported": float(outcome.feedback_rows)}
    return record
