"""Time to first token and decode speed of the served champion, retrieval included, one question at a time,
with the quality the fast path costs.

The model is the registered `models:/<champion.model_name>@champion` of the config's MLflow store (run
`make demo` first), built by ragtune's checked loader exactly as `ragtune ask` and `mlflow models serve`
build it. Every test question is answered one per request (batch 1, as a server sees them). TTFT is
measured inside the answerer (tasks.metrics: from the call's start, so retrieval, prompt rendering and
tokenisation are included, to the first generated token); decode tokens/s counts the tokens after the
first over the time after it.

Baseline, in the same process: the same champion in float32 without the shared-prefix KV cache (how it
was served before). Then the configured `generation.dtype` (auto: bfloat16 on CPUs with bf16
instructions) with the prefix cache (tasks.prefix_cache), and int8 linear layers with the prefix cache
(`generation.dtype: int8`) unless that is the configured one. Quality: answers differing from the baseline's
and the F1 difference with its paired bootstrap interval over the same questions, and for each system how
many one-at-a-time answers differ from the evaluation's batched ones (padding changes the arithmetic).

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


def variant(answerer: Answerer, dtype: str, prefix_cache: bool) -> Answerer:
    """The same system (weights, adapter, retriever, settings) in another dtype, optionally prefilling every
    prompt whole."""
    from tasks.prefix_cache import PrefixCache

    other = Answerer(answerer.model_dir, answerer.gen_cfg.model_copy(update={"dtype": dtype}), answerer.adapter_dir,
                     answerer.retriever, answerer.top_k, answerer.answer_type, answerer.labels)
    if not prefix_cache:
        other._prefix = PrefixCache(other.model, [])
    return other


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

    baseline_answerer = variant(answerer, "float32", prefix_cache=False)
    systems = [("float32, whole prompt (baseline)", baseline_answerer),
               (f"{cfg.generation.dtype} + prefix cache (configured)", answerer)]
    if cfg.generation.dtype != "int8":
        systems.append(("int8 + prefix cache", variant(answerer, "int8", prefix_cache=True)))
    single = {label: one_at_a_time(system, questions) for label, system in systems}
    batched = {label: system.answer(questions) for label, system in systems}
    scores = {label: [f1(a.text, g) for a, g in zip(answers, golds, strict=True)] for label, answers in single.items()}
    baseline_label = systems[0][0]
    reference = float(np.percentile([a.ttft_ms for a in single[baseline_label]], 50))

    table = Table(title=f"Champion {cfg.champion.model_name} v{loaded.version.version} ({loaded.candidate}): "
                        f"{len(questions)} questions one at a time, torch threads {torch.get_num_threads()} of "
                        f"{os.cpu_count()} cores, CPU bf16 instructions: {native_bf16()}")
    for col in ("model", "TTFT p50 ms", "TTFT p95 ms", "retrieval p50 ms", "prompt tokens p50", "decode tokens/s",
                "answer p50 ms", "F1", "TTFT speed-up"):
        table.add_column(col, justify="right")
    for label, _ in systems:
        table.add_row(*row(label, single[label], scores[label], None if label == baseline_label else reference))
    console.print(table)
    for label, _ in systems[1:]:
        differing = sum(a.text != b.text for a, b in zip(single[baseline_label], single[label], strict=True))
        delta = paired_bootstrap(scores[label], scores[baseline_label], cfg.evaluation.bootstrap_samples, cfg.seed,
                                 0.05)
        console.print(f"{label}: {differing} of {len(questions)} answers differ from the baseline's; F1 difference "
                      f"{delta.mean_difference:+.3f} [{delta.ci_low:+.3f}, {delta.ci_high:+.3f}] "
                      "(paired bootstrap, 95%)")
    for label, _ in systems:
        moved = sum(a.text != b.text for a, b in zip(single[label], batched[label], strict=True))
        console.print(f"{label}: {moved} of {len(questions)} one-at-a-time answers differ from the evaluation's "
                      f"batched answers (batch {cfg.generation.batch_size}, left padding)")
    for label, _ in systems[1:]:
        p50 = float(np.percentile([a.ttft_ms for a in single[label]], 50))
        verdict = "met" if p50 <= GOAL_MS else "NOT met"
        console.print(f"{label}: TTFT p50 {p50:.0f} ms, goal <= {GOAL_MS:.0f} ms {verdict}")


if __name__ == "__main__":
    main()
