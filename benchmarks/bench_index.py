"""Index benchmarks: full-build throughput, incremental rebuild, and flat vs HNSW query latency.

Corpus: the shared XQuAD-en paragraphs (../shared/datasets/xquad_en), repeated with variations
(sentence order rotated, an edition line added) until it yields >= --min-chunks chunks. Every
ratio compares two runs made in this one process, after the embedding model is loaded and warm.

    .venv/bin/python benchmarks/bench_index.py                   # all three parts
    .venv/bin/python benchmarks/bench_index.py --vectors 20000   # smaller latency part

1. Full build through `tasks.indexing.build_index` vs a bare `SentenceTransformer.encode` +
   `IndexFlatIP.add` on the same chunk texts: chunks/s and their ratio (goal >= 0.9).
2. Incremental rebuild after changing 1% of the documents vs the full build (goal >= 20x).
3. Query latency p50/p95 at --vectors vectors, flat vs HNSW, with and without the query embedding,
   and HNSW recall@10 against exact search (goal >= 0.95). The vectors are the corpus's real chunk
   embeddings plus perturbed copies of them (cosine ~0.8 to their source), renormalised; the
   queries are real XQuAD questions.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.offline import enable_offline_mode  # noqa: E402

enable_offline_mode()

from tasks import indexing, retrieval  # noqa: E402
from tasks.index_settings import FaissConfig, IndexConfig  # noqa: E402
from tasks.models import embedding_model_dir  # noqa: E402
from tasks.settings import load_config  # noqa: E402
from tasks.vector_index import build_faiss, recall_vs_exact  # noqa: E402

XQUAD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "xquad_en" / "xquad.en.json"
console = Console(width=120)


def xquad(path: Path) -> tuple[list[dict], list[str]]:
    payload = json.loads(path.read_text(encoding="utf-8"))
    paragraphs = [{"title": a["title"], "text": p["context"]} for a in payload["data"] for p in a["paragraphs"]]
    questions = [q["question"] for a in payload["data"] for p in a["paragraphs"] for q in p["qas"]]
    return paragraphs, questions


def variant(text: str, v: int) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", text)
    shift = v % len(sentences)
    return f"Edition {v}. " + " ".join(sentences[shift:] + sentences[:shift])


def corpus(paragraphs: list[dict], variants: int) -> pd.DataFrame:
    rows = [{"doc_id": f"x{i:03d}-v{v:02d}", "title": p["title"], "text": variant(p["text"], v)}
            for v in range(variants) for i, p in enumerate(paragraphs)]
    return pd.DataFrame(rows)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def build_parts(cfg: IndexConfig, paragraphs: list[dict], min_chunks: int, change_share: float, seed: int):
    model = retrieval.load_embedder(str(embedding_model_dir(cfg)), cfg.threads)
    model.encode(["warm-up"] * cfg.embed_batch_size, batch_size=cfg.embed_batch_size)
    variants = 1
    while True:
        docs = corpus(paragraphs, variants)
        chunks = indexing.chunk_documents(docs, cfg.chunking, model.tokenizer)
        if len(chunks) >= min_chunks:
            break
        variants += 1
    texts = chunks["text"].tolist()

    def bare() -> None:
        import faiss

        vectors = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)

    _, bare_s = timed(bare)
    full, full_s = timed(indexing.build_index, docs, "bench-full", cfg)

    rng = np.random.default_rng(seed)
    changed = docs.copy()
    picked = rng.choice(len(docs), size=max(1, round(change_share * len(docs))), replace=False)
    changed.loc[picked, "text"] = changed.loc[picked, "text"] + " This paragraph was revised in November 2026."
    inc, inc_s = timed(indexing.build_index, changed, "bench-changed", cfg)

    table = Table(title=f"Index build: {len(docs)} documents ({variants} variants of {len(paragraphs)} XQuAD "
                        f"paragraphs), {len(texts)} chunks, {cfg.chunking.strategy}/{cfg.chunking.max_tokens} tokens")
    for col in ("run", "seconds", "chunks/s", "embedded", "ratio"):
        table.add_column(col, justify="left" if col == "run" else "right")
    table.add_row("bare encode + IndexFlatIP.add", f"{bare_s:.1f}", f"{len(texts) / bare_s:.1f}", str(len(texts)),
                  "1.00")
    table.add_row("ragtune full build", f"{full_s:.1f}", f"{full.num_chunks / full_s:.1f}", str(full.embedded),
                  f"{bare_s / full_s:.2f}  (throughput vs bare, goal >= 0.9)")
    table.add_row(f"ragtune incremental ({len(picked)} docs changed, {change_share:.0%})", f"{inc_s:.2f}",
                  f"{inc.num_chunks / inc_s:.1f}", str(inc.embedded),
                  f"{full_s / inc_s:.1f}x faster than full (goal >= 20x)")
    console.print(table)
    console.print(f"incremental: {inc.embedded} embedded, {inc.reused_vectors} reused, {inc.removed} removed")
    return np.load(inc.path / "vectors.npy")


def latency_part(cfg: IndexConfig, base_vectors: np.ndarray, questions: list[str], total: int, queries: int,
                 seed: int) -> None:
    rng = np.random.default_rng(seed)
    extra = total - len(base_vectors)
    source = base_vectors[rng.integers(0, len(base_vectors), size=extra)]
    noise = rng.normal(size=source.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    synthetic = 0.8 * source + 0.6 * noise
    vectors = np.vstack([base_vectors, synthetic]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)

    sample = [questions[i] for i in rng.choice(len(questions), size=queries, replace=False)]
    query_vectors = retrieval.embed(sample, cfg)
    faiss_cfg = cfg.faiss
    table = Table(title=f"Query latency at {len(vectors):,} vectors ({queries} XQuAD questions, one at a time, "
                        f"{cfg.threads or 'default'} threads)")
    for col in ("index", "build s", "p50 ms (search)", "p95 ms (search)", "p50 ms (embed+search)",
                "p95 ms (embed+search)", "recall@10 vs flat"):
        table.add_column(col, justify="right")
    for kind in ("flat", "hnsw"):
        index, build_s = timed(build_faiss, vectors, kind, faiss_cfg)
        search_only, end_to_end = [], []
        for q, qv in zip(sample, query_vectors, strict=True):
            _, s = timed(index.search, qv[None, :], 10)
            search_only.append(s)
            _, s = timed(lambda q=q, index=index: index.search(retrieval.embed([q], cfg), 10))
            end_to_end.append(s)
        recall = recall_vs_exact(index, vectors, query_vectors, 10)
        hnsw = faiss_cfg.hnsw
        label = "flat" if kind == "flat" else f"hnsw (M={hnsw.m}, efC={hnsw.ef_construction}, efS={hnsw.ef_search})"
        table.add_row(label, f"{build_s:.1f}", *(f"{v:.2f}" for v in percentiles(search_only)),
                      *(f"{v:.2f}" for v in percentiles(end_to_end)), f"{recall:.3f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/xquad.yaml", help="Index settings come from this config.")
    parser.add_argument("--min-chunks", type=int, default=5000)
    parser.add_argument("--change-share", type=float, default=0.01)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--skip-build", action="store_true", help="Only the latency part (embeds 2,000 chunks).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not XQUAD.is_file():
        console.print(f"skipped: {XQUAD} not found (the shared datasets sit beside the repository)")
        return
    paragraphs, questions = xquad(XQUAD)
    with tempfile.TemporaryDirectory(prefix="ragtune-bench-") as tmp:
        cfg = load_config(args.config, []).index.model_copy(update={"root": Path(tmp) / "index",
                                                                    "faiss": FaissConfig(type="flat")})
        console.print(f"config {args.config}: batch {cfg.embed_batch_size}, threads {cfg.threads or 'default'}")
        if args.skip_build:
            texts = [p["text"] for p in paragraphs] * 9
            base = retrieval.embed([variant(t, i) for i, t in enumerate(texts[:2000])], cfg)
        else:
            base = build_parts(cfg, paragraphs, args.min_chunks, args.change_share, args.seed)
        latency_part(cfg.model_copy(update={"faiss": load_config(args.config, []).index.faiss}), base, questions,
                     args.vectors, args.queries, args.seed)


if __name__ == "__main__":
    main()
