"""Cross-encoder reranking (`index.retrieval.rerank`): the search's first `depth` passages are re-scored by a
model that reads question and passage together, which ranks finer than either the embedding similarity or BM25
(both score question and passage apart). One model per process and directory."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from tasks.index_settings import IndexConfig, RerankConfig
from tasks.models import ModelSourceError, weights_key


@lru_cache(maxsize=2)
def load_cross_encoder(path: str, max_length: int | None):
    from sentence_transformers import CrossEncoder

    try:
        return CrossEncoder(path, device="cpu", max_length=max_length, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelSourceError(f"index.retrieval.rerank.path: {path} could not be loaded as a cross-encoder "
                               f"({err})") from None


def rerank_scores(queries: Sequence[str], passages: Sequence[Sequence[str]], cfg: RerankConfig) -> list[list[float]]:
    """The cross-encoder's score of every (query, passage) pair, per query, in the order given."""
    pairs = [(q, p) for q, row in zip(queries, passages, strict=True) for p in row]
    if not pairs:
        return [[] for _ in queries]
    flat = load_cross_encoder(str(cfg.path), cfg.max_length).predict(
        pairs, batch_size=cfg.batch_size, show_progress_bar=False, convert_to_numpy=True)
    out, start = [], 0
    for row in passages:
        out.append([float(s) for s in flat[start:start + len(row)]])
        start += len(row)
    return out


@lru_cache(maxsize=8)
def _weights(path: str) -> str:
    return weights_key(path)


def reranker_identity(cfg: IndexConfig) -> dict:
    """The reranker's weights as a cache key part ({} without one, so keys made before reranking existed hold)."""
    rerank = cfg.retrieval.rerank
    return {} if rerank is None else {"reranker": _weights(str(rerank.path))}
