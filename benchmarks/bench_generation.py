"""Generation throughput: batched vs one-at-a-time answering of the same questions, in one process.

Questions: the demo test split (configs/default.yaml's data, via tasks.data_loading), closed book.
Model: the config's base model (SmolLM2-135M-Instruct, converted once into the model cache),
greedy, the config's max_new_tokens and stop strings, through `tasks.answering.Answerer`, the
class evaluation and serving use. After a warm-up batch, the questions are answered one at a time
and then at each --batch-sizes; per run: answers/s, generated tokens/s, their ratio to
one-at-a-time (goal >= 3x on CPU), per-question latency p50/p95 (see tasks.metrics), and how many
answers differ from the one-at-a-time answers (greedy decoding: ideally none).

    .venv/bin/python benchmarks/bench_generation.py
    .venv/bin/python benchmarks/bench_generation.py --batch-sizes 8 16 32 --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.offline import enable_offline_mode  # noqa: E402

enable_offline_mode()

from tasks.answering import Answer, Answerer  # noqa: E402
from tasks.data_loading import load_dataset  # noqa: E402
from tasks.models import resolve_model_dir  # noqa: E402
from tasks.settings import load_config  # noqa: E402

console = Console(width=140)


def timed_answers(answerer: Answerer, questions: list[str], batch_size: int) -> tuple[list[Answer], float]:
    start = time.perf_counter()
    answers = answerer.answer(questions, batch_size=batch_size)
    return answers, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    questions = load_dataset(cfg.data).split("test")["question"].tolist()
    answerer = Answerer(resolve_model_dir(cfg.base_model, cfg.model_cache), cfg.generation)
    answerer.answer(questions[:max(args.batch_sizes)], batch_size=max(args.batch_sizes))  # warm-up

    runs = [(1, *timed_answers(answerer, questions, 1))]
    runs += [(size, *timed_answers(answerer, questions, size)) for size in args.batch_sizes]
    base_answers, base_seconds = runs[0][1], runs[0][2]
    base_tokens = sum(a.new_tokens for a in base_answers)

    table = Table(title=f"Generation on the demo test split: {len(questions)} questions, closed book, greedy, "
                        f"max_new_tokens={cfg.generation.max_new_tokens}, torch threads {torch.get_num_threads()} "
                        f"of {os.cpu_count()} cores")
    for col in ("batch size", "seconds", "answers/s", "tokens/s", "speed-up", "latency p50 ms", "latency p95 ms",
                "answers differing"):
        table.add_column(col, justify="right")
    for size, answers, seconds in runs:
        tokens = sum(a.new_tokens for a in answers)
        latency = [a.latency_ms for a in answers]
        differing = sum(a.text != b.text for a, b in zip(answers, base_answers, strict=True))
        table.add_row(str(size), f"{seconds:.1f}", f"{len(answers) / seconds:.2f}", f"{tokens / seconds:.1f}",
                      f"{base_seconds / seconds:.2f}x", f"{np.percentile(latency, 50):.0f}",
                      f"{np.percentile(latency, 95):.0f}", str(differing))
    console.print(table)
    console.print(f"one-at-a-time: {base_tokens} generated tokens; speed-up = one-at-a-time seconds / batched "
                  "seconds for the same questions (goal >= 3x)")


if __name__ == "__main__":
    main()
