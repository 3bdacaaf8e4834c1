"""Decision history: which candidate was champion when, its objective with an interval, and why it changed.

Read from the parent runs of the `retrain` flow in the config's experiment (the tags and metrics
tasks.promotion and tasks.changes put there), oldest first. Each retraining logs it on its
parent run as `tables/decision_history.csv` and `plots/decision_history.png`; `ragtune history`
prints it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

import mlflow
import pandas as pd
from mlflow import MlflowClient

from tasks.records import RunRecord
from tasks.settings import PipelineConfig
from tasks.tracking import FLOW_TAG

COLUMNS = ["started", "run_id", "data_fingerprint", "decision", "challenger", "champion", "version", "objective",
           "ci_low", "ci_high", "what_changed"]


def decision_history(cfg: PipelineConfig, max_runs: int = 1000) -> pd.DataFrame:
    """One row per retraining that reached the champion decision, oldest first."""
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        return pd.DataFrame(columns=COLUMNS)
    runs = MlflowClient().search_runs([experiment.experiment_id],
                                      f"tags.`{FLOW_TAG}` = 'retrain' and tags.champion_decision != ''",
                                      order_by=["attributes.start_time ASC"], max_results=max_runs)
    rows = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        rows.append({
            "started": datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "run_id": run.info.run_id, "data_fingerprint": tags.get("data_fingerprint", ""),
            "decision": tags["champion_decision"], "challenger": tags.get("challenger", "none"),
            "champion": tags.get("champion", "none"), "version": tags.get("champion_version", ""),
            "objective": metrics.get("champion_after_objective", math.nan),
            "ci_low": metrics.get("champion_after_objective_ci_low", math.nan),
            "ci_high": metrics.get("champion_after_objective_ci_high", math.nan),
            "what_changed": tags.get("what_changed", ""),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def history_figure(history: pd.DataFrame, objective: str):
    """The champion's objective per retraining with its interval, one colour per candidate; promotions circled."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(history) + 3), 4))
    xs = list(range(1, len(history) + 1))
    for name, group in history.groupby("champion", sort=False):
        at = [xs[i] for i in group.index]
        errs = [(group["objective"] - group["ci_low"]).clip(lower=0),
                (group["ci_high"] - group["objective"]).clip(lower=0)]
        ax.errorbar(at, group["objective"], yerr=errs, fmt="o", capsize=3, label=f"champion: {name}")
    promoted = history.index[history["decision"] == "promoted"]
    ax.scatter([xs[i] for i in promoted], history.loc[promoted, "objective"], s=160, facecolors="none",
               edgecolors="black", label="promoted in this run")
    ax.set_xticks(xs, [f"{i}\n{fp[:6]}" for i, fp in zip(xs, history["data_fingerprint"], strict=True)])
    ax.set_xlabel("retraining (data fingerprint)")
    ax.set_ylabel(f"champion objective ({objective})")
    ax.set_title("Champion over time (bootstrap interval)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def history_record(cfg: PipelineConfig) -> RunRecord:
    """The history up to and including the active run, as a table and a plot on it."""
    history = decision_history(cfg)
    objective = " + ".join(f"{w}×{m}" for m, w in cfg.champion.objective.items())
    return RunRecord(tables={"decision_history.csv": history},
                     figures={"plots/decision_history.png": lambda: history_figure(history, objective)})
