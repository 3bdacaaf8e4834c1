"""Time to first token and decode speed of the served champion, retrieval included, one question at a time,
with the quality the fast path costs.

The model is the registered `models:/<champion.model_name>@champion` of the config's MLflow store (run
`make demo` first), built by ragtune's checked loader exactly as `ragtune ask` and `mlflow models serve`
build it. Every test question is answered one per request (batch 1, as a server sees them). TTFT is
measured inside the answerer (tasks.metrics: from the call's start, so retrieval, prompt rendering and
tokenisation are included, to the first generated token); decode tokens/s counts the tokens after the
first over the time after it.

Baseline, in the same process: the same champion in float32 without the shared-prefix KV cache (how it
was served before). Ours: the configured `generation.dtype` (auto: bfloat16 on CPUs with bf16
instructions) with the prefix cache (tasks.prefix_cache). Quality: answers differing and the F1 difference
(ours - baseline) with its paired bootstrap interval over the same questions, and for each side how many
one-at-a-time answers differ from the evaluation's batched ones (padding changes the arithmetic).

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
from tasks.cpu_features import native_bf16  # noqa: E402
from tasks.data_loading import load_dataset  # noqa: E402
from tasks.metrics import f1, paired_bootstrap  # noqa: E402
from tasks.registry import load_version  # noqa: E402
from tasks.settings import load_config  # noqa: E402
from tasks.tracking import setup_tracking  # noqa: E402

console = Console(width=150)
GOAL_MS = 150.0


def one_at_a_time(answerer: Answerer, questions: list[str]) -> list[Answer]:
    answerer.answer(questions[:1], batch_size=1)  # warm-up (and the prefix cache), not counted
    return [answerer.answer([q], batch_size=1)[0] for q in questions]


def float32_baseline(answerer: Answerer) -> Answerer:
    """The same system (weights, adapter, retriever, settings) in float32, every prompt prefilled whole."""
    from tasks.prefix_cache import PrefixCache

    baseline = Answerer(answerer.model_dir, answerer.gen_cfg.model_copy(update={"dtype": "float32"}),
                        answerer.adapter_dir, answerer.retriever, answerer.top_k, answerer.answer_type, answerer.labels)
    baseline._prefix = PrefixCache(baseline.model, [])
    return baseline


def decode_tokens_per_s(answers: list[Answer]) -> float:
    """Tokens after the first over the time after the first token, summed over the answers."""
    tokens = sum(max(a.new_tokens - 1, 0) for a in answers)
    seconds = sum((a.latency_ms - a.ttft_ms) / 1000 for a in answers if a.ttft_ms is not None)
    return tokens / seconds if seconds > 0 else float("nan")


def row(label: str, answers: list[Answer], scores: list[float], reference: float | None) -> list[str]:
    ttft = [a.ttft_ms for a in answers]
    p50 = float(np.percentile(ttft, 50))
    return [label, f"{p50:.0f}", f"{np.percentile(ttft, 95):.0f}",
            f"{np.percentile([a.retrieval_ms for a in answers], 50):.1f}",
            f"{np.percentile([a.prompt_tokens for a in answers], 50):.0f}", f"{decode_tokens_per_s(answers):.1f}",
            f"{np.percentile([a.latency_ms for a in answers], 50):.0f}", f"{np.mean(scores):.3f}",
            "1.00x" if reference is None else f"{reference / p50:.2f}x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--questions", type=int, default=None, help="first N test questions (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    setup_tracking(cfg.mlflow)
    loaded = load_version(cfg.champion.model_name, alias="champion")
    answerer = loaded.answerer
    if not isinstance(answerer, Answerer):
        sys.exit(f"champion {cfg.champion.model_name} answers through an endpoint: nothing to serve locally")
    test = load_dataset(cfg.data).split("test").head(args.questions)
    questions, golds = test["question"].tolist(), [list(g) for g in test["answer"]]

    ours = one_at_a_time(answerer, questions)
    ours_batched = answerer.answer(questions)
    ours_label = f"{cfg.generation.dtype} + prefix cache (ours)"
    baseline_answerer = float32_baseline(answerer)
    baseline = one_at_a_time(baseline_answerer, questions)
    baseline_batched = baseline_answerer.answer(questions)
    ours_f1 = [f1(a.text, g) for a, g in zip(ours, golds, strict=True)]
    base_f1 = [f1(a.text, g) for a, g in zip(baseline, golds, strict=True)]
    reference = float(np.percentile([a.ttft_ms for a in baseline], 50))

    table = Table(title=f"Champion {cfg.champion.model_name} v{loaded.version.version} ({loaded.candidate}): "
                        f"{len(questions)} questions one at a time, torch threads {torch.get_num_threads()} of "
                        f"{os.cpu_count()} cores, CPU bf16 instructions: {native_bf16()}")
    for col in ("model", "TTFT p50 ms", "TTFT p95 ms", "retrieval p50 ms", "prompt tokens p50", "decode tokens/s",
                "answer p50 ms", "F1", "TTFT speed-up"):
        table.add_column(col, justify="right")
    table.add_row(*row("float32, whole prompt (baseline)", baseline, base_f1, None))
    table.add_row(*row(ours_label, ours, ours_f1, reference))
    console.print(table)
    differing = sum(a.text != b.text for a, b in zip(baseline, ours, strict=True))
    delta = paired_bootstrap(ours_f1, base_f1, cfg.evaluation.bootstrap_samples, cfg.seed, 0.05)
    console.print(f"answers differing: {differing} of {len(questions)}; "
                  f"F1 ours - baseline {delta.mean_difference:+.3f} [{delta.ci_low:+.3f}, {delta.ci_high:+.3f}] "
                  "(paired bootstrap, 95%)")
    for label, single, batched in (("baseline", baseline, baseline_batched), ("ours", ours, ours_batched)):
        moved = sum(a.text != b.text for a, b in zip(single, batched, strict=True))
        console.print(f"{label}: {moved} of {len(questions)} one-at-a-time answers differ from the evaluation's "
                      f"batched answers (batch {cfg.generation.batch_size}, left padding)")
    p50 = float(np.percentile([a.ttft_ms for a in ours], 50))
    console.print(f"TTFT p50 {p50:.0f} ms: goal <= {GOAL_MS:.0f} ms {'met' if p50 <= GOAL_MS else 'NOT met'}")


if __name__ == "__main__":
    main()
