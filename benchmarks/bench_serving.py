"""Time to first token of the served champion, retrieval included, one question at a time.

The model is the registered `models:/<champion.model_name>@champion` of the config's MLflow store
(run `make demo` first), loaded with `mlflow.pyfunc.load_model` exactly as `mlflow models serve`
and `ragtune ask` load it. Questions: the demo test split, answered one per request (batch 1, as a
server sees them). TTFT is measured inside the served model (tasks.metrics: from the call's start,
so retrieval, prompt rendering and tokenisation are included, to the first generated token); HTTP
and JSON add about a millisecond on 127.0.0.1 and are not counted.

Baseline, in the same process: the same champion with its LoRA adapter applied unmerged (how
answering loaded adapters before); ours merges the adapter into the weights at load. Both answer the
same questions; answers must not differ. Goal: TTFT p50 < 100 ms on CPU for the default SLM.

    .venv/bin/python benchmarks/bench_serving.py
    .venv/bin/python benchmarks/bench_serving.py --questions 24 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.offline import enable_offline_mode  # noqa: E402

enable_offline_mode()

from tasks.answering import Answer, Answerer  # noqa: E402
from tasks.data_loading import load_dataset  # noqa: E402
from tasks.settings import load_config  # noqa: E402
from tasks.tracking import setup_tracking  # noqa: E402

console = Console(width=140)
GOAL_MS = 100.0


def one_at_a_time(answerer: Answerer, questions: list[str]) -> list[Answer]:
    return [answerer.answer([q], batch_size=1)[0] for q in questions]


def unmerged_copy(answerer: Answerer, adapter_dir: str) -> Answerer:
    """The same answerer with the adapter applied as separate LoRA layers (the baseline)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    baseline = Answerer.__new__(Answerer)
    baseline.__dict__.update(answerer.__dict__)
    base = AutoModelForCausalLM.from_pretrained(answerer.model.name_or_path)
    baseline.model = PeftModel.from_pretrained(base, adapter_dir).eval()
    return baseline


def row(label: str, answers: list[Answer], reference: float | None) -> list[str]:
    ttft = [a.ttft_ms for a in answers]
    p50 = float(np.percentile(ttft, 50))
    return [label, f"{p50:.0f}", f"{np.percentile(ttft, 95):.0f}",
            f"{np.percentile([a.retrieval_ms for a in answers], 50):.1f}",
            f"{np.percentile([a.latency_ms for a in answers], 50):.0f}",
            f"{np.percentile([a.prompt_tokens for a in answers], 50):.0f}",
            "1.00x" if reference is None else f"{reference / p50:.2f}x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--questions", type=int, default=None, help="first N test questions (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import mlflow
    import torch
    from mlflow.exceptions import MlflowException

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    setup_tracking(cfg.mlflow)
    uri = f"models:/{cfg.champion.model_name}@champion"
    try:
        served = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except MlflowException as exc:
        sys.exit(f"no champion at {uri} in {mlflow.get_tracking_uri()}: run `make demo` first ({exc})")
    answerer: Answerer = served.answerer
    questions = load_dataset(cfg.data).split("test")["question"].tolist()[:args.questions]
    one_at_a_time(answerer, questions[:2])  # warm-up

    ours = one_at_a_time(answerer, questions)
    runs = [("merged adapter (ours)", ours)]
    adapter_dir = served.adapter_dir
    if adapter_dir:
        baseline = one_at_a_time(unmerged_copy(answerer, adapter_dir), questions)
        runs.insert(0, ("unmerged LoRA (baseline)", baseline))
    reference = float(np.percentile([a.ttft_ms for a in runs[0][1]], 50))

    table = Table(title=f"Champion {uri} ({served.candidate['name']}): {len(questions)} questions one at a time, "
                        f"torch threads {torch.get_num_threads()} of {os.cpu_count()} cores")
    for col in ("model", "TTFT p50 ms", "TTFT p95 ms", "retrieval p50 ms", "answer p50 ms", "prompt tokens p50",
                "TTFT speed-up"):
        table.add_column(col, justify="right")
    for label, answers in runs:
        table.add_row(*row(label, answers, reference if label != runs[0][0] else None))
    console.print(table)
    if adapter_dir:
        differing = sum(a.text != b.text for a, b in zip(runs[0][1], ours, strict=True))
        console.print(f"answers differing between baseline and ours: {differing} of {len(questions)}")
    p50 = float(np.percentile([a.ttft_ms for a in ours], 50))
    console.print(f"TTFT p50 {p50:.0f} ms: goal < {GOAL_MS:.0f} ms {'met' if p50 < GOAL_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
