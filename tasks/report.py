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
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from tasks.inspection import Inspection  # noqa: E402
from tasks.metrics import JUDGE_METRICS  # noqa: E402
from tasks.text import visible_controls  # noqa: E402

CHART_METRICS = ("exact_match", "f1", "semantic_similarity", "groundedness")  # span answers


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


def comparison_figure(reports: list[CandidateReport], chart: tuple[str, ...] = CHART_METRICS):
    """Grouped bars per metric with bootstrap 95% intervals as error bars (judge metrics when computed)."""
    metrics = chart + tuple(m for m in JUDGE_METRICS if any(m in r.metrics for r in reports))
    fig, ax = plt.subplots(figsize=(9 + len(metrics) - len(chart), 4.5))
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
    ax.set_ylabel("end-to-end latency per question, batched (ms)")
    ax.set_title("Latency distribution in the batched evaluation")
    fig.tight_layout()
    return fig


def confusion_figure(name: str, confusion: pd.DataFrame):
    """Gold labels (rows) against predicted labels (columns), counts in the cells."""
    fig, ax = plt.subplots(figsize=(1.2 * confusion.shape[1] + 2.5, 1.0 * confusion.shape[0] + 1.8))
    ax.imshow(confusion.to_numpy(), cmap="Blues")
    ax.set_xticks(range(confusion.shape[1]), confusion.columns)
    ax.set_yticks(range(confusion.shape[0]), confusion.index)
    for (i, j), count in np.ndenumerate(confusion.to_numpy()):
        ax.text(j, i, str(count), ha="center", va="center")
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(f"Confusion matrix: {name}")
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


def _cell(row: dict, key: str, headline: tuple[str, ...]) -> str:
    value = row.get(key, math.nan)
    if isinstance(value, str):  # an absent metric: the reason is printed under the table
        return "n/a"
    if value is None or math.isnan(value):
        return "–"
    text = f"{value:.0f}" if key.startswith(("latency", "ttft")) else f"{value:.3f}"
    interval = row.get(f"{key}_ci")
    return f"{text} {interval}" if key in headline and isinstance(interval, str) else text


TITLES = {"exact_match": "EM", "f1": "F1", "rouge": "ROUGE-L", "accuracy": "accuracy", "macro_f1": "macro-F1",
          "semantic_similarity": "sem. sim.", "hallucination_rate": "halluc.", "faithfulness": "faithful.",
          "answer_correctness": "ans. corr.", "recall_at_k": "recall@k", "latency_p50_ms": "p50 ms",
          "latency_p95_ms": "p95 ms", "ttft_p50_ms": "TTFT p50", "cost_per_1k_queries": "$/1k q"}


def shown(text: object, style: str = "") -> Text:
    """Text from the data or the config as the terminal shows it: never read as console markup (a doc_id of
    `[/red]` is printed as is), control characters made visible."""
    return Text(visible_controls(str(text)), style=style)


def print_comparison(table: pd.DataFrame, console: Console | None = None,
                     headline: tuple[str, ...] = ("exact_match", "f1")) -> None:
    """The candidate table in the terminal (intervals for the headline metrics; all of them are in MLflow),
    then why any metric is absent."""
    console = console or Console()
    columns = [c for c in table.columns if c in TITLES]
    out = Table(title="Candidates on the test split (latency: one question at a time, warm)")
    out.add_column("candidate", no_wrap=True)
    for key in columns:
        out.add_column(f"{TITLES[key]} [95% CI]" if key in headline else TITLES[key], justify="right", no_wrap=True)
    absent: dict[str, str] = {}
    for row in table.to_dict(orient="records"):
        out.add_row(shown(row["candidate"]), *[_cell(row, key, headline) for key in columns])
        absent |= {key: row[key] for key in columns if isinstance(row.get(key), str)}
    console.print(out)
    for key, why in absent.items():
        console.print(shown(f"{key} n/a: {why.removeprefix('absent: ')}", "dim"))


def print_inspection(inspection: Inspection, console: Console) -> None:
    """`ragtune inspect`'s profile of a dataset and what its starter config does about it."""
    a, p = inspection.answers, inspection.answers.profile
    console.print(Text.assemble(shown(inspection.dataset.source, "bold"), shown(
        f": {len(inspection.dataset.documents)} documents, {len(inspection.dataset.qa)} QA pairs; splits "
        + ", ".join(f"{s} {n}" for s, n in inspection.splits.items()))))
    console.print(Text.assemble("answer type ", shown(a.answer_type, "bold"),
                                shown(f" ({'declared' if a.declared else 'inferred'}): {a.reason}")))
    if a.labels:
        console.print(shown("labels: " + ", ".join(a.labels)))
    lengths = Table(title="lengths (characters)")
    for column in ("", "min", "median", "p95", "max"):
        lengths.add_column(column, justify="right")
    for name, values in (("answers", p.chars), ("documents", inspection.doc_chars)):
        lengths.add_row(name, *(f"{values[k]:.0f}" for k in ("min", "median", "p95", "max")))
    console.print(lengths)
    console.print(f"answers found verbatim in their gold document: {p.verbatim_share:.1%}; "
                  f"median answer words: {p.median_words:g}; distinct answers: {p.distinct}")
    report = inspection.default_report
    if report.success:
        console.print("the default validation accepts every row")
    else:
        failing = Table(title="rows the default validation would reject")
        for column in ("rule", "failing", "relax with", "examples"):
            failing.add_column(column)
        for f in report.failures:
            failing.add_row(shown(f"[{f.where}] {f.rule}"), str(f.unexpected_count), shown(f.key or "-"),
                            shown("\n".join(f.examples[:3])))
        console.print(failing)
    for note in inspection.notes:
        console.print(shown(f"• starter config: {note}"))


def print_history(history: pd.DataFrame, console: Console, objective: str) -> None:
    """The decision history as a terminal table (tasks.history)."""
    table = Table(title=f"Champion after each retraining (objective {objective})")
    for column, justify in (("started (UTC)", "left"), ("data", "left"), ("decision", "left"),
                            ("champion", "left"), ("objective [CI]", "right"), ("what changed", "left")):
        table.add_column(column, justify=justify, overflow="fold")
    for row in history.itertuples(index=False):
        score = "n/a" if math.isnan(row.objective) else f"{row.objective:.3f} [{row.ci_low:.2f}, {row.ci_high:.2f}]"
        champion = f"{row.champion} v{row.version}" if row.version else row.champion
        decision = shown(row.decision) if row.decision == "kept" else shown(f"{row.decision} {row.challenger}", "bold")
        table.add_row(row.started, row.data_fingerprint[:8], decision, shown(champion), score, shown(row.what_changed))
    console.print(table)
