"""Retrieval: the embedding model (one per process) and top-k search over one index version.

Used by the index stage (its quality metrics), RAFT training (distractor passages) and every
retrieving candidate, in evaluation and when served.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.index_settings import IndexConfig, RetrievalMode
from tasks.lexical_index import LexicalIndex, reciprocal_rank_fusion
from tasks.metrics import retrieval_scores
from tasks.models import embedding_model_dir
from tasks.reranking import rerank_scores, reranker_identity
from tasks.vector_index import FLAT, configure_search

RETRIEVAL_METRICS = ("recall", "precision", "mrr", "ndcg")


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    doc_id: str
    text: str
    score: float


@lru_cache(maxsize=4)
def load_embedder(model_dir: str, threads: int | None = None):
    """One SentenceTransformer per process and model directory."""
    from sentence_transformers import SentenceTransformer

    if threads:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    return SentenceTransformer(model_dir, device="cpu")


def embedder(cfg: IndexConfig):
    """The configured embedding model (loaded once per process)."""
    return load_embedder(str(embedding_model_dir(cfg)), cfg.threads)


def embed(texts: list[str], cfg: IndexConfig, show_progress: bool = False) -> np.ndarray:
    vectors = embedder(cfg).encode(
        texts, batch_size=cfg.embed_batch_size, normalize_embeddings=True,
        convert_to_numpy=True, show_progress_bar=show_progress,
    )
    return np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(texts), -1)


def faiss_type(manifest: dict) -> str:
    """Versions written before the FAISS type was configurable are flat."""
    return manifest.get("faiss", {}).get("type", FLAT)


class Retriever:
    """Top-k search over one index version by the configured mode (`index.retrieval`); the embedding model is
    shared per process, the BM25 index is built on first lexical search."""

    def __init__(self, index_dir: Path, cfg: IndexConfig):
        import faiss

        self.index_dir = Path(index_dir)
        self.cfg = cfg
        self.manifest = json.loads((self.index_dir / "manifest.json").read_text())
        self.index = faiss.read_index(str(self.index_dir / "index.faiss"))
        configure_search(self.index, faiss_type(self.manifest), cfg.faiss)
        chunks = pd.read_parquet(self.index_dir / "chunks.parquet", columns=["chunk_id", "doc_id", "text"])
        self._chunk_ids, self._doc_ids, self._texts = (chunks[c].tolist() for c in ("chunk_id", "doc_id", "text"))
        self._lexical: LexicalIndex | None = None

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def identity(self) -> dict:
        """What decides the passages found: the index version, the search settings and any reranker's weights
        (a cache key part)."""
        return {"version": self.version, "retrieval": self.cfg.retrieval.model_dump(mode="json"),
                **reranker_identity(self.cfg)}

    def lexical(self) -> LexicalIndex:
        if self._lexical is None:
            self._lexical = LexicalIndex(self._texts, self.cfg.retrieval.lexical)
        return self._lexical

    def chunk_table(self) -> pd.DataFrame:
        """Every chunk of this version (ids, text, span, content hash), in index order."""
        return pd.read_parquet(self.index_dir / "chunks.parquet")

    def search(self, queries: list[str], k: int | None = None, mode: RetrievalMode | None = None,
               rerank: bool = True) -> list[list[Hit]]:
        """The top `k` (default `top_k`) chunks per query by `mode` (default: the configured one), re-ordered by
        the configured cross-encoder unless `rerank` is False. Hybrid scores are reciprocal-rank-fusion scores,
        dense ones cosine similarities, lexical ones BM25, reranked ones the cross-encoder's."""
        if not queries:  # e.g. a dataset without a validation split
            return []
        k = min(k or self.cfg.top_k, self.index.ntotal)
        reranker = self.cfg.retrieval.rerank if rerank else None
        if reranker is None:
            return self._search(queries, k, mode)
        shortlists = self._search(queries, max(k, reranker.depth), mode)
        scores = rerank_scores(queries, [[h.text for h in row] for row in shortlists], reranker)
        return [[Hit(h.chunk_id, h.doc_id, h.text, s)
                 for s, h in sorted(zip(row_scores, row, strict=True), key=lambda pair: -pair[0])[:k]]
                for row, row_scores in zip(shortlists, scores, strict=True)]

    def _search(self, queries: list[str], k: int, mode: RetrievalMode | None) -> list[list[Hit]]:
        mode = mode or self.cfg.retrieval.mode
        depth = k if mode != "hybrid" else max(k, self.cfg.retrieval.fusion_depth)
        dense = self._dense_rows(embed(queries, self.cfg), depth) if mode != "lexical" else None
        lexical = self.lexical().search(queries, depth) if mode != "dense" else None
        if dense is None or lexical is None:
            return [self._hits(row) for row in (lexical if dense is None else dense)]
        return [self._hits(reciprocal_rank_fusion([[r for r, _ in d], [r for r, _ in lex]],
                                                  self.cfg.retrieval.rrf_k)[:k])
                for d, lex in zip(dense, lexical, strict=True)]

    def _dense_rows(self, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        scores, ids = self.index.search(vectors, min(k, self.index.ntotal))
        return [[(int(i), float(s)) for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
                for row_scores, row_ids in zip(scores, ids, strict=True)]

    def _hits(self, rows: list[tuple[int, float]]) -> list[Hit]:
        return [Hit(self._chunk_ids[i], self._doc_ids[i], self._texts[i], s) for i, s in rows]


def evaluate_retrieval(retriever: Retriever, qa: pd.DataFrame, ks: Sequence[int],
                       mode: RetrievalMode | None = None, rerank: bool = True) -> dict[str, float]:
    """Mean recall/precision/mrr/ndcg of the gold document at each k: keys like `recall_at_5`."""
    if qa.empty:
        return {}
    hits = retriever.search(qa["question"].tolist(), max(ks), mode, rerank)
    out = {}
    for k in ks:
        per_q = [retrieval_scores([h.doc_id for h in row], gold, k)
                 for row, gold in zip(hits, qa["doc_id"], strict=True)]
        for name in RETRIEVAL_METRICS:
            key = "mrr" if name == "mrr" else f"{name}_at_k"
            out[f"{name}_at_{k}"] = float(np.mean([s[key] for s in per_q]))
    return out
