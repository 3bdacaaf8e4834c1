"""What a person reads: matplotlib figures for MLflow and the rich table for the terminal."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tasks.evaluation import CandidateReport  # noqa: E402
from tasks.finetuning import FinetuneResult  # noqa: E402

CHART_METRICS = ("exact_match", "f1", "semantic_similarity", "groundedness")


def comparison_figure(reports: list[CandidateReport]):
    """Grouped bars per metric with bootstrap 95% intervals as error bars."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(reports))
    for i, r in enumerate(reports):
        means, errs = [], [[], []]
        for m in CHART_METRICS:
            mean = r.metrics.get(m, math.nan)
            means.append(mean)
            errs[0].append(max(0.0, mean - r.metrics.get(f"{m}_ci_low", mean)))
            errs[1].append(max(0.0, r.metrics.get(f"{m}_ci_high", mean) - mean))
        xs = [j + i * width for j in range(len(CHART_METRICS))]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=r.name)
    ax.set_xticks([j + width * (len(reports) - 1) / 2 for j in range(len(CHART_METRICS))], CHART_METRICS)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean (95% bootstrap interval)")
    ax.set_title("Candidates on the test split")
    ax.legend()
    fig.tight_layout()
    return fig


def latency_figure(reports: list[CandidateReport]):
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.boxplot([r.per_question["latency_ms"] for r in reports], tick_labels=[r.name for r in reports])
    ax.set_ylabel("end-to-end latency per question (ms)")
    ax.set_title("Latency distribution")
    fig.tight_layout()
    return fig


def loss_figure(result: FinetuneResult):
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(result.train_losses) + 1), result.train_losses, label="train loss")
    ax.axhline(result.eval_loss, color="tab:red", linestyle="--", label=f"validation loss {result.eval_loss:.3f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(f"LoRA finetune ({result.mode})")
    ax.legend()
    fig.tight_layout()
    return fig


def _cell(row: dict, key: str) -> str:
    value = row.get(key, math.nan)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.0f}" if key.startswith("latency") else f"{value:.3f}"
    interval = row.get(f"{key}_ci")
    return f"{text} {interval}" if key in INTERVAL_COLUMNS and isinstance(interval, str) else text


INTERVAL_COLUMNS = ("exact_match", "f1")
TABLE_COLUMNS = (("exact_match", "EM [95% CI]"), ("f1", "F1 [95% CI]"), ("semantic_similarity", "sem. sim."),
                 ("hallucination_rate", "halluc."), ("recall_at_k", "recall@k"), ("latency_p50_ms", "p50 ms"),
                 ("latency_p95_ms", "p95 ms"), ("cost_per_1k_queries", "$/1k q"))


def print_comparison(table: pd.DataFrame, console: Console | None = None) -> None:
    """The candidate table in the terminal (intervals for EM and F1; all of them are in MLflow)."""
    console = console or Console()
    out = Table(title="Candidates on the test split")
    out.add_column("candidate", no_wrap=True)
    for _, title in TABLE_COLUMNS:
        out.add_column(title, justify="right", no_wrap=True)
    for row in table.to_dict(orient="records"):
        out.add_row(row["candidate"], *[_cell(row, key) for key, _ in TABLE_COLUMNS])
    console.print(out)
