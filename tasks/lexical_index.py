"""Lexical retrieval: BM25 (bm25s) over one index version's chunks, and reciprocal rank fusion with dense results.

The BM25 index is built in memory on a retriever's first lexical search (tens of milliseconds for the demo's
and XQuAD's few hundred chunks), so index versions on disk stay FAISS + chunk table, and the lexical settings
never change a version id.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tasks.index_settings import LexicalConfig


class LexicalIndex:
    """BM25 over `texts`; results are (row, score) pairs, rows of the chunk table, only rows sharing a term."""

    def __init__(self, texts: Sequence[str], cfg: LexicalConfig):
        import bm25s
        from bm25s.tokenization import Tokenizer

        logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG

        self._tokenizer = Tokenizer(stopwords=cfg.stopwords)
        tokens = self._tokenizer.tokenize(list(texts), show_progress=False, return_as="ids")
        self._bm25 = bm25s.BM25(k1=cfg.k1, b=cfg.b)
        self._bm25.index(tokens, show_progress=False)
        self.size = len(texts)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        if not queries:
            return []
        tokens = self._tokenizer.tokenize(list(queries), update_vocab=False, show_progress=False, return_as="ids")
        rows, scores = self._bm25.retrieve(tokens, k=min(k, self.size), show_progress=False)
        return [[(int(r), float(s)) for r, s in zip(row, row_scores, strict=True) if s > 0]
                for row, row_scores in zip(rows, scores, strict=True)]


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], rrf_k: int) -> list[tuple[int, float]]:
    """Rows ordered by sum over rankings of 1 / (rrf_k + rank) (rank from 1; Cormack et al. 2009); ties keep
    the order in which rows were first seen."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, row in enumerate(ranking, start=1):
            scores[row] = scores.get(row, 0.0) + 1.0 / (rrf_k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])
