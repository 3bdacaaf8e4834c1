"""FAISS index types: exact inner product for small corpora, HNSW or IVF for large ones.

Vectors are L2-normalised, so inner product is cosine similarity. Row i of the index is row i
of the version's chunk table.
"""

from __future__ import annotations

import math

import numpy as np

from tasks.index_settings import FaissConfig

FLAT, HNSW, IVF = "flat", "hnsw", "ivf"


def choose_type(num_vectors: int, cfg: FaissConfig) -> str:
    if cfg.type != "auto":
        return cfg.type
    return HNSW if num_vectors >= cfg.approximate_above else FLAT


def ivf_lists(num_vectors: int, cfg: FaissConfig) -> int:
    return cfg.ivf.nlist or max(1, int(4 * math.sqrt(num_vectors)))


def build_faiss(vectors: np.ndarray, kind: str, cfg: FaissConfig, seed: int = 0):
    """A populated FAISS index of `kind` over `vectors` (float32, normalised)."""
    import faiss

    dim = vectors.shape[1]
    if kind == FLAT:
        index = faiss.IndexFlatIP(dim)
    elif kind == HNSW:
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw.ef_construction
    elif kind == IVF:
        nlist = min(ivf_lists(len(vectors), cfg), len(vectors))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(vectors)
    else:
        raise ValueError(f"unknown FAISS index type {kind!r}")
    index.add(vectors)
    configure_search(index, kind, cfg)
    return index


def configure_search(index, kind: str, cfg: FaissConfig) -> None:
    """Apply the query-time knobs (they are not all stored in the index file)."""
    if kind == HNSW:
        index.hnsw.efSearch = cfg.hnsw.ef_search
    elif kind == IVF:
        index.nprobe = cfg.ivf.nprobe


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the exact top-k by inner product (the ground truth for approximate indexes)."""
    scores = queries @ vectors.T
    k = min(k, vectors.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


def recall_vs_exact(index, vectors: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Share of the exact top-k neighbours that the index returns in its top-k (1.0 for flat)."""
    k = min(k, vectors.shape[0])
    _, approx = index.search(queries, k)
    truth = exact_top_k(vectors, queries, k)
    found = sum(len(set(a.tolist()) & set(t.tolist())) for a, t in zip(approx, truth, strict=True))
    return found / truth.size
