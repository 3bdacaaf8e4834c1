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

from tasks.index_settings import IndexConfig
from tasks.metrics import retrieval_scores
from tasks.models import embedding_model_dir
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
    """Top-k search over one index version; the embedding model is shared per process."""

    def __init__(self, index_dir: Path, cfg: IndexConfig):
        import faiss

        self.index_dir = Path(index_dir)
        self.cfg = cfg
        self.manifest = json.loads((self.index_dir / "manifest.json").read_text())
        self.index = faiss.read_index(str(self.index_dir / "index.faiss"))
        configure_search(self.index, faiss_type(self.manifest), cfg.faiss)
        chunks = pd.read_parquet(self.index_dir / "chunks.parquet", columns=["chunk_id", "doc_id", "text"])
        self._chunk_ids, self._doc_ids, self._texts = (chunks[c].tolist() for c in ("chunk_id", "doc_id", "text"))

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def chunk_table(self) -> pd.DataFrame:
        """Every chunk of this version (ids, text, span, content hash), in index order."""
        return pd.read_parquet(self.index_dir / "chunks.parquet")

    def search(self, queries: list[str], k: int | None = None) -> list[list[Hit]]:
        if not queries:  # e.g. a dataset without a validation split
            return []
        return self.search_vectors(embed(queries, self.cfg), k)

    def search_vectors(self, vectors: np.ndarray, k: int | None = None) -> list[list[Hit]]:
        k = min(k or self.cfg.top_k, self.index.ntotal)
        scores, ids = self.index.search(vectors, k)
        return [[Hit(self._chunk_ids[i], self._doc_ids[i], self._texts[i], float(s))
                 for s, i in zip(row_scores, row_ids, strict=True) if i >= 0]
                for row_scores, row_ids in zip(scores, ids, strict=True)]


def evaluate_retrieval(retriever: Retriever, qa: pd.DataFrame, ks: Sequence[int]) -> dict[str, float]:
    """Mean recall/precision/mrr/ndcg of the gold document at each k: keys like `recall_at_5`."""
    if qa.empty:
        return {}
    hits = retriever.search(qa["question"].tolist(), max(ks))
    out = {}
    for k in ks:
        per_q = [retrieval_scores([h.doc_id for h in row], gold, k)
                 for row, gold in zip(hits, qa["doc_id"], strict=True)]
        for name in RETRIEVAL_METRICS:
            key = "mrr" if name == "mrr" else f"{name}_at_k"
            out[f"{name}_at_{k}"] = float(np.mean([s[key] for s in per_q]))
    return out
