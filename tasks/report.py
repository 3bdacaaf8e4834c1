"""What a person reads: matplotlib figures for MLflow and the rich table for the terminal.

It draws from plain results (anything shaped like a candidate report or a finetune result), so
it depends on no stage.
"""

from __future__ import annotations

import math
from typing import Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tasks.metrics import JUDGE_METRICS  # noqa: E402

CHART_METRICS = ("exact_match", "f1", "semantic_similarity", "groundedness")


class CandidateReport(Protocol):
    name: str
    metrics: dict[str, float]
    per_question: pd.DataFrame


class FinetuneResult(Protocol):
    mode: str
    train_losses: list[float]
    eval_steps: list[int]
    eval_losses: list[float]
    best_step: int
    eval_loss: float


def comparison_figure(reports: list[CandidateReport]):
    """Grouped bars per metric with bootstrap 95% intervals as error bars (judge metrics when computed)."""
    metrics = CHART_METRICS + tuple(m for m in JUDGE_METRICS if any(m in r.metrics for r in reports))
    fig, ax = plt.subplots(figsize=(9 + len(metrics) - len(CHART_METRICS), 4.5))
    width = 0.8 / max(1, len(reports))
    for i, r in enumerate(reports):
        means, errs = [], [[], []]
        for m in metrics:
            mean = r.metrics.get(m, math.nan)
            means.append(mean)
            errs[0].append(max(0.0, mean - r.metrics.get(f"{m}_ci_low", mean)))
            errs[1].append(max(0.0, r.metrics.get(f"{m}_ci_high", mean) - mean))
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=r.name)
    ax.set_xticks([j + width * (len(reports) - 1) / 2 for j in range(len(metrics))], metrics)
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
    """Train loss per optimizer step and the held-out loss at each evaluation, best step marked."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(result.train_losses) + 1), result.train_losses, label="train loss")
    if result.eval_steps:
        ax.plot(result.eval_steps, result.eval_losses, "o--", color="tab:red", label="validation loss")
        ax.axvline(result.best_step, color="tab:gray", linestyle=":",
                   label=f"kept: step {result.best_step}, loss {result.eval_loss:.3f}")
    else:
        ax.axhline(result.eval_loss, color="tab:red", linestyle="--", label=f"validation loss {result.eval_loss:.3f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.set_title(f"LoRA finetune ({result.mode})")
    ax.legend()
    fig.tight_layout()
    return fig


def _cell(row: dict, key: str) -> str:
    value = row.get(key, math.nan)
    if isinstance(value, str):  # an absent metric: the reason is printed under the table
        return "n/a"
    if value is None or math.isnan(value):
        return "–"
    text = f"{value:.0f}" if key.startswith(("latency", "ttft")) else f"{value:.3f}"
    interval = row.get(f"{key}_ci")
    return f"{text} {interval}" if key in INTERVAL_COLUMNS and isinstance(interval, str) else text


INTERVAL_COLUMNS = ("exact_match", "f1")
TABLE_COLUMNS = (("exact_match", "EM [95% CI]"), ("f1", "F1 [95% CI]"), ("semantic_similarity", "sem. sim."),
                 ("hallucination_rate", "halluc."), ("faithfulness", "faithful."),
                 ("answer_correctness", "ans. corr."), ("recall_at_k", "recall@k"), ("latency_p50_ms", "p50 ms"),
                 ("latency_p95_ms", "p95 ms"), ("ttft_p50_ms", "TTFT p50"), ("cost_per_1k_queries", "$/1k q"))


def print_comparison(table: pd.DataFrame, console: Console | None = None) -> None:
    """The candidate table in the terminal (intervals for EM and F1; all of them are in MLflow),
    then why any metric is absent."""
    console = console or Console()
    out = Table(title="Candidates on the test split")
    out.add_column("candidate", no_wrap=True)
    for _, title in TABLE_COLUMNS:
        out.add_column(title, justify="right", no_wrap=True)
    absent: dict[str, str] = {}
    for row in table.to_dict(orient="records"):
        out.add_row(row["candidate"], *[_cell(row, key) for key, _ in TABLE_COLUMNS])
        absent |= {key: row[key] for key, _ in TABLE_COLUMNS if isinstance(row.get(key), str)}
    console.print(out)
    for key, why in absent.items():
        console.print(f"[dim]{key} n/a: {why.removeprefix('absent: ')}[/]")
