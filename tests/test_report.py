"""What a person reads: the terminal table and the loss plot."""

from __future__ import annotations

import math

import pandas as pd
from rich.console import Console

from tasks.evaluation import NO_JUDGE, CandidateReport, comparison_table
from tasks.finetuning import FinetuneResult
from tasks.report import loss_figure, print_comparison


def _report(name: str, f1: float, ttft: float | None, absent: dict[str, str]) -> CandidateReport:
    metrics = {"exact_match": f1 / 2, "exact_match_ci_low": 0.0, "exact_match_ci_high": f1, "f1": f1,
               "f1_ci_low": f1 - 0.1, "f1_ci_high": f1 + 0.1, "latency_p50_ms": 812.4, "latency_p95_ms": 1500.0}
    if ttft is not None:
        metrics["ttft_p50_ms"] = ttft
    return CandidateReport(name, metrics, pd.DataFrame(), absent)


def test_table_shows_intervals_ttft_and_why_judge_metrics_are_absent():
    absent = {"faithfulness": NO_JUDGE, "answer_correctness": NO_JUDGE}
    table = comparison_table([_report("rag", 0.5, 312.6, absent), _report("api-rag", 0.6, None, absent)])
    console = Console(record=True, width=250)
    print_comparison(table, console)
    text = console.export_text()
    rag = next(line for line in text.splitlines() if "│ rag" in line)
    assert "0.500 [0.40, 0.60]" in rag and "313" in rag and "812" in rag and rag.count("n/a") == 2
    api = next(line for line in text.splitlines() if "api-rag" in line)
    assert "–" in api  # no TTFT for an endpoint that does not stream
    assert "faithfulness n/a: no judge endpoint configured" in text
    assert "answer_correctness n/a: no judge endpoint configured" in text


def test_loss_plot_draws_train_and_every_validation_loss():
    result = FinetuneResult(mode="raft", adapter_dir="a", train_examples=8, steps=4,
                            train_losses=[3.0, 2.0, 1.5, 1.4], eval_loss=1.6,
                            perplexity=math.exp(1.6), tokens_per_second=1.0, seconds=1.0,
                            eval_steps=[2, 4], eval_losses=[1.6, 1.7], best_step=2)
    ax = loss_figure(result).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["train loss"].get_ydata()) == [3.0, 2.0, 1.5, 1.4]
    assert list(lines["validation loss"].get_xdata()) == [2, 4]
    assert "kept: step 2, loss 1.600" in lines
