"""Where a candidate's evaluation spends its time, and what batching questions by prompt length would change.

For each candidate of the config (`evaluation.candidates`), built as the evaluate stage builds it
(tasks.answering.answerer_for) from the last run's adapters and index (run `make demo` first): the model
load, the batched answering pass (the evaluation's question order, `generation.batch_size`), the ragas
metrics and the latency pass (one warm-up, then `evaluation.latency_sample` questions one at a time),
timed as tasks.evaluation runs them. Then, in the same process, the same questions answered in batches
grouped by prompt length (sorted by prompt tokens, answers put back in question order): its time as a
ratio to the evaluation's order, the padded prompt tokens of both, and how many answers differ. Identical
scores need identical answers, so a regrouping that changes answers does not count as a speed-up.

    .venv/bin/python benchmarks/bench_evaluation.py
    .venv/bin/python benchmarks/bench_evaluation.py --config configs/default.yaml --candidates rag hybrid
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.offline import enable_offline_mode  # noqa: E402

enable_offline_mode()

from tasks.answering import Answerer, answerer_for, retrieve  # noqa: E402
from tasks.candidates import CANDIDATES  # noqa: E402
from tasks.data_loading import load_dataset  # noqa: E402
from tasks.errors import MissingArtifactError  # noqa: E402
from tasks.evaluation import evaluation_questions, ragas_rows  # noqa: E402
from tasks.indexing import current_index_dir  # noqa: E402
from tasks.latency import measure_latency  # noqa: E402
from tasks.metrics import ragas_scores  # noqa: E402
from tasks.models import embedding_model_dir, resolve_model_dir  # noqa: E402
from tasks.retrieval import Retriever  # noqa: E402
from tasks.settings import PipelineConfig, load_config  # noqa: E402

console = Console(width=160)


def last_adapter(cfg: PipelineConfig, mode: str) -> str:
    """The most recently trained adapter of `mode` under finetune.output_root."""
    trained = sorted(Path(cfg.finetune.output_root).glob(f"{mode}-*/result.json"), key=lambda p: p.stat().st_mtime)
    if not trained:
        sys.exit(f"no {mode} adapter under {cfg.finetune.output_root}: run `make demo` (or `ragtune run`) first")
    return str(trained[-1].parent)


def prompt_lengths(answerer: Answerer, questions: list[str]) -> list[int]:
    hits, _ = retrieve(answerer.retriever, questions, answerer.top_k)
    prompts = answerer.prompts(questions, hits)
    return [len(ids) for ids in answerer.tokenizer(prompts, add_special_tokens=False)["input_ids"]]


def padded_tokens(lengths: list[int], batch_size: int) -> int:
    return sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
               for i in range(0, len(lengths), batch_size))


class Stopwatch:
    """Seconds since the previous lap (or since it was made)."""

    def __init__(self) -> None:
        self.last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self.last = now - self.last, now
        return seconds


def measure(name: str, cfg: PipelineConfig, base_dir: str, test: pd.DataFrame, doc_text: dict[str, str]) -> dict:
    """One candidate's evaluation parts, timed, then its answers in batches grouped by prompt length."""
    candidate = CANDIDATES[name]
    questions = test["question"].tolist()
    adapter = last_adapter(cfg, candidate.adapter) if candidate.adapter else None
    retriever = Retriever(current_index_dir(cfg.index), cfg.index) if candidate.retrieves else None
    watch = Stopwatch()
    answerer = answerer_for(candidate, cfg, base_dir, adapter, retriever)
    parts = {"load": watch.lap()}
    answers = answerer.answer(questions)
    parts["batched"] = watch.lap()
    if cfg.evaluation.ragas:
        ragas_scores(ragas_rows(answers, test, doc_text), embedding_model_dir(cfg.index))
    parts["ragas"] = watch.lap()
    measure_latency(answerer, questions[:cfg.evaluation.latency_sample], cfg.evaluation.disturbed_cores)
    parts["latency"] = watch.lap()
    lengths = prompt_lengths(answerer, questions)
    order = sorted(range(len(questions)), key=lambda i: lengths[i])
    watch.lap()
    grouped = dict(zip(order, answerer.answer([questions[i] for i in order]), strict=True))
    batch = cfg.generation.batch_size
    return {"parts": parts, "grouped_s": watch.lap(), "padded": padded_tokens(lengths, batch),
            "grouped_padded": padded_tokens([lengths[i] for i in order], batch),
            "differing": sum(a.text != grouped[i].text for i, a in enumerate(answers))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--candidates", nargs="+", help="default: the config's evaluation.candidates")
    args = parser.parse_args()

    cfg = load_config(args.config)
    dataset = load_dataset(cfg.data)
    test = evaluation_questions(dataset, cfg)
    base_dir = resolve_model_dir(cfg.base_model, cfg.model_cache)
    table = Table(title=f"Evaluation of {len(test)} test questions per candidate ({args.config}, "
                        f"generation.dtype {cfg.generation.dtype}, batches of {cfg.generation.batch_size})")
    for col in ("candidate", "load s", "batched s", "ragas s", "latency pass s", "total s", "padded tokens",
                "by length: padded", "by length: batched s", "speed-up", "answers differing"):
        table.add_column(col, justify="right")
    totals = dict.fromkeys(("load", "batched", "ragas", "latency"), 0.0)
    for name in args.candidates or cfg.evaluation.candidates:
        try:
            result = measure(name, cfg, base_dir, test, dataset.doc_text())
        except MissingArtifactError as err:
            sys.exit(f"{err}; run `make demo` (or `ragtune run`) first")
        parts = result["parts"]
        for part, seconds in parts.items():
            totals[part] += seconds
        table.add_row(name, *(f"{parts[p]:.1f}" for p in totals), f"{sum(parts.values()):.1f}",
                      str(result["padded"]), str(result["grouped_padded"]), f"{result['grouped_s']:.1f}",
                      f"{parts['batched'] / result['grouped_s']:.2f}x", f"{result['differing']} of {len(test)}")
    console.print(table)
    whole = sum(totals.values())
    console.print(f"all candidates {whole:.1f} s: " + ", ".join(f"{part} {seconds / whole:.0%}"
                                                                for part, seconds in totals.items()))


if __name__ == "__main__":
    main()
